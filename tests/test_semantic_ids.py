"""SemanticIds against brute-force references written with plain Python loops, dicts and math.log."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter, defaultdict

import pytest
import torch

from genrec_lightning.artifacts import META_FILE
from genrec_lightning.semantic_ids import (
    BOS,
    EOS,
    NUM_SPECIAL_TOKENS,
    PAD,
    ArtifactMismatchError,
    PrefixIndex,
    SemanticIds,
    code_tokens,
    collision_rate,
    filter_ratios,
    padded_token_table,
    purity_gains,
    token_offsets,
    usage_entropy,
    vocab_size,
)

# --------------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------------


def rows(codes: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r) for r in codes.tolist()]


def bf_groups(table: list[tuple[int, ...]], k: int) -> dict[tuple[int, ...], list[int]]:
    """Length-k prefix -> items (in id order)."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for item, row in enumerate(table):
        groups[row[:k]].append(item)
    return groups


def bf_filter_ratios(table: list[tuple[int, ...]]) -> list[float]:
    out = []
    for k in range(1, len(table[0]) + 1):
        cur, prev = bf_groups(table, k), bf_groups(table, k - 1)
        terms = [1 - len(cur[row[:k]]) / len(prev[row[: k - 1]]) for row in table]
        out.append(sum(terms) / len(terms))
    return out


def bf_purity(members: list[int], freq: list[float]) -> float:
    if len(members) == 1:
        return 1.0
    total = sum(freq[i] for i in members)
    if total == 0:
        return 0.0
    h = 0.0
    for i in members:
        p = freq[i] / total
        if p > 0:
            h -= p * math.log(p)
    return 1 - h / math.log(len(members))


def bf_item_gains(table: list[tuple[int, ...]], freq: list[float]) -> list[list[float]]:
    """gain[i][k-1] = purity(G_k(i)) - purity(G_{k-1}(i))."""
    levels = len(table[0])
    purity = [{p: bf_purity(m, freq) for p, m in bf_groups(table, k).items()} for k in range(levels + 1)]
    return [[purity[k][row[:k]] - purity[k - 1][row[: k - 1]] for k in range(1, levels + 1)] for row in table]


def bf_purity_gains(table: list[tuple[int, ...]], freq: list[float]) -> list[float]:
    gains = bf_item_gains(table, freq)
    return [sum(g[k] for g in gains) / len(gains) for k in range(len(table[0]))]


def bf_token_gains(table: list[tuple[int, ...]], freq: list[float], sizes: list[int]) -> list[list[float]]:
    gains = bf_item_gains(table, freq)
    out = []
    for k, size in enumerate(sizes):
        per_code = []
        for c in range(size):
            vals = [gains[i][k] for i, row in enumerate(table) if row[k] == c]
            per_code.append(sum(vals) / len(vals) if vals else math.nan)
        out.append(per_code)
    return out


def assert_close_nan(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        if math.isnan(e):
            assert math.isnan(a)
        else:
            assert a == pytest.approx(e, abs=1e-12)


def random_raw(n: int, sizes: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, s, (n,), generator=g) for s in sizes], dim=1)


# Hand-built example: 8 items, 2 levels, sizes [4, 3] (level-0 code 3 unused), two collisions.
HAND_CODES = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0], [1, 2], [1, 2], [1, 2], [2, 1]])
HAND_SIZES = [4, 3]
# Items 0 and 1 share an ID and have zero mass (purity 0); item 3 is the head of prefix (1,).
HAND_FREQ = [0.0, 0.0, 2.0, 7.0, 3.0, 3.0, 1.0, 4.0]


# --------------------------------------------------------------------------------------------------
# Dedup
# --------------------------------------------------------------------------------------------------


