"""Torch datasets over the flat sequence layout, checked against per-sample Python references."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from genrec_lightning.data.datasets import (
    ItemEmbeddings,
    SequenceSamples,
    UnpaddedDistributedSampler,
    collate_batch,
)
from genrec_lightning.data.preprocess import Sequences, leave_one_out

LENGTHS = [3, 5, 7, 30]
NUM_ITEMS = 25


def make_sequences(lengths: list[int] = LENGTHS, seed: int = 0) -> Sequences:
    """Random item sequences in the flat layout."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return Sequences(
        items=rng.integers(0, NUM_ITEMS, size=n).astype(np.int64),
        timestamps=np.arange(n, dtype=np.int64),
        offsets=offsets,
    )


def make_dataset(split: str, max_history: int, seqs: Sequences | None = None) -> SequenceSamples:
    """A `SequenceSamples` for one leave-one-out split, padded with `NUM_ITEMS`."""
    seqs = seqs if seqs is not None else make_sequences()
    positions = leave_one_out(seqs)[split]
    return SequenceSamples(
        items=torch.from_numpy(seqs.items),
        offsets=torch.from_numpy(seqs.offsets),
        targets=torch.from_numpy(positions.targets),
        users=torch.from_numpy(positions.users),
        max_history=max_history,
        pad_item=NUM_ITEMS,
    )


def reference_samples(
    seqs: Sequences, split: str, max_history: int
) -> list[tuple[list[int], list[bool], int, int]]:
    """(history, mask, target item, user) per sample, from each user's own list of items."""
    positions = leave_one_out(seqs)[split]
    offsets = seqs.offsets.tolist()
    items = seqs.items.tolist()
    out = []
    for flat, user in zip(positions.targets.tolist(), positions.users.tolist(), strict=True):
        seq = items[offsets[user] : offsets[user + 1]]
        p = flat - offsets[user]  # position of the target inside the user's sequence
        before = seq[:p][-max_history:] if max_history > 0 else []
        pad = max_history - len(before)
        out.append(([NUM_ITEMS] * pad + before, [False] * pad + [True] * len(before), seq[p], user))
    return out


# ---------------------------------------------------------------------------------------- SequenceSamples


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("max_history", [1, 2, 4, 6, 10, 50])
def test_sequence_samples_batch_matches_reference(split: str, max_history: int) -> None:
    """Every sample of a whole-split batch equals the brute-force history/mask/target/user."""
    seqs = make_sequences()
    ds = make_dataset(split, max_history, seqs)
    expected = reference_samples(seqs, split, max_history)
    assert len(ds) == len(expected) > 0

    batch = ds.__getitems__(list(range(len(ds))))
    assert set(batch) == {"history", "history_mask", "target", "user"}
    assert batch["history"].dtype == torch.long and batch["history"].shape == (len(ds), max_history)
    assert batch["history_mask"].dtype == torch.bool and batch["history_mask"].shape == (len(ds), max_history)
    assert batch["target"].dtype == torch.long and batch["target"].shape == (len(ds),)
    assert batch["user"].dtype == torch.long and batch["user"].shape == (len(ds),)
    for i, (history, mask, target, user) in enumerate(expected):
        assert batch["history"][i].tolist() == history, i
        assert batch["history_mask"][i].tolist() == mask, i
        assert batch["target"][i].item() == target, i
        assert batch["user"][i].item() == user, i


def test_sequence_samples_exercise_padding_and_truncation() -> None:
    """Guard on the fixture: some samples are padded and some histories are truncated."""
    seqs = make_sequences()
    samples = reference_samples(seqs, "test", 10)
    assert any(not all(mask) for _, mask, _, _ in samples)  # short users: padded
    assert any(all(mask) for _, mask, _, _ in samples)  # the 30-item user: truncated to 10


def test_sequence_samples_padding_never_reads_other_users() -> None:
    """Padded slots hold `pad_item`, never an item of the previous user in the flat array."""
    seqs = make_sequences()
    ds = make_dataset("val", 20, seqs)
    batch = ds.__getitems__(list(range(len(ds))))
    padded = batch["history"][~batch["history_mask"]]
    assert padded.numel() > 0 and bool((padded == NUM_ITEMS).all())
    real = batch["history"][batch["history_mask"]]
    assert bool((real < NUM_ITEMS).all())


@pytest.mark.parametrize("max_history", [2, 8, 40])
def test_sequence_samples_getitem_equals_batch_row(max_history: int) -> None:
    """`ds[i]` equals row i of the whole-split batch, with scalar target/user."""
    ds = make_dataset("train", max_history)
    batch = ds.__getitems__(list(range(len(ds))))
    for i in range(len(ds)):
        sample = ds[i]
        assert set(sample) == set(batch)
        for key in batch:
            assert torch.equal(sample[key], batch[key][i]), (i, key)
        assert sample["target"].dim() == 0 and sample["user"].dim() == 0


def test_sequence_samples_getitems_any_order_and_repeats() -> None:
    """A batch of arbitrary indices (unsorted, repeated) is the stack of the individual samples."""
    ds = make_dataset("train", 5)
    indices = [7, 0, 3, 3, len(ds) - 1, 1]
    batch = ds.__getitems__(indices)
    for row, i in enumerate(indices):
        for key, value in ds[i].items():
            assert torch.equal(batch[key][row], value)


