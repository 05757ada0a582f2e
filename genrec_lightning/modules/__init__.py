"""LightningModules: they only wire networks, quantisers, losses and metrics into the training loop."""