def test_suffix_dedup_numbers_duplicates_by_item_id() -> None:
    raw = random_raw(300, [3, 4], seed=0)  # 12 possible IDs for 300 items: many collisions
    ids = SemanticIds.from_codes(raw, [3, 4], dedup="suffix")
    table = rows(raw)
    seen: Counter = Counter()
    expected = []
    for row in table:
        expected.append((*row, seen[row]))
        seen[row] += 1
    assert rows(ids.codes) == expected
    assert ids.codebook_sizes == [3, 4, max(Counter(table).values())]
    assert ids.num_levels == 3 and ids.raw_num_levels == 2 and ids.dedup == "suffix"
    assert ids.is_unique and torch.equal(ids.raw_codes, raw)
    assert SemanticIds.from_codes(raw.clone(), [3, 4], dedup="suffix").equal(ids)


def test_suffix_level_is_appended_without_collisions() -> None:
    raw = torch.tensor([[0, 1], [1, 0], [2, 2]])
    ids = SemanticIds.from_codes(raw, 3)
    assert ids.codebook_sizes == [3, 3, 1]
    assert ids.codes[:, 2].tolist() == [0, 0, 0]


def test_reassign_last_separates_later_duplicates_only() -> None:
    raw = random_raw(18, [3, 3], seed=1)  # last level uses codes 0..2 only: codes 3..7 are free
    raw[:, 0] = torch.arange(18) % 3  # 6 items per prefix, within the 8 last-level codes
    ids = SemanticIds.from_codes(raw, [3, 8], dedup="reassign_last", seed=7)
    assert ids.is_unique and ids.num_levels == 2 and ids.codebook_sizes == [3, 8]
    assert not torch.equal(ids.codes, raw) and not SemanticIds.from_codes(raw, [3, 8], dedup="none").is_unique
    first_of_group: dict[tuple[int, ...], int] = {}
    for item, row in enumerate(rows(raw)):
        first_of_group.setdefault(row, item)
    for item, (old, new) in enumerate(zip(rows(raw), rows(ids.codes), strict=True)):
        assert new[0] == old[0]  # the prefix never changes
        if first_of_group[old] == item:
            assert new == old
    again = SemanticIds.from_codes(raw, [3, 8], dedup="reassign_last", seed=7)
    assert again.equal(ids)


def test_reassign_last_one_level_and_no_collisions() -> None:
    raw = torch.tensor([[2], [2], [0], [2]])
    ids = SemanticIds.from_codes(raw, 4, dedup="reassign_last")
    assert ids.is_unique and ids.codes[0, 0] == 2 and ids.codes[2, 0] == 0  # first members keep their code
    assert sorted(ids.codes[[1, 3], 0].tolist()) == [1, 3]  # the only free codes
    unique_raw = torch.tensor([[0, 1], [1, 1]])
    assert torch.equal(SemanticIds.from_codes(unique_raw, 2, dedup="reassign_last").codes, unique_raw)


def test_reassign_last_capacity_error_names_the_fix() -> None:
    raw = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]])  # 3 items under prefix (1,), last level size 2
    with pytest.raises(ValueError, match=r"3 items under prefix \[1\].*only 2 codes.*dedup: suffix"):
        SemanticIds.from_codes(raw, 2, dedup="reassign_last")


