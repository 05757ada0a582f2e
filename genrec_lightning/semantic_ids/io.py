"""On-disk format of a semantic-ID artifact: file names, meta.json keys and their checks.

`SemanticIds.save`/`load` write and read the artifact; the constants and checks live here so the
format is described in one place. This module does not import the table (no import cycle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from genrec_lightning.errors import GenRecError

CODES_FILE = "codes.safetensors"
FORMAT_VERSION = 1
_BUILD_HINT = "build it with `genrec tokenize --config <tokenizer yaml>`"
# meta.json keys `save` derives from the table. User meta may repeat the descriptive ones (e.g. a
# datamodule's expectation names `num_items`) only with the same value, and may replace `statistics`
# (e.g. with frequency-weighted ones); `format` and `sha256` belong to the file alone.
_FILE_META = ("format", "sha256")
_TABLE_META = ("num_items", "codebook_sizes", "raw_codebook_sizes", "dedup")
_REQUIRED_META = (*_FILE_META, *_TABLE_META, "statistics")
#: Key of the safetensors header entry that records the table's description (`_TABLE_META`) inside the
#: checksummed file, so a meta.json edited afterwards is caught even where the tensors alone allow it
#: (a larger codebook size).
_HEADER_KEY = "table"


class ArtifactMismatchError(GenRecError, ValueError):
    """A stored artifact was built from another dataset/config, or was modified after it was written."""


def _stored_table_problem(
    record: Mapping[str, Any], tensors: Mapping[str, Tensor], header: Mapping[str, str]
) -> str | None:
    """What in meta.json contradicts the checksummed tensor file, or None when they agree.

    The checksum covers the tensors only, so meta.json is checked against them: against the table
    description written into the file's header (artifacts written since it is stored there) and
    against the tensor shapes (every artifact).
    """
    if "codes" not in tensors or "raw_codes" not in tensors:
        return f"{CODES_FILE} lacks the 'codes'/'raw_codes' tensors"
    if _HEADER_KEY in header:
        written = json.loads(header[_HEADER_KEY])
        for key in _TABLE_META:
            if record[key] != written.get(key):
                found, wrote = record[key], written.get(key)
                return f"meta.json says {key} = {found!r} but the table was written with {wrote!r}"
    codes, raw = tensors["codes"], tensors["raw_codes"]
    sizes, raw_sizes = record["codebook_sizes"], record["raw_codebook_sizes"]
    if not isinstance(sizes, list) or not isinstance(raw_sizes, list):
        return "meta.json codebook_sizes/raw_codebook_sizes are not lists"
    expected = {
        "codes": (record["num_items"], len(sizes)),
        "raw_codes": (record["num_items"], len(raw_sizes)),
    }
    for name, tensor in (("codes", codes), ("raw_codes", raw)):
        if tuple(tensor.shape) != expected[name]:
            shape, described = list(tensor.shape), list(expected[name])
            return f"meta.json describes {name} of shape {described}, the file holds {shape}"
    if raw_sizes != sizes[: len(raw_sizes)]:
        return f"meta.json raw_codebook_sizes {raw_sizes} are not the first levels of codebook_sizes {sizes}"
    return None


def _as_json(value: Any) -> Any:
    """`value` as meta.json stores it (tuples -> lists, paths -> str), for comparisons."""
    return json.loads(json.dumps(value, default=str))
