"""One reader per raw source, each returning the standard frames of `base.RawDataset`."""

from genrec_lightning.data.readers.amazon import Amazon2014, Amazon2023
from genrec_lightning.data.readers.base import (
    DataNotFoundError,
    DatasetReader,
    MalformedDataError,
    RawDataset,
    build_item_text,
)
from genrec_lightning.data.readers.movielens import MovieLens1M, MovieLens100K
from genrec_lightning.data.readers.yelp import Yelp

__all__ = [
    "Amazon2014",
    "Amazon2023",
    "DataNotFoundError",
    "DatasetReader",
    "MalformedDataError",
    "MovieLens100K",
    "MovieLens1M",
    "RawDataset",
    "Yelp",
    "build_item_text",
]
