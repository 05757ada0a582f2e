"""From a trained run to recommendations: bundles, the Recommender API, new items, the CLI, the server."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import yaml
from test_unigrec import ROOT, stages, tiny_data_args, tiny_unigrec_config  # noqa: F401  (module fixture `stages`)

from genrec_lightning.cli import GenRecCLI, main
from genrec_lightning.config_files import load_config
from genrec_lightning.data.datamodules import SequenceDataModule
from genrec_lightning.semantic_ids import SemanticIds, dedup_suffix, extend_reassign_last, extend_suffix
from genrec_lightning.serving import BundleError, InputError, Recommender, UnknownItemsError
from genrec_lightning.serving.bundle import ITEMS_FILE, META_FILE
from genrec_lightning.serving.client import free_port, post_json, wait_until_healthy

TINY_T5 = dict(d_model=16, d_ff=32, d_kv=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1)
USERS = 128  # test users ranked by `genrec predict` (one eval batch)


def tiny_tiger_config(stages: dict[str, Any], tmp_path: Path) -> Path:  # noqa: F811
    """configs/tiger_curriculum.yaml (TIGER with the token-weighted multi-target curriculum, whose
    objective weights are learned) shrunk to seconds on the module's stage-1 IDs (2 x 16 + suffix)."""
    cfg = load_config(ROOT / "configs/tiger_curriculum.yaml")
    cfg["model"]["init_args"]["network"]["init_args"] = dict(TINY_T5)
    cfg["model"]["init_args"]["optimization"]["warmup_steps"] = 2
    cfg["data"]["init_args"].update(tiny_data_args(stages))
    limits = {
        "limit_train_batches": 8,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "limit_predict_batches": 1,
    }
    cfg["trainer"].update(max_epochs=1, check_val_every_n_epoch=1, enable_progress_bar=False, **limits)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp_path / "ckpt")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiger.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit_export_predict(config: Path, bundle: Path, limit_predict: bool = False) -> dict[str, Any]:
    cli = GenRecCLI(args=["fit", "--config", str(config)])
    best = cli.trainer.checkpoint_callback.best_model_path
    main(["export", "--config", str(config), "--ckpt_path", best, "--output", str(bundle)])
    extra = ["--trainer.limit_predict_batches", "1"] if limit_predict else []
    out = bundle.parent / f"{bundle.name}_predictions.parquet"
    main(["predict", "--config", str(config), "--ckpt_path", best, "--trainer.callbacks+=TopKWriter",
          f"--trainer.callbacks.output_path={out}", *extra])  # fmt: skip
    return {"config": config, "best": best, "bundle": bundle, "predictions": pl.read_parquet(out), "cli": cli}