@pytest.mark.parametrize("batch_size", [1, 4, 7, 1000])
def test_dataloader_yields_tensor_batches_covering_every_sample_once(batch_size: int) -> None:
    """DataLoader + collate_batch: dict batches of the right dtypes/shapes, all samples in order, once."""
    max_history = 6
    seqs = make_sequences()
    ds = make_dataset("train", max_history, seqs)
    expected = reference_samples(seqs, "train", max_history)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate_batch, shuffle=False)
    batches = list(loader)
    assert len(batches) == -(-len(ds) // batch_size)
    for b in batches:
        size = b["target"].shape[0]
        assert 1 <= size <= batch_size
        assert b["history"].dtype == torch.long and b["history"].shape == (size, max_history)
        assert b["history_mask"].dtype == torch.bool and b["history_mask"].shape == (size, max_history)
        assert b["target"].dtype == torch.long and b["user"].dtype == torch.long
        assert b["user"].shape == (size,)
    history = torch.cat([b["history"] for b in batches]).tolist()
    mask = torch.cat([b["history_mask"] for b in batches]).tolist()
    target = torch.cat([b["target"] for b in batches]).tolist()
    user = torch.cat([b["user"] for b in batches]).tolist()
    assert list(zip(history, mask, target, user, strict=True)) == expected


def test_dataloader_shuffled_still_covers_every_sample_once() -> None:
    """With shuffling, the batches hold each sample exactly once (as a multiset)."""
    seqs = make_sequences()
    ds = make_dataset("train", 4, seqs)
    loader = DataLoader(
        ds, batch_size=5, collate_fn=collate_batch, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    got = Counter()
    for b in loader:
        for h, m, t, u in zip(
            b["history"].tolist(),
            b["history_mask"].tolist(),
            b["target"].tolist(),
            b["user"].tolist(),
            strict=True,
        ):
            got[(tuple(h), tuple(m), t, u)] += 1
    expected = Counter((tuple(h), tuple(m), t, u) for h, m, t, u in reference_samples(seqs, "train", 4))
    assert got == expected


# ------------------------------------------------------------------------------------------ ItemEmbeddings


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_item_embeddings_through_dataloader(batch_size: int) -> None:
    """Batches carry the embedding rows and their item ids, in order, covering every item."""
    emb = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    ds = ItemEmbeddings(emb)
    assert len(ds) == 10
    batches = list(DataLoader(ds, batch_size=batch_size, collate_fn=collate_batch, shuffle=False))
    items = torch.cat([b["item"] for b in batches])
    assert items.dtype == torch.long and items.tolist() == list(range(10))
    for b in batches:
        assert b["embedding"].shape == (len(b["item"]), 4)
        for row, item in zip(b["embedding"], b["item"].tolist(), strict=True):
            assert torch.equal(row, emb[item])


def test_item_embeddings_getitem() -> None:
    """Single access gives the row and a scalar id."""
    emb = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    ds = ItemEmbeddings(emb)
    sample = ds[2]
    assert torch.equal(sample["embedding"], emb[2]) and sample["item"].item() == 2
    batch = ds.__getitems__([3, 1])
    assert torch.equal(batch["embedding"], emb[[3, 1]]) and batch["item"].tolist() == [3, 1]


# ----------------------------------------------------------------------------- UnpaddedDistributedSampler


@pytest.mark.parametrize("n", [0, 1, 5, 7, 10, 11])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_unpadded_sampler_shards_partition_the_dataset(n: int, replicas: int) -> None:
    """The shards over ranks are disjoint, contiguous, cover range(n), and len() matches each shard."""
    dataset = list(range(n))
    shards = [
        list(UnpaddedDistributedSampler(dataset, num_replicas=replicas, rank=r)) for r in range(replicas)
    ]
    for r, shard in enumerate(shards):
        sampler = UnpaddedDistributedSampler(dataset, num_replicas=replicas, rank=r)
        assert len(sampler) == len(shard)
        if shard:
            assert shard == list(range(shard[0], shard[0] + len(shard)))  # contiguous
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(n))
    assert len(flat) == len(set(flat)) == n
    assert flat == list(range(n))  # rank order follows index order
    if n:
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= replicas


@pytest.mark.parametrize("n", [1, 5, 7, 10, 11])
@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_torch_distributed_sampler_duplicates_when_uneven(n: int, replicas: int) -> None:
    """Contrast: torch's sampler pads uneven shards by repeating indices, ours never does."""
    dataset = list(range(n))
    torch_flat = [
        i
        for r in range(replicas)
        for i in DistributedSampler(dataset, num_replicas=replicas, rank=r, shuffle=False)
    ]
    counts = Counter(torch_flat)
    assert set(counts) == set(range(n))
    if n % replicas:
        assert any(c > 1 for c in counts.values())  # some sample is evaluated twice
        assert len(torch_flat) > n
    else:
        assert len(torch_flat) == n
    ours = [
        i for r in range(replicas) for i in UnpaddedDistributedSampler(dataset, num_replicas=replicas, rank=r)
    ]
    assert Counter(ours) == Counter(range(n))


def test_unpadded_sampler_with_dataloader() -> None:
    """Per-rank DataLoaders over the sampler together see every sample once."""
    ds = make_dataset("train", 3)
    seen: list[int] = []
    for r in range(3):
        sampler = UnpaddedDistributedSampler(ds, num_replicas=3, rank=r)
        for b in DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate_batch):
            seen.extend(b["target"].tolist())
    full = ds.__getitems__(list(range(len(ds))))
    assert seen == full["target"].tolist()
