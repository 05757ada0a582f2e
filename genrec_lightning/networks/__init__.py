"""Plain-torch networks: the T5 encoder-decoder of TIGER and the ID-based SASRec / GRU4Rec baselines."""