def test_dedup_none_keeps_collisions() -> None:
    raw = torch.tensor([[0, 1], [0, 1], [1, 0]])
    ids = SemanticIds.from_codes(raw, 2, dedup="none")
    assert not ids.is_unique and torch.equal(ids.codes, raw)
    assert ids.items_from_codes(torch.tensor([[0, 1]])).tolist() == [0]  # lowest item id on duplicates


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "sizes", "match"),
    [
        (torch.tensor([[0, 5]]), [4, 4], r"level 1 holds code 5, outside \[0, 4\).*>= 6"),
        (torch.tensor([[-1, 0]]), [4, 4], r"level 0 holds code -1.*non-negative"),
        (torch.tensor([[0.0, 1.0]]), [4, 4], r"integer codes"),
        (torch.tensor([[0, 1]]), [4], r"2 levels but 1 codebook sizes"),
        (torch.tensor([0, 1]), [4], r"\[num_items, num_levels\]"),
        (torch.zeros(0, 2, dtype=torch.int64), [4, 4], r"non-empty"),
    ],
)
def test_constructor_validation(codes: torch.Tensor, sizes: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SemanticIds(codes, sizes)


def test_from_codes_and_dedup_validation() -> None:
    with pytest.raises(ValueError, match=r"level 0 holds code 3"):
        SemanticIds.from_codes(torch.tensor([[3, 0]]), 3)
    with pytest.raises(ValueError, match="dedup must be one of"):
        SemanticIds.from_codes(torch.tensor([[0, 0]]), 3, dedup="merge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="raw_codes has shape"):
        SemanticIds(torch.tensor([[0, 0]]), [2, 2], raw_codes=torch.tensor([[0, 0]]), dedup="suffix")


# --------------------------------------------------------------------------------------------------
# Vocabulary and lookups
# --------------------------------------------------------------------------------------------------


def test_vocab_functions_match_a_hand_built_vocabulary() -> None:
    sizes = (3, 2, 4)
    token_of: dict[tuple[int, int], int] = {}  # (level, code) -> token, numbered after the specials
    next_token = NUM_SPECIAL_TOKENS
    for level, size in enumerate(sizes):
        for code in range(size):
            token_of[level, code] = next_token
            next_token += 1
    assert vocab_size(sizes) == next_token == 12
    offsets = token_offsets(sizes)
    assert offsets.dtype == torch.int64 and offsets.tolist() == [token_of[level, 0] for level in range(3)]
    codes = torch.tensor(list(itertools.product(*(range(s) for s in sizes))))  # every ID, [24, 3]
    tokens = code_tokens(codes, offsets)
    assert tokens.tolist() == [[token_of[level, c] for level, c in enumerate(row)] for row in codes.tolist()]
    table = padded_token_table(codes, offsets)
    assert torch.equal(table[:-1], tokens) and table[-1].tolist() == [PAD] * 3
    ids = SemanticIds(codes, sizes)  # the table's methods are these functions
    assert ids.vocab_size == vocab_size(sizes) and torch.equal(ids.token_offsets, offsets)
    assert torch.equal(ids.token_table, table)


def test_tokens_and_token_table() -> None:
    ids = SemanticIds.from_codes(random_raw(50, [5, 3], seed=2), [5, 3])
    sizes = ids.codebook_sizes
    assert (PAD, EOS, BOS) == (0, 1, 2)
    assert ids.vocab_size == NUM_SPECIAL_TOKENS + sum(sizes)
    expected_offsets = [NUM_SPECIAL_TOKENS + sum(sizes[:level]) for level in range(len(sizes))]
    assert ids.token_offsets.tolist() == expected_offsets
    table = ids.token_table
    assert table.shape == (51, 3) and table[50].tolist() == [PAD] * 3
    assert torch.equal(table[:50] - ids.token_offsets, ids.codes)
    for level, size in enumerate(sizes):  # every level's tokens stay in their own range
        assert bool(
            (
                (table[:50, level] >= expected_offsets[level])
                & (table[:50, level] < expected_offsets[level] + size)
            ).all()
        )
    batch = torch.tensor([[3, 50, 0], [49, 50, 50]])
    out = ids.tokens(batch)
    assert out.shape == (2, 3, 3)
    assert torch.equal(out[0, 0], table[3]) and out[1, 2].tolist() == [PAD] * 3


def test_items_round_trip_and_unknown_ids() -> None:
    ids = SemanticIds.from_codes(random_raw(40, [4, 4], seed=3), [4, 4])
    every = torch.arange(40)
    assert torch.equal(ids.items_from_codes(ids.codes), every)
    assert torch.equal(ids.items_from_tokens(ids.tokens(every)), every)
    existing = set(rows(ids.codes))
    missing = [c for c in itertools.product(*map(range, ids.codebook_sizes)) if c not in existing][:5]
    assert missing
    assert ids.items_from_codes(torch.tensor(missing)).tolist() == [-1] * len(missing)
    bad_codes = torch.tensor([[0, 0, 99], [-1, 0, 0]])
    assert ids.items_from_codes(bad_codes).tolist() == [-1, -1]
    tokens = ids.tokens(torch.tensor([0, 1]))
    wrong_level = tokens.clone()
    wrong_level[0, 0] = tokens[0, 1]  # a level-1 token in the level-0 slot
    special = tokens.clone()
    special[1, 2] = EOS
    assert ids.items_from_tokens(torch.stack([wrong_level[0], special[1]])).tolist() == [-1, -1]


def test_pack_is_exact_and_order_preserving() -> None:
    ids = SemanticIds.from_codes(random_raw(100, [3, 5, 2], seed=4), [3, 5, 2], dedup="none")
    table = rows(ids.codes)
    for k in range(4):
        keys = ids.pack(ids.codes[:, :k]).tolist()
        for a, b in itertools.combinations(range(100), 2):
            assert (keys[a] < keys[b]) == (table[a][:k] < table[b][:k])
            assert (keys[a] == keys[b]) == (table[a][:k] == table[b][:k])


def test_pack_overflow_raises() -> None:
    ids = SemanticIds(torch.tensor([[0, 1], [1, 0]]), [2**31, 2**31])
    with pytest.raises(ValueError, match="2\\*\\*62"):
        ids.pack(ids.codes)
    with pytest.raises(ValueError, match="fewer levels or smaller codebooks"):
        ids.prefix_index()
    assert ids.pack(ids.codes[:, :1]).tolist() == [0, 1]  # one level still fits


# --------------------------------------------------------------------------------------------------
# Prefix index
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dedup", ["none", "suffix"])
def test_prefix_index_matches_brute_force(dedup: str) -> None:
    ids = SemanticIds.from_codes(random_raw(120, [4, 3, 3], seed=5), [4, 3, 3], dedup=dedup)
    index = ids.prefix_index()
    assert index is ids.prefix_index()  # cached
    table = rows(ids.codes)
    sizes = ids.codebook_sizes
    assert sorted(table) == rows(index.sorted_codes)
    assert [table[i] for i in index.sorted_items.tolist()] == rows(index.sorted_codes)
    for level in range(len(sizes)):
        prefixes = list(itertools.product(*map(range, sizes[:level])))  # every possible prefix, real or not
        continuations = defaultdict(set)
        for row in table:
            continuations[row[:level]].add(row[level])
        query = torch.tensor(prefixes, dtype=torch.int64).reshape(len(prefixes), level)
        mask = index.allowed(level, query)
        assert mask.shape == (len(prefixes), sizes[level]) and mask.dtype == torch.bool
        for p, m in zip(prefixes, mask.tolist(), strict=True):
            assert {c for c in range(sizes[level]) if m[c]} == continuations.get(p, set())
        assert len(index.keys[level]) == len(continuations)
        assert index.ptr[level][-1] == len(index.next_codes[level])
    for k in range(len(sizes) + 1):
        prefixes = list(itertools.product(*map(range, sizes[:k])))
        query = torch.tensor(prefixes, dtype=torch.int64).reshape(len(prefixes), k)
        start, end = index.item_range(query)
        for p, s, e in zip(prefixes, start.tolist(), end.tolist(), strict=True):
            expected = {i for i, row in enumerate(table) if row[:k] == p}
            assert set(index.sorted_items[s:e].tolist()) == expected and e - s == len(expected)


def test_prefix_index_unknown_and_out_of_range_prefixes() -> None:
    ids = SemanticIds(torch.tensor([[0, 1], [2, 0]]), [3, 2])
    index = ids.prefix_index()
    assert isinstance(index, PrefixIndex)
    mask = index.allowed(1, torch.tensor([[0], [1], [2], [3], [-1]]))
    assert mask.tolist() == [[False, True], [False, False], [True, False], [False, False], [False, False]]
    start, end = index.item_range(torch.tensor([[1], [5]]))
    assert (end - start).tolist() == [0, 0]
    with pytest.raises(ValueError, match="must have 1 columns"):
        index.allowed(1, torch.tensor([[0, 1]]))


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def test_collision_rate_and_usage_entropy_brute_force() -> None:
    raw = random_raw(200, [6, 4], seed=6)
    raw[:, 0] %= 5  # code 5 of level 0 unused
    table = rows(raw)
    assert collision_rate(raw) == pytest.approx(1 - len(set(table)) / len(table))
    usage, entropy = usage_entropy(raw, [6, 4])
    for level, size in enumerate([6, 4]):
        counts = Counter(row[level] for row in table)
        assert usage[level] == pytest.approx(len(counts) / size)
        expected = -sum(c / len(table) * math.log(c / len(table)) for c in counts.values())
        assert entropy[level] == pytest.approx(expected)
    assert usage[0] == pytest.approx(5 / 6)


def test_hand_built_filter_ratios_and_purity_gains() -> None:
    table = rows(HAND_CODES)
    freq = torch.tensor(HAND_FREQ)
    # A few values worked out by hand, to make sure the brute force itself means what the paper says.
    assert bf_filter_ratios(table)[0] == pytest.approx((3 * (1 - 3 / 8) + 4 * (1 - 4 / 8) + (1 - 1 / 8)) / 8)
    assert bf_purity([0, 1], HAND_FREQ) == 0.0 and bf_purity([7], HAND_FREQ) == 1.0
    assert bf_purity([4, 5], [0, 0, 0, 0, 1.0, 1.0]) == pytest.approx(0.0)

    assert filter_ratios(HAND_CODES) == pytest.approx(bf_filter_ratios(table), abs=1e-12)
    assert purity_gains(HAND_CODES, freq) == pytest.approx(bf_purity_gains(table, HAND_FREQ), abs=1e-12)
    ones = [1.0] * 8
    assert purity_gains(HAND_CODES) == pytest.approx(bf_purity_gains(table, ones), abs=1e-12)

    for dedup in ("none", "suffix"):
        ids = SemanticIds.from_codes(HAND_CODES, HAND_SIZES, dedup=dedup)
        final = rows(ids.codes)
        per_token = ids.token_purity_gain(freq)
        expected = bf_token_gains(final, HAND_FREQ, ids.codebook_sizes)
        assert [len(t) for t in per_token] == ids.codebook_sizes
        for got, want in zip(per_token, expected, strict=True):
            assert_close_nan(got.tolist(), want)
        assert math.isnan(per_token[0][3])  # level-0 code 3 is used by no item
        stats = ids.statistics(freq)
        assert stats["filter_ratio"] == pytest.approx(bf_filter_ratios(final), abs=1e-12)
        assert stats["purity_gain"] == pytest.approx(bf_purity_gains(final, HAND_FREQ), abs=1e-12)


def test_uniform_codes_sanity() -> None:
    # 512 items: level 0 = item % 256 (pairs of items per code), level 1 tells the pair apart.
    items = torch.arange(512)
    codes = torch.stack([items % 256, items // 256], dim=1)
    ratios = filter_ratios(codes)
    assert ratios[0] == pytest.approx(1 - 1 / 256) and ratios[1] == pytest.approx(0.5)
    # uniform frequencies: pairs have purity 0, singletons 1
    assert purity_gains(codes) == pytest.approx([0.0, 1.0])
    distinct = torch.arange(256)[:, None]
    assert filter_ratios(distinct) == pytest.approx([1 - 1 / 256])
    assert purity_gains(distinct) == pytest.approx([1.0])


def test_statistics_brute_force_and_json() -> None:
    raw = random_raw(80, [4, 4], seed=8)
    ids = SemanticIds.from_codes(raw, 4, dedup="suffix")
    stats = ids.statistics()
    json.dumps(stats)  # plain python numbers only
    table = rows(raw)
    group = Counter(table)
    assert stats["num_items"] == 80 and stats["num_levels"] == 3 and stats["dedup"] == "suffix"
    assert stats["codebook_sizes"] == ids.codebook_sizes
    assert stats["collision_rate"] == pytest.approx(1 - len(group) / 80)
    assert stats["colliding_items"] == sum(1 for row in table if group[row] > 1)
    assert stats["max_group_size"] == max(group.values())
    assert stats["unique_ratio"] == 1.0
    final = rows(ids.codes)
    for level, size in enumerate(ids.codebook_sizes):
        counts = Counter(row[level] for row in final)
        h = -sum(c / 80 * math.log(c / 80) for c in counts.values())
        assert stats["usage"][level] == pytest.approx(len(counts) / size)
        assert stats["entropy"][level] == pytest.approx(h)
        assert stats["normalized_entropy"][level] == pytest.approx(h / math.log(size) if size > 1 else 0.0)
    assert stats["purity_gain"] == pytest.approx(bf_purity_gains(final, [1.0] * 80), abs=1e-12)
    with pytest.raises(ValueError, match="shape \\[80\\]"):
        ids.statistics(torch.ones(3))


# --------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path) -> None:  # noqa: ANN001
    ids = SemanticIds.from_codes(random_raw(30, [3, 3], seed=9), 3, meta={"dataset": "toy"})
    out = ids.save(tmp_path / "sid", meta={"config_hash": "abc123", "levels": (3, 3)})
    assert out == tmp_path / "sid" and (out / "codes.safetensors").is_file()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["format"] == 1 and meta["num_items"] == 30 and meta["dedup"] == "suffix"
    assert meta["raw_codebook_sizes"] == [3, 3] and meta["codebook_sizes"] == ids.codebook_sizes
    assert meta["statistics"] == json.loads(json.dumps(ids.statistics()))
    loaded = SemanticIds.load(out, expect={"dataset": "toy", "config_hash": "abc123", "levels": (3, 3)})
    assert loaded.equal(ids) and torch.equal(loaded.raw_codes, ids.raw_codes)
    assert {k: loaded.meta[k] for k in ("dataset", "config_hash", "levels")} == {
        "dataset": "toy",
        "config_hash": "abc123",
        "levels": [3, 3],
    }
    assert "sha256" not in loaded.meta and loaded.meta["num_items"] == 30  # meta.json minus file checks
    assert loaded.codebook_sizes == ids.codebook_sizes and loaded.dedup == "suffix"
    loaded.save(out)  # re-saving a loaded table (overwriting in place) is allowed and changes nothing
    again = SemanticIds.load(out)
    assert again.equal(ids) and again.meta == loaded.meta


def test_load_rejects_other_config_and_tampering(tmp_path) -> None:  # noqa: ANN001
    out = SemanticIds.from_codes(random_raw(20, [3, 3], seed=10), 3).save(
        tmp_path / "sid", {"dataset": "toy"}
    )
    with pytest.raises(ArtifactMismatchError, match=r"another dataset/config.*'dataset'.*'toy'.*'beauty'"):
        SemanticIds.load(out, expect={"dataset": "beauty"})
    with pytest.raises(ArtifactMismatchError, match="'config_hash'.*<missing>"):
        SemanticIds.load(out, expect={"config_hash": "x"})
    path = out / "codes.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # flip a bit of the last code
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatchError, match="modified or corrupted; delete"):
        SemanticIds.load(out)


def test_load_missing_files_say_how_to_build(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match="genrec tokenize --config"):
        SemanticIds.load(tmp_path / "nothing")
    out = SemanticIds.from_codes(torch.tensor([[0, 1]]), 2).save(tmp_path / "sid")
    (out / "codes.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="codes.safetensors.*genrec tokenize"):
        SemanticIds.load(out)
    (out / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        SemanticIds.load(out)


def test_save_meta_cannot_contradict_the_table(tmp_path) -> None:  # noqa: ANN001
    ids = SemanticIds.from_codes(torch.tensor([[0, 1], [1, 1]]), 2)
    with pytest.raises(ValueError, match="sha256"):
        ids.save(tmp_path / "sid", meta={"sha256": "forged"})
    with pytest.raises(ValueError, match="'num_items' = 3 contradicts"):
        ids.save(tmp_path / "sid", meta={"num_items": 3})
    assert not (tmp_path / "sid").exists()
    weighted = ids.statistics(torch.tensor([1.0, 3.0]))
    out = ids.save(tmp_path / "sid", meta={"num_items": 2, "statistics": weighted})  # same value: fine
    assert json.loads((out / META_FILE).read_text())["statistics"] == json.loads(json.dumps(weighted))
