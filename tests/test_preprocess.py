"""Preprocessing functions against independent brute-force references written with plain Python.

The references below use only lists, dicts, sets and `Counter`, never polars, so a wrong polars
expression in `genrec_lightning.data.preprocess` cannot be mirrored by the reference.
"""

from __future__ import annotations

import statistics as pystats
from collections import Counter

import numpy as np
import polars as pl
import pytest

from genrec_lightning.data.preprocess import (
    ROW,
    EmptyDatasetError,
    Sequences,
    SplitPositions,
    deduplicate,
    index_and_order,
    k_core,
    leave_one_out,
    statistics,
    to_sequences,
)

Row = tuple[object, object, int]  # (user, item, timestamp)


def frame_of(rows: list[Row]) -> pl.DataFrame:
    """Raw interactions frame in file order."""
    users, items, times = zip(*rows, strict=True) if rows else ([], [], [])
    return pl.DataFrame({"user": list(users), "item": list(items), "timestamp": list(times)})


def random_rows(seed: int, n: int = 300, n_users: int = 40, n_items: int = 30) -> list[tuple[int, int, int]]:
    """Random interactions with skewed user/item popularity so k-core filtering has work to do."""
    rng = np.random.default_rng(seed)
    pu = rng.dirichlet(np.full(n_users, 0.7))
    pi = rng.dirichlet(np.full(n_items, 0.7))
    users = rng.choice(n_users, size=n, p=pu)
    items = rng.choice(n_items, size=n, p=pi)
    times = rng.integers(0, 50, size=n)
    return [(int(u), int(i), int(t)) for u, i, t in zip(users, items, times, strict=True)]


# -------------------------------------------------------------------------------------------- deduplicate


def brute_dedup(rows: list[Row]) -> list[tuple[Row, int]]:
    """First occurrence (with its file row number) of every distinct (user, item, timestamp)."""
    seen: set[Row] = set()
    kept = []
    for i, row in enumerate(rows):
        if row not in seen:
            seen.add(row)
            kept.append((row, i))
    return kept


