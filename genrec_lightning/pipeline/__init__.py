"""The pipeline layer: earlier stages' artifacts built on demand for later ones.

It sits above `data/` and `modules/`: a dataset declares where its semantic IDs and teacher come
from, a tokenizer or teacher is a module, and only this layer runs one for the other. Nothing below
it trains anything as a side effect.

- `keys.py`: the cache key of a stage run (which settings determine its artifact).
- `stages.py`: parsing a stage YAML as `genrec fit` does, and the isolated RNG of an auto-build.
- `tokenize.py`: the semantic-ID stage (`prepare_tokenizer_run`, build-or-load of the IDs).
- `teacher.py`: the teacher stage (train, export and load a teacher's item embeddings).
- `upstream.py`: `attach_upstream(datamodule)`, what `genrec` calls right after creating the data.
"""

from genrec_lightning.pipeline.keys import (
    DEFAULT_SEED,
    NEUTRAL_DEFAULTS,
    RESULT_TRAINER_KEYS,
    plain_config,
    teacher_key,
    tokenizer_key,
)
from genrec_lightning.pipeline.stages import isolated_rng, stage_parser, teacher_parser, tokenizer_parser
from genrec_lightning.pipeline.teacher import (
    TEACHER_FILE,
    TEACHER_SPLIT,
    export_teacher,
    load_teacher,
    teacher_dir,
    teacher_embeddings_for,
    teacher_expectation,
)
from genrec_lightning.pipeline.tokenize import (
    build_semantic_ids,
    prepare_tokenizer_run,
    semantic_ids_dir,
    semantic_ids_for,
    semantic_ids_path,
)
from genrec_lightning.pipeline.upstream import attach_upstream, build_upstream

__all__ = [
    "DEFAULT_SEED",
    "NEUTRAL_DEFAULTS",
    "RESULT_TRAINER_KEYS",
    "TEACHER_FILE",
    "TEACHER_SPLIT",
    "attach_upstream",
    "build_semantic_ids",
    "build_upstream",
    "export_teacher",
    "isolated_rng",
    "load_teacher",
    "plain_config",
    "prepare_tokenizer_run",
    "semantic_ids_dir",
    "semantic_ids_for",
    "semantic_ids_path",
    "stage_parser",
    "teacher_dir",
    "teacher_embeddings_for",
    "teacher_expectation",
    "teacher_key",
    "teacher_parser",
    "tokenizer_key",
    "tokenizer_parser",
]
