"""From a trained run to recommendations: the bundle, the Python API and the HTTP server.

`export_bundle` writes a self-contained directory from a checkpoint (`genrec export`),
`Recommender.load` recommends from it for any history and adds items without retraining, and
`serving.server` (LitServe, the `serve` extra) answers HTTP requests (`genrec serve`).
"""

from genrec_lightning.serving.bundle import BUNDLE_FORMAT, BundleError, read_bundle_meta, write_bundle
from genrec_lightning.serving.export import export_bundle
from genrec_lightning.serving.recommender import (
    InputError,
    Recommendation,
    Recommender,
    UnknownItemsError,
)

__all__ = [
    "BUNDLE_FORMAT",
    "BundleError",
    "InputError",
    "Recommendation",
    "Recommender",
    "UnknownItemsError",
    "export_bundle",
    "read_bundle_meta",
    "write_bundle",
]
