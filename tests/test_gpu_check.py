"""benchmarks/gpu_check.py: the dry run's steps, parsing and report; a failing, a timed-out and an
over-budget step; the GPU run's commands against the real parsers of genrec and the scripts."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import runpy
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from genrec_lightning.cli import GenRecCLI
from genrec_lightning.pipeline import teacher_parser, tokenizer_parser

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check
_spec.loader.exec_module(gpu_check)  # type: ignore[union-attr]

#: The main dry run's steps (about a minute on a loaded 2-core CPU); rqkmeans runs in the failure
#: test, unigrec-bf16 and throughput (a minute more) in the slow test of every step.
FAST_STEPS = "environment,gpu-tests,tiger-bf16,beam-search"


def table_status(report: str, step: str) -> str:
    """The status cell of a step's row in the report's table."""
    rows = [line for line in report.splitlines() if line.startswith(f"| {step} |")]
    assert len(rows) == 1, f"{step} has {len(rows)} rows in the table"
    return rows[0].split("|")[2].strip()


def section(report: str, step: str) -> str:
    match = re.search(rf"^## {re.escape(step)}\n(.*?)(?=^## |\Z)", report, re.MULTILINE | re.DOTALL)
    assert match, f"no section for {step}"
    return match.group(1)


def figure(report: str, step: str, key: str) -> str:
    match = re.search(rf"^- {re.escape(key)}: (.*)$", section(report, step), re.MULTILINE)
    assert match, f"{step} reports no '{key}'"
    return match.group(1)


def dry_run_args(output: Path, cache: Path, steps: str, *extra: str) -> list[str]:
    """A dry run with ten times the GPU run's time limits: the suite may share a loaded CPU."""
    scaled = ["--timeout-scale", "10", "--budget", "4800"]
    return [
        "--dry-run",
        "--output",
        str(output),
        "--cache-dir",
        str(cache),
        "--steps",
        steps,
        *scaled,
        *extra,
    ]


