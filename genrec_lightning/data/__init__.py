"""Data pipeline: readers -> preprocessing -> item embeddings -> datamodules."""
