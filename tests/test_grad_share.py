"""GradientShares: per-term gradient norms against autograd on a toy model, and the logged shares."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genrec_lightning.callbacks import GradientShares
from genrec_lightning.callbacks.grad_share import gradient_norms, gradient_shares


class TwoTerms(L.LightningModule):
    """A shared `network` and a private `head`; loss = 2 * fit term + 0.5 * norm term + head term."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.network = nn.Linear(4, 3)
        self.head = nn.Linear(3, 1)
        self.weighted_loss_terms: dict[str, torch.Tensor] = {}
        self.seen: list[dict[str, torch.Tensor]] = []

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.network(x)
        return {
            "fit": 2.0 * (h - 1).pow(2).mean(),
            "norm": 0.5 * h.pow(2).sum(dim=1).mean(),
            "head": self.head(h.detach()).pow(2).mean(),  # never reaches the network
        }

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.weighted_loss_terms = self.terms(batch[0])
        self.seen.append(
            {"x": batch[0].clone(), "state": {k: v.clone() for k, v in self.network.state_dict().items()}}
        )
        return torch.stack(list(self.weighted_loss_terms.values())).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def manual_norm(term: torch.Tensor, params: list[nn.Parameter]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return (
        float(sum((g**2).sum() for g in grads if g is not None) ** 0.5)
        if any(g is not None for g in grads)
        else 0.0
    )


def test_gradient_norms_match_autograd_and_shares_sum_to_one() -> None:
    model = TwoTerms()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    terms = model.terms(x)
    params = list(model.network.parameters())
    norms = gradient_norms(terms, params)
    for name, term in terms.items():
        assert norms[name] == pytest.approx(manual_norm(term, params), rel=1e-6)
    assert norms["head"] == 0.0 and norms["fit"] > 0 and norms["norm"] > 0
    shares = gradient_shares(norms)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["fit"] == pytest.approx(norms["fit"] / (norms["fit"] + norms["norm"]))
    # the graph survives for the step's own backward, and no .grad was written
    assert all(p.grad is None for p in params)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in params)
    assert gradient_shares({"a": 0.0, "b": 0.0}) == {"a": 0.0, "b": 0.0}


def test_callback_logs_shares_of_the_measured_steps(tmp_path: Path) -> None:
    model = TwoTerms()
    data = DataLoader(
        TensorDataset(torch.randn(24, 4, generator=torch.Generator().manual_seed(2))), batch_size=4
    )
    trainer = L.Trainer(
        max_steps=6, logger=CSVLogger(tmp_path, name="toy"), callbacks=[GradientShares(every_n_steps=2)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    import polars as pl

    rows = pl.read_csv(next(tmp_path.glob("toy/version_0/metrics.csv")))
    logged = rows.filter(pl.col("train/grad_share/fit").is_not_null()).sort("step")
    assert logged["step"].to_list() == [0, 2, 4]
    shares = logged.select([f"train/grad_share/{n}" for n in ("fit", "norm", "head")]).to_numpy()
    assert shares.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0], rel=1e-6)
    assert (shares[:, 2] == 0).all()
    for row, step in zip(logged.iter_rows(named=True), logged["step"].to_list(), strict=True):
        snapshot = model.seen[step]
        replay = TwoTerms()
        replay.network.load_state_dict(snapshot["state"])
        terms = replay.terms(snapshot["x"])
        expected = manual_norm(terms["fit"], list(replay.network.parameters()))
        assert row["train/grad_norm/fit"] == pytest.approx(expected, rel=1e-5)


def test_callback_refuses_modules_without_terms_or_network() -> None:
    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.network = nn.Linear(2, 2)

    with pytest.raises(MisconfigurationException, match="weighted_loss_terms"):
        GradientShares().setup(L.Trainer(logger=False), Bare(), "fit")
    with pytest.raises(MisconfigurationException, match="no submodule `encoder`"):
        GradientShares(module="encoder").setup(L.Trainer(logger=False), TwoTerms(), "fit")
    with pytest.raises(ValueError, match="every_n_steps"):
        GradientShares(every_n_steps=0)
