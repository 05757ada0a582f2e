"""Torch datasets over the flat sequence layout, batched with tensor ops.

`SequenceSamples.__getitems__` builds a whole batch with one gather: histories are the
`max_history` items before each target, left-padded with `pad_item` (= number of items, an
out-of-range id, so a consumer that forgets the mask fails loudly instead of reading item 0).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class SequenceSamples(Dataset):
    """(history, target) samples of one split.

    A batch is a dict of tensors:
        history      LongTensor [B, max_history]  item ids, oldest first, left-padded with `pad_item`
        history_mask BoolTensor [B, max_history]  True at real items
        target       LongTensor [B]
        user         LongTensor [B]
    """

    def __init__(
        self,
        items: torch.Tensor,
        offsets: torch.Tensor,
        targets: torch.Tensor,
        users: torch.Tensor,
        max_history: int,
        pad_item: int,
    ) -> None:
        self.items = items
        self.starts = offsets[:-1]
        self.targets = targets
        self.users = users
        self.max_history = max_history
        self.pad_item = pad_item
        self._window = torch.arange(-max_history, 0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def target_items(self) -> torch.Tensor:
        """[S] the target item of every sample (e.g. training-split statistics)."""
        return self.items[self.targets]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples at `index` (LongTensor [B]) as one batch."""
        pos = self.targets[index]
        user = self.users[index]
        window = pos[:, None] + self._window  # [B, H]
        mask = window >= self.starts[user][:, None]
        history = torch.where(mask, self.items[window.clamp(min=0)], self.pad_item)
        return {"history": history, "history_mask": mask, "target": self.items[pos], "user": user}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.batch(torch.as_tensor(indices, dtype=torch.long))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch(torch.tensor([i])).items()}


class ItemEmbeddings(Dataset):
    """Rows of the item-embedding matrix with their item ids (tokenizer stage)."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        self.embeddings = embeddings

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"embedding": self.embeddings[index], "item": index}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"embedding": self.embeddings[i], "item": torch.tensor(i)}


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The datasets above return whole batches from `__getitems__`; nothing is left to collate."""
    return batch


class UnpaddedDistributedSampler(DistributedSampler):
    """Contiguous, non-overlapping shards for evaluation: every sample is seen exactly once.

    Torch's `DistributedSampler` pads shards to equal length by repeating samples, which biases
    metrics. Here rank r gets `range(r * ceil(n / R), min(n, (r + 1) * ceil(n / R)))`, so shards
    may differ in size by up to R samples; metrics that sum numerators and counts across ranks
    then equal the single-process result. Lightning leaves samplers of this type alone.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        n = len(dataset)  # type: ignore[arg-type]
        per_rank = math.ceil(n / self.num_replicas)
        self.start = min(n, self.rank * per_rank)
        self.stop = min(n, self.start + per_rank)
        self.num_samples = self.stop - self.start
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.num_samples


class EpochShuffleSampler(DistributedSampler):
    """Training order that depends on (seed, epoch) only, sharded over ranks.

    `RandomSampler` draws each epoch's order from the global RNG, so a run resumed from a
    checkpoint shuffles differently from one that never stopped. Here the order is the
    `DistributedSampler` permutation of `seed + epoch` (Lightning calls `set_epoch`), the same on
    one process as Lightning's own DDP sampler, and `skip_next(count)` drops the first `count()`
    indices of the next pass so a checkpoint taken mid-epoch continues with exactly the batches it
    had left.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self._skip: Callable[[], int] | None = None

    def skip_next(self, samples: Callable[[], int]) -> None:
        """Leave out the first `samples()` indices of the next iteration only (asked when it starts:
        Lightning may build the loader before it restores the checkpoint's progress)."""
        self._skip = samples

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, None
        return itertools.islice(super().__iter__(), max(0, int(skip())) if skip else 0, None)


class ResumableLoader(DataLoader):
    """A training DataLoader over an `EpochShuffleSampler` that Lightning treats as resumable.

    Its state is the shuffle seed; the position inside the epoch comes from the trainer's own
    progress counters (see `datamodules.training_loader`), so nothing is counted twice.
    """

    sampler: EpochShuffleSampler

    def state_dict(self) -> dict[str, int]:
        return {"shuffle_seed": int(self.sampler.seed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = state.get("shuffle_seed")
        if saved is not None and int(saved) != int(self.sampler.seed):
            warnings.warn(
                f"resuming with seed {self.sampler.seed} but the checkpoint shuffled with seed {saved}: "
                "the remaining epochs see another order than the interrupted run would have",
                stacklevel=2,
            )