@pytest.fixture(scope="module")
def runs(stages: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("serving")
    tiger = fit_export_predict(tiny_tiger_config(stages, tmp / "tiger"), tmp / "tiger_bundle")
    (tmp / "unigrec").mkdir()
    unigrec_config = tiny_unigrec_config(stages, tmp / "unigrec")
    unigrec = fit_export_predict(unigrec_config, tmp / "unigrec_bundle", limit_predict=True)
    teacher = stages["paths"]["teacher"]
    teacher_ckpt = sorted((stages["tmp"] / "teacher_ckpt").glob("*.ckpt"))[-1]
    main(
        [
            "export",
            "--config",
            str(teacher),
            "--ckpt_path",
            str(teacher_ckpt),
            "--output",
            str(tmp / "sasrec"),
        ]
    )
    return {
        "tmp": tmp,
        "tiger": tiger,
        "unigrec": unigrec,
        "sasrec": tmp / "sasrec",
        "dm": stages["dm"],
        "teacher_ckpt": teacher_ckpt,
    }


def histories_of_test_users(dm: SequenceDataModule, users: int) -> tuple[list[int], list[list[Any]]]:
    """(user, raw-id histories) of the first test samples, exactly as `genrec predict` feeds them."""
    split = dm.split("test")
    batch = split.batch(torch.arange(min(users, len(split))))
    raw = dm.id_maps()[1].sort("item")["item_raw"].to_list()
    histories = [[raw[i] for i, keep in zip(h.tolist(), m.tolist(), strict=True) if keep]
                 for h, m in zip(batch["history"], batch["history_mask"], strict=True)]  # fmt: skip
    return batch["user"].tolist(), histories


# ------------------------------------------------------------------------------ dedup of new items
def test_new_suffixes_continue_the_numbering_and_leave_old_ids_alone() -> None:
    raw = torch.tensor([[0, 1], [0, 1], [2, 3], [0, 1]])
    raw_new = torch.tensor([[2, 3], [0, 1], [5, 5], [0, 1]])
    whole, _ = dedup_suffix(torch.cat([raw, raw_new]))  # the rule applied from scratch to all items
    assert torch.equal(extend_suffix(raw, raw_new), whole[4:])
    assert extend_suffix(raw, raw_new)[:, -1].tolist() == [1, 3, 0, 4]
    assert torch.equal(dedup_suffix(raw)[0], whole[:4])  # existing items keep their IDs


def test_reassigned_last_codes_are_free_distinct_and_seeded() -> None:
    raw = torch.randint(0, 3, (24, 3), generator=torch.Generator().manual_seed(0))  # crowded prefixes
    codes = SemanticIds.from_codes(raw, 8, dedup="reassign_last", seed=0).codes
    raw_new = torch.cat(
        [codes[:5], torch.tensor([[7, 7, 1], [7, 7, 1]])]
    )  # five taken IDs, a pair of new ones
    new = extend_reassign_last(codes, raw_new, 8, seed=3)
    assert torch.equal(new[:, :-1], raw_new[:, :-1])  # only the last level moves
    whole = torch.cat([codes, new])
    assert len({tuple(c) for c in whole.tolist()}) == len(whole)  # every ID unique
    assert new[5, -1] == 1 and new[6, -1] != 1
    assert torch.equal(new, extend_reassign_last(codes, raw_new, 8, seed=3))
    full = torch.tensor([[0, 0, c] for c in range(2)])
    with pytest.raises(ValueError, match="all 2 last-level codes under prefix"):
        extend_reassign_last(full, torch.tensor([[0, 0, 1]]), 2, seed=0)


# ------------------------------------------------------------------------------ bundles
@pytest.mark.parametrize("name", ["tiger", "unigrec"])
def test_bundle_recommends_exactly_what_predict_ranked(runs: dict[str, Any], name: str) -> None:
    run = runs[name]
    rec = Recommender.load(run["bundle"])
    users, histories = histories_of_test_users(runs["dm"], USERS)
    results = rec.recommend(histories, k=rec.list_length, exclude_seen=False, batch_size=USERS)
    predicted = run["predictions"]
    assert predicted["user"].n_unique() == len(users)
    for user, result in zip(users, results, strict=True):
        rows = predicted.filter(pl.col("user") == user).sort("rank")
        assert result.items == rows["item_raw"].to_list()
        assert result.scores == rows["score"].to_list()  # float32 both ways: bit for bit


def test_a_copied_bundle_needs_no_data_or_cache(
    runs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(runs["tiger"]["bundle"], copy)
    expected = Recommender.load(runs["tiger"]["bundle"]).recommend([[1, 2, 3]], k=5)
    for name in ("build_artifacts", "item_embeddings", "id_maps"):
        monkeypatch.setattr(SequenceDataModule, name, lambda *a, **k: pytest.fail("the bundle read the data"))
    monkeypatch.chdir(tmp_path)
    assert Recommender.load(copy).recommend([[1, 2, 3]], k=5) == expected
    wide = Recommender.load(copy, dtype=torch.float64).recommend([[1, 2, 3]], k=5)[0]  # dtype is a choice
    assert wide.items == expected[0].items and wide.scores == pytest.approx(expected[0].scores, abs=1e-4)


def test_broken_or_foreign_bundles_are_refused(runs: dict[str, Any], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(runs["tiger"]["bundle"], bundle)
    items = bundle / ITEMS_FILE
    items.write_bytes(items.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BundleError, match="items.parquet was modified or corrupted"):
        Recommender.load(bundle)
    meta = json.loads((bundle / META_FILE).read_text())
    (bundle / META_FILE).write_text(json.dumps({**meta, "format": 99, "genrec_lightning": "9.0.0"}))
    with pytest.raises(
        BundleError, match=r"format 99 written by genrec_lightning 9\.0\.0; .* reads format 1"
    ):
        Recommender.load(bundle)
    (bundle / META_FILE).unlink()
    with pytest.raises(BundleError, match="no meta.json: it is not a bundle"):
        Recommender.load(bundle)
    with pytest.raises(BundleError, match="does not exist"):
        Recommender.load(tmp_path / "missing")


def test_bad_requests_say_what_is_wrong(runs: dict[str, Any]) -> None:
    rec = Recommender.load(runs["tiger"]["bundle"])
    with pytest.raises(
        UnknownItemsError, match=r"not in the catalogue \(e\.g\. history 1: \[999999\]\)"
    ) as err:
        rec.recommend([[1, 2], [999999, 3]])
    assert err.value.unknown == {1: [999999]}
    ignored = rec.recommend([[1, 2], [999999, 3]], unknown="ignore")
    assert ignored[1].unknown == [999999] and ignored[1].items == rec.recommend([[3]])[0].items
    assert rec.recommend([["1", "2"]]) == rec.recommend([[1, 2]])  # raw ids as text find the same items
    for bad, message in [
        (lambda: rec.recommend([[]]), "history 0 has no item of the catalogue"),
        (lambda: rec.recommend([[999999]], unknown="ignore"), "has no item of the catalogue"),
        (lambda: rec.recommend([[1]], k=0), "k must be an integer from 1"),
        (lambda: rec.recommend([[1]], k=rec.num_items + 1), "k must be an integer from 1"),
        (lambda: rec.recommend(["1,2"]), "a history must be a list of item ids"),
    ]:
        with pytest.raises(InputError, match=message):
            bad()


def test_seen_items_are_excluded_and_k_items_still_returned(runs: dict[str, Any]) -> None:
    rec = Recommender.load(runs["tiger"]["bundle"])
    _, histories = histories_of_test_users(runs["dm"], 8)
    for history, result in zip(histories, rec.recommend(histories, k=15), strict=True):
        assert len(result.items) == 15 and not set(result.items) & set(history)
        assert result.scores == sorted(result.scores, reverse=True)
    kept = rec.recommend(histories, k=15, exclude_seen=False)
    assert all(len(r.items) == 15 for r in kept)


def test_id_models_and_exports_refuse_what_they_cannot_do(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sasrec = Recommender.load(runs["sasrec"])
    assert len(sasrec.recommend([[1, 2, 3]], k=7)[0].items) == 7
    with pytest.raises(InputError, match="only a model that decodes semantic IDs"):
        sasrec.add_items([123456], embeddings=torch.zeros(1, 8))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    tiger = runs["tiger"]
    for ckpt, output, message in [
        (tiger["best"], occupied, "exists and is not a bundle: choose a new directory"),
        (str(tmp_path / "no.ckpt"), tmp_path / "b", "no.ckpt does not exist"),
        (str(runs["sasrec"] / "model.safetensors"), tmp_path / "b", "is not a Lightning checkpoint"),
        (
            str(runs["teacher_ckpt"]),
            tmp_path / "b",
            "does not fit the GenerativeRecommender the config builds",
        ),
    ]:
        with pytest.raises(SystemExit) as done:
            main(["export", "--config", str(tiger["config"]), "--ckpt_path", ckpt, "--output", str(output)])
        err = capsys.readouterr().err.strip()
        assert done.value.code == 1 and message in err and len(err.splitlines()) == 1, err
    assert (occupied / "notes.txt").read_text() == "mine" and not (tmp_path / "b").exists()
    # `genrec test` with that checkpoint: the same one line instead of torch's key-by-key dump
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as done:
        main(["test", "--config", str(tiger["config"]), "--ckpt_path", str(runs["teacher_ckpt"]), *logs])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 1 and len(err) == 1 and err[0].startswith("genrec: error: checkpoint"), err
    assert "does not fit the GenerativeRecommender the config builds" in err[0] and len(err[0]) < 400


def test_a_model_with_user_tokens_needs_known_users() -> None:
    from functools import partial

    from genrec_lightning.modules.recommender import GenerativeRecommender
    from genrec_lightning.networks.t5 import T5Recommender

    torch.manual_seed(0)
    model = GenerativeRecommender(
        [4, 4], num_items=10, network=partial(T5Recommender, **TINY_T5, num_user_buckets=4)
    )
    model.item_ids.store(torch.tensor([[i // 4, i % 4] for i in range(10)]))
    items = pl.DataFrame(
        {"item": range(10), "item_raw": range(100, 110), "text": [f"t{i}" for i in range(10)]}
    )
    users = pl.DataFrame({"user": [0, 1], "user_raw": ["u0", "u1"]})
    rec = Recommender(model, items, meta={}, config={}, users=users)
    with pytest.raises(InputError, match="reads a user token"):
        rec.recommend([[100, 101]])
    with pytest.raises(InputError, match=r"users \['u9'\] are not in the training data"):
        rec.recommend([[100, 101]], users=["u9"])
    first, second = rec.recommend([[100, 101], [100, 101]], k=5, users=["u0", "u1"])
    assert first.scores != second.scores  # the user token reaches the encoder
    alone = rec.recommend([[100, 101]], k=5, users=["u1"])[0]  # batch of one: the same up to rounding
    assert alone.items == second.items and alone.scores == pytest.approx(second.scores, abs=1e-5)


# ------------------------------------------------------------------------------ new items
@pytest.mark.parametrize("name", ["tiger", "unigrec"])
def test_a_new_item_in_a_favoured_neighbourhood_is_recommended(
    runs: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """A new item with the embedding of the item the model ranks first for a history gets that
    item's raw ID (the next free suffix) and is recommended for that history, scored by the
    likelihood of its prefix shared among the items under it; saved, it stays."""
    bundle = tmp_path / "bundle"
    shutil.copytree(runs[name]["bundle"], bundle)
    rec = Recommender.load(bundle)
    ids = rec.semantic_ids
    assert ids is not None and rec.embeddings is not None
    history = histories_of_test_users(runs["dm"], 1)[1][0]
    top = rec.recommend([history], k=rec.list_length, exclude_seen=False)[0].items
    raw_of = {r: i for i, r in enumerate(rec.items["item_raw"].to_list())}
    uniques, counts = torch.unique(ids.raw_codes, dim=0, return_counts=True)
    group_size = {tuple(c): int(n) for c, n in zip(uniques.tolist(), counts, strict=True)}
    suffixes = rec.model.codebook_sizes[-1]
    liked = next(r for r in top if group_size[tuple(ids.raw_codes[raw_of[r]].tolist())] < suffixes)
    twin = raw_of[liked]
    before = rec.model.item_codes().clone()
    assert 990001 not in top
    added = rec.add_items([990001], embeddings=rec.embeddings[twin : twin + 1])
    assert added["codes"].to_list()[0][:-1] == ids.raw_codes[twin].tolist()  # the liked item's raw ID
    assert torch.equal(rec.model.item_codes()[: len(before)], before)  # nothing served before moved
    after = rec.recommend([history], k=rec.list_length, exclude_seen=False)[0]
    assert 990001 in after.items
    # its score: log p(shared prefix | history) - log(items under that prefix), from exact scoring
    batch = rec._batch([[raw_of[r] for r in history]], torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        prefix = rec.model.id_scores(batch, torch.tensor([twin]), levels=len(before[0]) - 1).item()
    share = group_size[tuple(ids.raw_codes[twin].tolist())] + 1
    assert after.scores[after.items.index(990001)] == pytest.approx(prefix - math.log(share), abs=1e-5)
    trained = [i for i in after.items if i != 990001]
    assert trained == [i for i in top if i in trained]  # the trained items keep their order
    rec.save()
    reloaded = Recommender.load(bundle)
    assert reloaded.num_items == len(before) + 1 and reloaded.meta["added_items"] == 1
    assert reloaded.recommend([history], k=rec.list_length, exclude_seen=False)[0] == after
    assert reloaded.texts([990001]) == ["Item 990001"]


def test_adding_items_refuses_bad_input_and_changes_nothing(runs: dict[str, Any], tmp_path: Path) -> None:
    rec = Recommender.load(runs["tiger"]["bundle"])
    ids = rec.semantic_ids
    assert ids is not None and rec.embeddings is not None
    size = rec.num_items
    groups, counts = torch.unique(ids.raw_codes, dim=0, return_counts=True)
    crowded = groups[counts.argmax()]  # a raw ID whose suffixes are all taken
    member = int((ids.raw_codes == crowded).all(1).nonzero()[0])
    raw_first = rec.items["item_raw"][0]
    for call, message in [
        (lambda: rec.add_items([raw_first], embeddings=rec.embeddings[:1]), "must be new and distinct"),
        (lambda: rec.add_items([7, 7], embeddings=rec.embeddings[:2]), "must be new and distinct"),
        (lambda: rec.add_items([990001], embeddings=torch.zeros(1, 3)), r"must have shape \(1, 8\)"),
        (lambda: rec.add_items([990001]), "texts or their embeddings"),
        (lambda: rec.add_items(["a"], embeddings=rec.embeddings[:1]), "item ids are integers"),
        (lambda: rec.add_items([990001], embeddings=rec.embeddings[member : member + 1]), "suffix level has"),
    ]:
        with pytest.raises(InputError, match=message):
            call()
        assert rec.num_items == size and rec.model.item_codes().shape[0] == size


def test_new_items_from_text_use_the_bundle_encoder(runs: dict[str, Any]) -> None:
    """The text of a trained item, encoded again by the bundle's encoder, lands on its raw ID."""
    rec = Recommender.load(runs["tiger"]["bundle"])
    ids = rec.semantic_ids
    assert ids is not None and rec.meta["encoder"]["class_path"] == "conftest.HashEncoder"
    uniques, counts = torch.unique(ids.raw_codes, dim=0, return_counts=True)
    roomy = {
        tuple(c)
        for c, n in zip(uniques.tolist(), counts.tolist(), strict=True)
        if n < rec.model.codebook_sizes[-1]
    }
    item = next(i for i, c in enumerate(ids.raw_codes.tolist()) if tuple(c) in roomy)
    text = rec.items["text"][item]
    added = rec.add_items([990002], texts=[text])
    assert added["codes"].to_list()[0][:-1] == ids.raw_codes[item].tolist()
    assert rec.texts([990002]) == [text] and rec.known("990002")


# ------------------------------------------------------------------------------ command line
def test_recommend_prints_items_with_their_texts(runs: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    bundle = str(runs["tiger"]["bundle"])
    main(["recommend", bundle, "--history", "1,2,3", "--k", "4"])
    lines = capsys.readouterr().out.strip().splitlines()
    rec = Recommender.load(bundle)
    expected = rec.recommend([[1, 2, 3]], k=4)[0]
    assert lines[0] == "history: 1, 2, 3" and len(lines) == 5
    for line, item, text in zip(lines[1:], expected.items, rec.texts(expected.items), strict=True):
        assert str(item) in line and line.endswith(text)
    main(["recommend", bundle, "--history", "1,2,3", "--k", "4", "--json"])
    row = json.loads(capsys.readouterr().out)
    assert [r["item"] for r in row["items"]] == expected.items
    with pytest.raises(SystemExit) as done:
        main(["recommend", bundle, "--history", "1,999999"])
    assert done.value.code == 1 and "not in the catalogue" in capsys.readouterr().err


# ------------------------------------------------------------------------------ HTTP server
def test_server_answers_with_a_real_http_client(runs: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("litserve", reason="the `serve` extra (make install has it)")
    bundle = runs["tiger"]["bundle"]
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (open for the server's lifetime)
    command = [sys.executable, "-m", "genrec_lightning", "serve", str(bundle), "--port", str(port),
               "--max_batch_size", "8", "--batch_timeout", "0.05"]  # fmt: skip
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_healthy(base, server, timeout=120)
        except RuntimeError as err:
            pytest.fail(f"{err}: {(tmp_path / 'server.log').read_text()[-2000:]}")
        rec = Recommender.load(bundle)
        _, histories = histories_of_test_users(runs["dm"], 12)
        with ThreadPoolExecutor(max_workers=12) as pool:  # concurrent requests share batches
            answers = list(
                pool.map(lambda h: post_json(f"{base}/recommend", {"history": h, "k": 5}), histories)
            )
        for (status, body), expected in zip(answers, rec.recommend(histories, k=5), strict=True):
            assert status == 200 and body["items"] == expected.items
            assert body["scores"] == pytest.approx(expected.scores, abs=1e-6)
        for body, message in [
            ({"history": [1, 999999]}, "not in the catalogue"),
            ({"history": []}, "history is empty"),
            ({"history": [1], "k": 0}, "k must be an integer from 1"),
            ({"history": [1], "k": 10**6}, "k must be an integer from 1"),
            ({"history": "1,2"}, "history must be a list"),
            ({"items": [1]}, "unknown field"),
        ]:
            status, answer = post_json(f"{base}/recommend", body)
            assert 400 <= status < 500 and message in answer["detail"], (body, status, answer)
        status, answer = post_json(f"{base}/recommend", {"history": [1, 999999], "unknown": "ignore"})
        assert status == 200 and answer["unknown"] == [999999]
    finally:
        server.terminate()  # SIGTERM, as a container stop sends: a clean exit that leaves no worker behind
        code = server.wait(timeout=60)
        log.close()
        deadline, left = time.monotonic() + 20, True
        while left and time.monotonic() < deadline:
            try:
                os.killpg(server.pid, 0)  # the server's process group still has a member
                time.sleep(0.5)
            except ProcessLookupError:
                left = False
        if left:
            os.killpg(server.pid, signal.SIGKILL)
    assert code == 0 and not left, f"the server exited {code} and left processes: {left}"