@pytest.fixture(scope="module")
def dry_run(ml100k_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu-check")
    code = gpu_check.main(dry_run_args(out, ml100k_cache, FAST_STEPS))
    return {"code": code, "out": out, "report": (out / "gpu_report.md").read_text()}


def test_dry_run_passes_every_step_and_reports_the_parsed_figures(dry_run: dict[str, Any]) -> None:
    report, out = dry_run["report"], dry_run["out"]
    assert dry_run["code"] == 0
    for step in FAST_STEPS.split(","):
        assert table_status(report, step) == "passed"
        log = (out / "logs" / f"{step}.log").read_text()
        assert log.startswith("$ ") and "[gpu_check: exit code 0 after" in log
    assert "| unigrec-bf16 |" not in report and "## ddp-2gpu" not in report  # not selected
    assert "mode: DRY RUN" in report and "total wall time:" in report
    assert f"command: `python benchmarks/gpu_check.py --dry-run --output {out}" in report
    assert figure(report, "environment", "torch").startswith(torch.__version__)
    assert int(figure(report, "gpu-tests", "gpu tests collected")) >= 2  # test_precision, test_tokenizers

    ndcg = float(figure(report, "tiger-bf16", "test NDCG@10"))
    assert 0.0 <= ndcg <= 1.0 and 0.0 <= float(figure(report, "tiger-bf16", "test Recall@10")) <= 1.0
    run = Path(figure(report, "tiger-bf16", "run"))
    saved = json.loads((run / "test_metrics.json").read_text())["metrics"]["test/ndcg@10"]
    assert f"{saved:.4f}" == f"{ndcg:.4f}"
    assert "samples/s" in figure(report, "tiger-bf16", "training")
    # The paper-size config with the CPU preset layered under the step's own options.
    command = section(report, "tiger-bf16")
    assert "configs/tiger_curriculum.yaml --config" in command and "--trainer.precision bf16-mixed" in command

    for beam in gpu_check.BEAMS:
        assert figure(report, "beam-search", f"beam {beam} identical lists").startswith(
            "True (100.0% of users"
        )
        assert figure(report, "beam-search", f"beam {beam} valid items, no duplicates") == "True"
        assert "speed-up" in figure(report, "beam-search", f"beam {beam}")


def test_a_failing_step_shows_its_log_tail_and_later_steps_still_run(
    ml100k_cache: Path, tmp_path: Path
) -> None:
    args = dry_run_args(tmp_path, ml100k_cache, "environment,rqkmeans", "--inject-failure", "environment")
    code = gpu_check.main(args)
    report = (tmp_path / "gpu_report.md").read_text()
    assert code == 1
    assert table_status(report, "environment") == "failed (exit 3)"
    failed = section(report, "environment")
    assert "Last 15 lines of the log" in failed and "injected failure" in failed
    assert table_status(report, "rqkmeans") == "passed"
    assert figure(report, "rqkmeans", "items whose IDs agree (all levels)") == "100.0%"
    assert "Last 15 lines" not in section(report, "rqkmeans")


def test_a_step_past_its_time_is_stopped_and_reported(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    for timeout, budget in ((1.0, 600.0), (600.0, 1.0)):  # its own timeout, then the budget's end
        step = gpu_check.Step("slow", "sleeps", [sleeper], lambda log, t: gpu_check.Parsed(), timeout, 0)
        result = gpu_check.Result(step)
        start = time.monotonic()
        gpu_check.run_step(result, tmp_path / "slow.log", deadline=start + budget)
        assert result.status == "timed out (after 1 s)" and result.exit_codes == [None]
        assert time.monotonic() - start < 30
        log = (tmp_path / "slow.log").read_text()
        assert "started" in log and "timed out after 1 s" in log
        rendered = gpu_check.render(
            gpu_check.Context(tmp_path, tmp_path, True, 0), [result], [], 0, 1, True, 1
        )
        assert "timed out after 1 s" in section(rendered, "slow")  # its log tail


def test_steps_the_budget_cannot_fit_are_skipped(tmp_path: Path) -> None:
    code = gpu_check.main(["--dry-run", "--output", str(tmp_path), "--steps", "environment,gpu-tests",
                           "--budget", "5"])  # fmt: skip
    report = (tmp_path / "gpu_report.md").read_text()
    assert code == 0  # nothing ran, so nothing failed
    assert table_status(report, "environment") == table_status(report, "gpu-tests") == "skipped (budget)"
    assert not list((tmp_path / "logs").iterdir())
    # --timeout-scale stretches what a step needs as well as its limit: 60 s fit one step at
    # scale 1 but not at scale 1000
    scaled = tmp_path / "scaled"
    argv = ["--dry-run", "--output", str(scaled), "--steps", "environment", "--budget", "60"]
    assert gpu_check.main([*argv, "--timeout-scale", "1000"]) == 0
    assert table_status((scaled / "gpu_report.md").read_text(), "environment") == "skipped (budget)"
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args([*argv, "--timeout-scale", "0"])
    assert exit_info.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_and_without_dry_run_it_stops_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = gpu_check.main(["--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--dry-run" in err[0]
    assert not (tmp_path / "out").exists()


def test_parsers_flag_what_a_gpu_run_must_not_hide() -> None:
    passed = gpu_check.parse_pytest("..\n2 passed, 605 deselected in 41.20s\n", dry_run=False)
    assert passed.figures["passed"] == "2" and not passed.problems
    assert gpu_check.parse_pytest("ss\n2 skipped, 605 deselected in 9.0s\n", dry_run=False).problems
    payload = {"python": "3.11", "torch": "2.13.0", "cuda": None, "cudnn": None, "lightning": "2.6",
               "transformers": "5", "gpus": [], "bf16_supported": False, "faiss": "1.15", "faiss_gpus": 0,
               "nccl": False}  # fmt: skip
    log = gpu_check.RESULT_PREFIX + json.dumps(payload)
    assert gpu_check.parse_environment(log, dry_run=False).problems == [
        "torch sees no CUDA device",
        "torch.cuda.is_bf16_supported() is False",
    ]
    columns = ["module", "config", "samples/step", "params (M)", "samples/s", "s/step", "peak RSS (GiB)"]
    table = "| " + " | ".join([*columns, "peak CUDA (GiB)"]) + " |"
    throughput = "".join(
        f"$ train_throughput.py --precision {p}\naccelerator gpu, precision {p}, T5 preset none, 20 timed "
        f"steps after 5, torch threads 16\n{table}\n|---|---|---|---|---|---|---|---|\n"
        "| TIGER | `configs/tiger.yaml` | 256 | 4.60 | 21,000 | 0.012 | 2.10 | 0.85 |\n"
        "| SASRec | `configs/sasrec.yaml` | failed: ['RuntimeError: CUDA error'] |\n"
        for p in gpu_check.PRECISIONS
    )
    parsed = gpu_check.parse_throughput(throughput, ["TIGER", "SASRec"])
    assert parsed.figures["TIGER, bf16-mixed"].startswith("21,000 samples/s")
    assert "peak CUDA 0.85 GiB" in parsed.figures["TIGER, 32-true"]
    assert len(parsed.problems) == 2 and all("CUDA error" in p for p in parsed.problems)
    beam = ("$ beam_search.py --beam 20\nours 900.0 users/s\nHF 80.0 users/s\nspeed-up 11.2x\n"
            "identical top-20 lists: False (98.4% of users); max |score gap| 3.1e-02\n"
            "every returned ID is a real item, no duplicates: True\n")  # fmt: skip
    problems = gpu_check.parse_beam_search(beam).problems
    assert problems[0] == "beam 20: top-20 lists differ from HF generate for some users"
    assert problems[1] == "beam 30: output incomplete (see the log)"


class _Parsed(Exception):
    """Raised by the patched parse_args once a script has parsed its options."""


def script_options(command: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The options a benchmark script's own argparse parser makes of `command` (nothing runs)."""
    seen: dict[str, argparse.Namespace] = {}
    real = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        seen["args"] = real(self, args, namespace)  # exits 2 on a misspelt option or a bad choice
        raise _Parsed

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
        patch.setattr(sys, "argv", command[1:])
        patch.syspath_prepend(str(ROOT / "benchmarks"))
        with pytest.raises(_Parsed):
            runpy.run_path(command[1], run_name="__main__")
    return seen["args"]


def test_gpu_run_commands_parse_with_the_real_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command of a 2-GPU run, checked by the parser that will read it (nothing is trained)."""
    ctx = gpu_check.Context(tmp_path, tmp_path / "cache", dry_run=False, num_gpus=2)
    steps = {step.name: step for step in gpu_check.plan(ctx, gpu_check.STEP_NAMES)}
    assert list(steps) == list(gpu_check.STEP_NAMES) and steps["ddp-2gpu"].skip is None
    for name, devices, max_steps in (("tiger-bf16", 1, 300), ("unigrec-bf16", 1, 50), ("ddp-2gpu", 2, 100)):
        (command,) = steps[name].commands
        with pytest.raises(SystemExit) as done:
            GenRecCLI(args=[*command[command.index("genrec_lightning") + 1 :], "--print_config"])
        assert done.value.code in (0, None)
        trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
        assert (trainer["accelerator"], trainer["precision"]) == ("gpu", "bf16-mixed")
        assert str(trainer["devices"]) == str(devices)
        assert trainer["max_steps"] == trainer["val_check_interval"] == max_steps
    pretrain, teacher = sorted((tmp_path / "configs").glob("*.yaml"), key=lambda p: "sasrec" in p.name)
    assert tokenizer_parser().parse_args(["--config", str(pretrain)]).trainer.max_epochs == 100
    sizes = ["--model.init_args.num_items=10", "--model.init_args.max_history=20"]
    assert teacher_parser().parse_args(["--config", str(teacher), *sizes]).trainer.max_epochs == 1

    assert steps["gpu-tests"].commands[0][-2:] == ["-m", "gpu"]
    for command in steps["environment"].commands + steps["rqkmeans"].commands:
        assert gpu_check.parse_args(command[2:]).worker in ("environment", "rqkmeans")
    runs = [script_options(c, monkeypatch) for c in steps["throughput"].commands]
    assert {(r.accelerator, r.precision, r.preset) for r in runs} == {
        ("gpu", p, "none") for p in gpu_check.PRECISIONS
    }
    assert runs[0].modules == list(gpu_check.THROUGHPUT_MODULES)
    beams = [script_options(c, monkeypatch) for c in steps["beam-search"].commands]
    assert [(b.device, b.beam) for b in beams] == [("cuda", 20), ("cuda", 30)]


@pytest.mark.slow
def test_full_dry_run_exercises_every_cpu_step(ml100k_cache: Path, tmp_path: Path) -> None:
    code = gpu_check.main(dry_run_args(tmp_path, ml100k_cache, ",".join(gpu_check.STEP_NAMES)))
    report = (tmp_path / "gpu_report.md").read_text()
    assert code == 0
    for step in gpu_check.STEP_NAMES[:-1]:
        assert table_status(report, step) == "passed", section(report, step)
    assert table_status(report, "ddp-2gpu") == "skipped (0 GPUs)"
    assert 0.0 <= float(figure(report, "unigrec-bf16", "test NDCG@10")) <= 1.0
    assert "train/cd_tokenizer" in figure(report, "unigrec-bf16", "training losses finite")
    for precision in gpu_check.PRECISIONS:
        assert "samples/s" in figure(report, "throughput", f"TIGER, {precision}")
