"""genrec_lightning: generative recommendation with semantic IDs on PyTorch Lightning."""

__version__ = "0.1.0"
