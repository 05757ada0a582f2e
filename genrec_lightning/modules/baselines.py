"""ID-based baselines of the evaluation protocol: most-popular, SASRec and GRU4Rec.

    genrec fit --config configs/sasrec.yaml      # then: genrec test ... --ckpt_path <best>
    genrec fit --config configs/baselines/gru4rec.yaml
    genrec test --config configs/baselines/most_popular.yaml

They rank the full catalogue like every recommender here (`RecommenderModule` turns the rankings
into Recall/NDCG@K), so their numbers are directly comparable with the generative models'.
Items already in a user's history are not excluded, as in the generative models' beam search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec_lightning.generation import Ranking
from genrec_lightning.modules.base import RecommenderModule
from genrec_lightning.modules.settings import Evaluation, Optimization
from genrec_lightning.networks.sasrec import SASRec

#: SASRec/GRU4Rec's usual schedule: a constant learning rate, no weight decay, no warm-up.
SEQUENTIAL_OPTIMIZATION = Optimization(lr=1e-3, weight_decay=0.0, warmup_steps=0, min_lr_ratio=1.0)


def top_k_ranking(scores: Tensor, k: int) -> Ranking:
    """Ranking of the k best-scored items of each row of `scores` [B, N].

    When k > N the missing slots hold item -1 and score -inf (see `Ranking`). ID models have no
    semantic IDs, so `codes` is a single -1 level.
    """
    take = min(k, scores.shape[1])
    values, items = scores.topk(take, dim=1)
    if take < k:
        values = F.pad(values, (0, k - take), value=float("-inf"))
        items = F.pad(items, (0, k - take), value=-1)
    codes = torch.full((*items.shape, 1), -1, dtype=torch.long, device=items.device)
    return Ranking(items=items, scores=values, codes=codes)


class SequentialRecommender(RecommenderModule):
    """Next-item prediction with an ID-based network (SASRec, GRU4Rec), full-softmax cross-entropy.

    Each training sample is one (history, next item) pair of the sliding-window split, so the loss is
    the cross-entropy of the network's logits over all N items against the target.
    """

    def __init__(
        self,
        num_items: int,
        max_history: int = 20,
        network: Callable[[int, int], nn.Module] = SASRec,
        optimization: Optimization = SEQUENTIAL_OPTIMIZATION,
        top_k: int = 20,
        evaluation: Evaluation = Evaluation(),
    ) -> None:
        """
        Args:
            num_items: catalogue size (linked from the datamodule; never type it).
            max_history: history length the network is built for (linked from the datamodule).
            network: the network, built as `network(num_items, max_history)`: `SASRec` or
                `GRU4Rec` from `genrec_lightning.networks` (with its own init_args). It must map
                (history [B, H], history_mask [B, H]) to logits [B, num_items].
            optimization: AdamW and its schedule; by default a constant learning rate of 1e-3
                without weight decay or warm-up, as SASRec is usually trained.
            top_k: length of the ranked lists (the largest metric cutoff).
            evaluation: cutoffs and diagnostics of validation and test.
        """
        super().__init__(num_items, top_k, evaluation, optimization)
        self.save_hyperparameters(ignore=["network"])
        self.max_history = max_history
        self.network = network(num_items, max_history)

    def forward(self, history: Tensor, history_mask: Tensor) -> Tensor:
        """Logits over every item [B, num_items]."""
        return self.network(history, history_mask)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["history"], batch["history_mask"])
        loss = F.cross_entropy(logits, batch["target"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def rank(self, batch: dict[str, Tensor], n: int | None = None) -> Ranking:
        """Top-n items by log-probability (the same order as the logits)."""
        logits = self(batch["history"], batch["history_mask"])
        return top_k_ranking(F.log_softmax(logits.float(), dim=-1), n or self.top_k)


class MostPopular(RecommenderModule):
    """Recommends the items with the most training interactions to every user (ties: lower id first).

    Popularity comes from the training part of the split only (all but each user's last two items,
    `item_frequencies()` of the datamodule), so no validation or test interaction leaks into it.
    Scores in the ranking are the interaction counts. There is nothing to train: evaluate it with
    `genrec test` / `genrec validate`.
    """

    requires_training = False

    def __init__(
        self,
        num_items: int,
        top_k: int = 20,
        evaluation: Evaluation = Evaluation(),
    ) -> None:
        """
        Args:
            num_items: catalogue size (linked from the datamodule; never type it).
            top_k: length of the ranked lists (the largest metric cutoff).
            evaluation: cutoffs and diagnostics of validation and test.
        """
        super().__init__(num_items, top_k, evaluation)
        self.save_hyperparameters()
        # Derived from the data in setup(), so not saved in checkpoints.
        self.register_buffer("popularity", torch.zeros(num_items, dtype=torch.float64), persistent=False)
        self.register_buffer("top_items", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("top_scores", torch.zeros(0, dtype=torch.float64), persistent=False)

    def set_popularity(self, frequencies: Tensor) -> None:
        """Use `frequencies` [num_items] (interaction counts) as popularity and fix the ranking."""
        frequencies = torch.as_tensor(frequencies, dtype=torch.float64)
        if frequencies.shape != (self.num_items,):
            raise ValueError(
                f"expected {self.num_items} item frequencies, got shape {tuple(frequencies.shape)}"
            )
        if not bool(torch.isfinite(frequencies).all()):
            raise ValueError("item frequencies contain NaN or infinite values")
        # stable descending sort keeps equal counts in id order: ties go to the lower id
        # (topk gives no such guarantee, so the list is cut from the sorted order)
        device = self.popularity.device
        self.popularity = frequencies.to(device)
        self.top_items, self.top_scores = self._top(self.top_k)

    def _top(self, n: int) -> tuple[Tensor, Tensor]:
        """The n most popular items and their counts, padded with -1 / -inf past the catalogue."""
        order = torch.sort(self.popularity, descending=True, stable=True).indices[:n]
        missing = n - len(order)
        items = F.pad(order, (0, missing), value=-1)
        return items, F.pad(self.popularity[order], (0, missing), value=float("-inf"))

    def attach_data(self, data: Any, stage: str = "predict") -> None:
        super().attach_data(data, stage)
        if stage == "fit":
            self._refuse_training()
        if data is not None and hasattr(data, "item_frequencies"):
            self.set_popularity(data.item_frequencies())
        elif self.top_items.numel() == 0:
            raise RuntimeError(
                "MostPopular needs a datamodule with item_frequencies() (a SequenceDataModule), "
                "or call set_popularity() before evaluating"
            )

    def rank(self, batch: dict[str, Tensor], n: int | None = None) -> Ranking:
        """The same top-n list for every user of the batch."""
        if self.top_items.numel() == 0:
            raise RuntimeError(
                "MostPopular has no popularity yet: run it through a Trainer or set_popularity()"
            )
        size = batch["history"].shape[0]
        top, scores = (self.top_items, self.top_scores) if n in (None, self.top_k) else self._top(int(n))
        items = top.expand(size, -1)
        codes = torch.full((*items.shape, 1), -1, dtype=torch.long, device=items.device)
        return Ranking(items=items, scores=scores.expand(size, -1), codes=codes)

    def _refuse_training(self) -> NoReturn:
        raise RuntimeError(
            "MostPopular has nothing to train; evaluate it instead: "
            "`genrec test --config configs/baselines/most_popular.yaml` "
            "(or `genrec validate --config configs/baselines/most_popular.yaml`)"
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self._refuse_training()

    def configure_optimizers(self) -> NoReturn:
        self._refuse_training()


__all__ = ["MostPopular", "SequentialRecommender", "top_k_ranking"]