def test_deduplicate_keeps_first_exact_duplicate_and_distinct_timestamps() -> None:
    """Exact repeats are dropped (first kept); same (user, item) at another time is kept."""
    rows: list[Row] = [
        ("u1", "a", 10),
        ("u2", "a", 10),
        ("u1", "a", 10),  # exact duplicate of row 0
        ("u1", "a", 11),  # same pair, other time: kept
        ("u1", "b", 10),
        ("u2", "a", 10),  # exact duplicate of row 1
        ("u1", "a", 11),  # exact duplicate of row 3
    ]
    out = deduplicate(frame_of(rows).lazy()).collect()
    assert out.columns == ["user", "item", "timestamp", ROW]
    got = [((r["user"], r["item"], r["timestamp"]), r[ROW]) for r in out.iter_rows(named=True)]
    assert got == [(("u1", "a", 10), 0), (("u2", "a", 10), 1), (("u1", "a", 11), 3), (("u1", "b", 10), 4)]
    assert got == brute_dedup(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deduplicate_matches_brute_force_on_random_rows(seed: int) -> None:
    """Many random duplicates: same kept rows, same row numbers, file order preserved."""
    rows = random_rows(seed, n=400, n_users=6, n_items=5)
    rows = [(u, i, t % 4) for u, i, t in rows]  # few timestamps -> many exact duplicates
    out = deduplicate(frame_of(rows).lazy()).collect()
    got = [((r["user"], r["item"], r["timestamp"]), r[ROW]) for r in out.iter_rows(named=True)]
    expected = brute_dedup(rows)
    assert len(expected) < len(rows)  # the fixture really has duplicates
    assert got == expected


# ------------------------------------------------------------------------------------------------- k_core


def brute_k_core(rows: list[tuple[int, int, int]], min_user: int, min_item: int) -> set[int]:
    """Row ids of the iterative (min_user, min_item)-core, by repeated counting until nothing changes."""
    alive = set(range(len(rows)))
    while True:
        users = Counter(rows[r][0] for r in alive)
        items = Counter(rows[r][1] for r in alive)
        keep = {r for r in alive if users[rows[r][0]] >= min_user and items[rows[r][1]] >= min_item}
        if keep == alive:
            return alive
        alive = keep


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("thresholds", [(3, 3), (5, 2), (2, 5), (1, 4), (4, 1)])
def test_k_core_matches_iterative_brute_force(seed: int, thresholds: tuple[int, int]) -> None:
    """Same surviving rows as the brute-force core, and the result is a fixed point."""
    min_user, min_item = thresholds
    rows = random_rows(seed)
    frame = frame_of(rows).with_row_index(ROW)
    expected = brute_k_core(rows, min_user, min_item)
    if not expected:
        with pytest.raises(EmptyDatasetError):
            k_core(frame, min_user, min_item)
        return
    out = k_core(frame, min_user, min_item)
    assert set(out[ROW].to_list()) == expected
    assert out.height == len(expected)
    # fixed point: every remaining user and item meets its threshold
    kept = [rows[r] for r in out[ROW].to_list()]
    assert min(Counter(u for u, _, _ in kept).values()) >= min_user
    assert min(Counter(i for _, i, _ in kept).values()) >= min_item
    # the rows themselves are unchanged
    assert {(r["user"], r["item"], r["timestamp"]) for r in out.iter_rows(named=True)} == set(kept)


def test_k_core_fixtures_exercise_removal() -> None:
    """Guard on the fixtures above: the cores are non-trivial (some rows removed, some kept)."""
    sizes = [len(brute_k_core(random_rows(s), 3, 3)) for s in range(4)]
    assert all(0 < size < 300 for size in sizes)


def test_k_core_needs_several_rounds() -> None:
    """A chain where removing an item drops a user below threshold, which then drops another item."""
    # round 1: items 1 and 2 have one row each -> removed; round 2: users 1 and 2 drop to one row -> removed
    rows = [
        (0, 0, 1),
        (0, 0, 2),
        (1, 0, 1),
        (1, 1, 2),
        (2, 2, 1),
        (2, 0, 3),
        (3, 0, 4),
        (3, 0, 5),
    ]
    frame = frame_of(rows).with_row_index(ROW)
    expected = brute_k_core(rows, 2, 2)
    assert set(k_core(frame, 2, 2)[ROW].to_list()) == expected == {0, 1, 6, 7}
    # also accepts a lazy frame
    assert set(k_core(frame.lazy(), 2, 2)[ROW].to_list()) == expected


def test_k_core_empty_by_user_filter() -> None:
    """Every user has one interaction: the user filter empties the data and says so."""
    frame = frame_of([(0, 0, 1), (1, 0, 2), (2, 1, 3)]).with_row_index(ROW)
    with pytest.raises(EmptyDatasetError, match="user filter") as info:
        k_core(frame, 2, 1)
    assert "item filter" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_k_core_empty_by_item_filter() -> None:
    """Users pass, but every item is unique: the item filter empties the data."""
    frame = frame_of([(0, 0, 1), (0, 1, 2), (1, 2, 3), (1, 3, 4)]).with_row_index(ROW)
    with pytest.raises(EmptyDatasetError, match="item filter") as info:
        k_core(frame, 2, 2)
    assert "user filter" not in str(info.value)


def test_k_core_empty_by_user_filter_in_second_round() -> None:
    """The item filter of round 1 leaves rows; the user filter of round 2 removes the rest."""
    frame = frame_of([(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 2, 4)]).with_row_index(ROW)
    with pytest.raises(EmptyDatasetError, match="user filter") as info:
        k_core(frame, 2, 2)
    assert "round 2" in str(info.value)


def test_k_core_empty_input() -> None:
    """No interactions at all is reported as an empty dataset."""
    frame = pl.DataFrame(
        {"user": [], "item": [], "timestamp": [], ROW: []},
        schema={"user": pl.Int64, "item": pl.Int64, "timestamp": pl.Int64, ROW: pl.UInt32},
    )
    with pytest.raises(EmptyDatasetError):
        k_core(frame, 2, 2)


# ---------------------------------------------------------------------------- index_and_order, to_sequences


def brute_sequences(
    rows: list[Row],
) -> tuple[list[object], list[object], list[list[int]], list[list[int]]]:
    """(sorted raw users, sorted raw items, per-user dense item lists, per-user timestamp lists)."""
    users = sorted({u for u, _, _ in rows})
    items = sorted({i for _, i, _ in rows})
    uid = {u: k for k, u in enumerate(users)}
    iid = {i: k for k, i in enumerate(items)}
    per_user: dict[int, list[tuple[int, int, int]]] = {k: [] for k in range(len(users))}
    for pos, (u, i, t) in enumerate(rows):
        per_user[uid[u]].append((t, pos, iid[i]))
    seq_items, seq_times = [], []
    for k in range(len(users)):
        events = sorted(per_user[k])  # by timestamp, then input position
        seq_items.append([i for _, _, i in events])
        seq_times.append([t for t, _, _ in events])
    return users, items, seq_items, seq_times


def check_sequences(rows: list[Row], shuffle_seed: int | None = None) -> None:
    """Run dedup -> (optional row shuffle) -> index_and_order -> to_sequences and compare."""
    frame = deduplicate(frame_of(rows).lazy()).collect()
    if shuffle_seed is not None:  # ties must be broken by input row number, not by current frame order
        frame = frame.sample(fraction=1.0, shuffle=True, seed=shuffle_seed)
    ordered, user_map, item_map = index_and_order(frame)
    seqs = to_sequences(ordered, user_map.height)

    users, items, seq_items, seq_times = brute_sequences(rows)
    assert user_map.sort("user")["user_raw"].to_list() == users
    assert user_map.sort("user")["user"].to_list() == list(range(len(users)))
    assert item_map.sort("item")["item_raw"].to_list() == items
    assert item_map.sort("item")["item"].to_list() == list(range(len(items)))

    counts = [len(s) for s in seq_items]
    assert seqs.num_users == len(users)
    assert seqs.offsets.tolist() == [sum(counts[:k]) for k in range(len(counts) + 1)]
    assert seqs.lengths.tolist() == counts
    for k in range(len(users)):
        a, b = seqs.offsets[k], seqs.offsets[k + 1]
        assert seqs.items[a:b].tolist() == seq_items[k], f"user {users[k]}"
        assert seqs.timestamps[a:b].tolist() == seq_times[k], f"user {users[k]}"
    assert seqs.items.dtype == np.int64 and seqs.offsets.dtype == np.int64


def test_index_and_order_string_ids_with_ties() -> None:
    """String raw ids in scrambled file order; same-timestamp events keep their input order."""
    rows: list[Row] = [
        ("zed", "item_9", 5),
        ("amy", "item_2", 7),
        ("zed", "item_1", 5),  # tie with row 0: must come after item_9
        ("bob", "item_10", 3),
        ("amy", "item_1", 7),  # tie with row 1
        ("amy", "item_9", 2),  # earliest for amy
        ("zed", "item_2", 5),  # triple tie for zed
        ("bob", "item_9", 1),
        ("amy", "item_10", 7),  # triple tie for amy
        ("zed", "item_10", 4),
    ]
    check_sequences(rows)
    check_sequences(rows, shuffle_seed=3)
    # spot-check the hand-derived expectation (lexicographic: item_1 < item_10 < item_2 < item_9)
    frame = deduplicate(frame_of(rows).lazy()).collect()
    ordered, user_map, item_map = index_and_order(frame)
    assert user_map.sort("user")["user_raw"].to_list() == ["amy", "bob", "zed"]
    assert item_map.sort("item")["item_raw"].to_list() == ["item_1", "item_10", "item_2", "item_9"]
    seqs = to_sequences(ordered, 3)
    # amy: item_9@2, then ties @7 in input order item_2, item_1, item_10 -> 3, 2, 0, 1
    assert seqs.items[0:4].tolist() == [3, 2, 0, 1]
    # bob: item_9@1, item_10@3 -> 3, 1 ; zed: item_10@4, then item_9, item_1, item_2 @5 -> 1, 3, 0, 2
    assert seqs.items[4:6].tolist() == [3, 1]
    assert seqs.items[6:10].tolist() == [1, 3, 0, 2]


def test_index_and_order_integer_ids_sorted_numerically() -> None:
    """Integer raw ids are sorted as numbers (10 after 9), independent of file order."""
    rows: list[Row] = [(10, 100, 1), (9, 7, 1), (10, 7, 0), (2, 100, 5), (9, 100, 1)]
    check_sequences(rows)
    frame = deduplicate(frame_of(rows).lazy()).collect()
    _, user_map, item_map = index_and_order(frame)
    assert user_map.sort("user")["user_raw"].to_list() == [2, 9, 10]
    assert item_map.sort("item")["item_raw"].to_list() == [7, 100]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_and_order_matches_brute_force_on_random_rows(seed: int) -> None:
    """Random rows with many timestamp ties (after dedup) and a shuffled frame order."""
    rows = [(f"u{u}", f"i{i}", t % 6) for u, i, t in random_rows(seed, n=200, n_users=12, n_items=15)]
    deduped = [row for row, _ in brute_dedup(rows)]
    check_sequences(deduped, shuffle_seed=seed)


def test_to_sequences_counts_users_without_interactions() -> None:
    """`num_users` larger than the ids present yields empty trailing sequences."""
    ordered = pl.DataFrame({"user": [0, 0, 2], "item": [4, 1, 3], "timestamp": [1, 2, 3]})
    seqs = to_sequences(ordered, 4)
    assert seqs.offsets.tolist() == [0, 2, 2, 3, 3]
    assert seqs.lengths.tolist() == [2, 0, 1, 0]
    assert seqs.items.tolist() == [4, 1, 3]


# ---------------------------------------------------------------------------------------------- leave_one_out


def make_sequences(lengths: list[int], seed: int = 0) -> Sequences:
    """Random flat sequences with the given per-user lengths."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return Sequences(
        items=rng.integers(0, 20, size=n).astype(np.int64),
        timestamps=np.arange(n, dtype=np.int64),
        offsets=offsets,
    )


def brute_loo(lengths: list[int]) -> dict[str, list[tuple[int, int]]]:
    """Sorted (flat target position, user) pairs per split, by walking each user's positions."""
    out: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
    start = 0
    for user, n in enumerate(lengths):
        for p in range(1, n - 2):  # positions 1 .. n-3
            out["train"].append((start + p, user))
        out["val"].append((start + n - 2, user))
        out["test"].append((start + n - 1, user))
        start += n
    return {k: sorted(v) for k, v in out.items()}


def pairs(split: SplitPositions) -> list[tuple[int, int]]:
    """Sorted (flat target position, user) pairs of one split."""
    return sorted(zip(split.targets.tolist(), split.users.tolist(), strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_leave_one_out_matches_brute_force(seed: int) -> None:
    """Random lengths (including the minimum 3): every split equals the per-user reference."""
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(3, 12, size=15)] + [3]
    seqs = make_sequences(lengths, seed)
    splits = leave_one_out(seqs)
    expected = brute_loo(lengths)
    for name in ("train", "val", "test"):
        assert pairs(splits[name]) == expected[name], name
        assert len(splits[name]) == len(expected[name])
        assert splits[name].targets.dtype == np.int64 and splits[name].users.dtype == np.int64


def test_leave_one_out_targets_per_user() -> None:
    """Test = last item, val = second to last, train = positions 1..n-3, never the last two."""
    lengths = [3, 4, 6, 10]
    seqs = make_sequences(lengths, seed=5)
    splits = leave_one_out(seqs)
    offsets = seqs.offsets.tolist()
    for user, n in enumerate(lengths):
        start = offsets[user]
        seq = seqs.items[start : start + n].tolist()
        (test_pos,) = [t for t, u in pairs(splits["test"]) if u == user]
        (val_pos,) = [t for t, u in pairs(splits["val"]) if u == user]
        assert seqs.items[test_pos] == seq[-1] and test_pos - start == n - 1
        assert seqs.items[val_pos] == seq[-2] and val_pos - start == n - 2
        train_within = sorted(t - start for t, u in pairs(splits["train"]) if u == user)
        assert train_within == list(range(1, n - 2))
        assert all(p < n - 2 for p in train_within)  # not at the last two positions
        assert all(offsets[user] <= t < offsets[user + 1] for t, u in pairs(splits["train"]) if u == user)


@pytest.mark.parametrize("lengths", [[3, 2, 5], [1], [4, 0, 4], [5, 5, 2]])
def test_leave_one_out_rejects_short_users(lengths: list[int]) -> None:
    """Any user with fewer than 3 interactions raises ValueError."""
    with pytest.raises(ValueError):
        leave_one_out(make_sequences(lengths))


def test_leave_one_out_no_users() -> None:
    """Zero users give three empty splits."""
    splits = leave_one_out(make_sequences([]))
    assert all(len(splits[name]) == 0 for name in ("train", "val", "test"))


# ------------------------------------------------------------------------------------------------- statistics


def test_statistics_against_hand_computation() -> None:
    """Counts, mean = interactions / users, median, max and density."""
    lengths = [3, 5, 7, 30]
    seqs = make_sequences(lengths)
    num_items = 50
    stats = statistics(seqs, num_items)
    total = sum(lengths)
    assert stats["interactions"] == total == 45
    assert stats["users"] == len(lengths)
    assert stats["items"] == num_items
    assert stats["history_mean_length"] == pytest.approx(total / len(lengths)) == 11.25
    assert stats["history_median_length"] == pytest.approx(pystats.median(lengths))
    assert stats["history_max_length"] == max(lengths)
    assert stats["density"] == pytest.approx(total / (len(lengths) * num_items))


def test_statistics_no_users() -> None:
    """Empty data gives zeros rather than a division error."""
    stats = statistics(make_sequences([]), 10)
    assert stats["interactions"] == 0 and stats["users"] == 0
    assert stats["history_mean_length"] == 0.0
