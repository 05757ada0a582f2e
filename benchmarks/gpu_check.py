"""GPU proof: one unattended run that exercises every GPU path of the project and writes one report.

Nothing in genrec_lightning had run on a GPU: the bf16 paths, the constrained beam search on CUDA,
faiss-gpu k-means, DDP with NCCL and the `@pytest.mark.gpu` tests. A lent CUDA machine gives a
session about 15 minutes of device time and at most 10 minutes per command, so this is one
prepared script that runs in under 8 minutes on one GPU from a fresh checkout. Each step is a
subprocess with its own timeout and log (`<output>/logs/<step>.log`); a failing or timed-out step
does not stop the others; the whole run keeps to `--budget` seconds (a step that would start with
too little time left is "skipped (budget)"); `<output>/gpu_report.md` is rewritten atomically
after every step, so a run killed at the 10-minute limit still leaves the report of what finished.
The exit code is 0 only when every step that ran passed.

On a CUDA machine, from a fresh checkout: a CUDA build of torch 2.13.0 first (the build for the
driver; `make install` keeps it, as constraints.txt pins torch==2.13.0), then the install, then
the README's swap of faiss-cpu for the `gpu` extra's faiss-gpu, then the check:

    python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
    make install
    .venv/bin/pip install -e ".[gpu]" && .venv/bin/pip uninstall -y faiss-cpu \\
        && .venv/bin/pip install --force-reinstall --no-deps faiss-gpu
    .venv/bin/python benchmarks/gpu_check.py --output runs/gpu_check

Steps (`--steps a,b` selects some; they always run in this order):

    environment   torch/CUDA/cuDNN, GPUs and memory, bf16 support, faiss version and GPUs, NCCL
    gpu-tests     pytest -q -m gpu (tests/test_precision.py, tests/test_tokenizers.py)
    tiger-bf16    genrec fit configs/tiger_curriculum.yaml (paper-size T5), bf16-mixed, 300 steps,
                  one validation, then the test: NDCG@10 / Recall@10 and training samples/s
    unigrec-bf16  genrec fit configs/unigrec.yaml, bf16-mixed, 50 steps, stage 1 and the SASRec
                  teacher shortened, one-batch validation and test
    throughput    benchmarks/train_throughput.py on the GPU in 32-true and bf16-mixed
    beam-search   benchmarks/beam_search.py --device cuda, beams 20 and 30: ours vs HF generate
    rqkmeans      RQ-KMeans IDs of the ML-100K item embeddings with GPU faiss vs CPU faiss
    ddp-2gpu      a short 2-process DDP (NCCL) genrec fit; "skipped (1 GPU)" on one GPU

Without a GPU, `--dry-run` runs the same machinery and report with every command swapped for a
tiny CPU version (random semantic IDs and a hash text encoder in `--cache-dir`, so no tokenizer is
trained and no text is encoded): it checks the plumbing, the spelling of every command and the
parsing, not the GPU.

    python benchmarks/gpu_check.py --dry-run --output runs/gpu_check_dry
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from genrec_lightning.artifacts import atomic_file
from genrec_lightning.data.embeddings import SentenceTransformerEncoder

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
CONFIGS = ROOT / "configs"
STEP_NAMES = (
    "environment",
    "gpu-tests",
    "tiger-bf16",
    "unigrec-bf16",
    "throughput",
    "beam-search",
    "rqkmeans",
    "ddp-2gpu",
)
#: Steps that read the ML-100K cache (a dry run prepares random IDs and hash embeddings for them).
DATA_STEPS = {"tiger-bf16", "unigrec-bf16", "throughput", "beam-search", "rqkmeans", "ddp-2gpu"}
RESULT_PREFIX = "GPU_CHECK_RESULT "
TAIL_LINES = 15
REPORT_NAME = "gpu_report.md"
#: ML-100K as every shipped config reads it (the data hash depends on these settings).
ML100K = {"variant": "100k", "text_fields": ["title", "genres"]}
#: Modules timed by the throughput step (names of benchmarks/train_throughput.py's MODULES).
THROUGHPUT_MODULES = ("TIGER", "TIGER + curriculum", "SASRec")
PRECISIONS = ("32-true", "bf16-mixed")
BEAMS = (20, 30)


class DryRunEncoder(SentenceTransformerEncoder):
    """Text -> vector by hashing, the dry run's stand-in for the sentence encoder (no model load)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__(model="gpu-check-hash", show_progress=False)
        self.dim = dim

    def config(self) -> dict[str, Any]:
        return {**super().config(), "dim": self.dim}

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = [np.frombuffer(hashlib.sha512(t.encode()).digest()[: self.dim], np.uint8) for t in texts]
        vectors = np.stack(rows).astype(np.float32) / 255.0 - 0.5
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-6)


# ----------------------------------------------------------------------------------- steps
@dataclass
class Parsed:
    """What a step's parser found: figures for the report, a one-line summary, failed checks."""

    figures: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class Step:
    """One check: its commands (run in order, one log), limits and the parser of its log."""

    name: str
    purpose: str
    commands: list[list[str]]
    parse: Callable[[str, float], Parsed]
    timeout: float
    min_seconds: float
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Result:
    """The outcome of one step, as the report shows it."""

    step: Step
    status: str = "pending"
    wall_s: float | None = None
    exit_codes: list[int | None] = field(default_factory=list)
    parsed: Parsed = field(default_factory=Parsed)
    log: Path | None = None

    @property
    def ran(self) -> bool:
        return not self.status.startswith(("pending", "skipped"))

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class Context:
    """Settings every step builder needs."""

    output: Path
    cache_dir: Path
    dry_run: bool
    num_gpus: int
    ids: Path | None = None  # dry run: the random semantic-ID artifact
    preset: Path | None = None  # dry run: the CPU preset + dry-run data, for train_throughput.py

    @property
    def runs(self) -> Path:
        return self.output / "runs"

    @property
    def default_cache(self) -> bool:
        return self.cache_dir == (ROOT / "data" / "cache").resolve()


class Interrupted(Exception):
    """SIGTERM/SIGINT reached the orchestrator (e.g. the device's 10-minute limit)."""


def _on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def python() -> list[str]:
    """This interpreter, for the scripts."""
    return [sys.executable]


def genrec(*args: str) -> list[str]:
    """`genrec ...` with this interpreter (DDP ranks re-run it with `-m`)."""
    return [sys.executable, "-m", "genrec_lightning", *args]


def this_script(*args: str) -> list[str]:
    """This file as a worker process (the inline Python steps)."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


def scripts_cwd(ctx: Context) -> Path:
    """Where benchmark scripts without a cache option run: the repo, or a folder whose `data/cache`
    and `configs` link to the chosen cache and the repo's configs."""
    if ctx.default_cache:
        return ROOT
    work = ctx.output / "workdir"
    (work / "data").mkdir(parents=True, exist_ok=True)
    for link, target in ((work / "data" / "cache", ctx.cache_dir), (work / "configs", CONFIGS)):
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    return work


def fit_command(ctx: Context, config: str, name: str, *, steps: int, devices: int = 1) -> list[str]:
    """A short `genrec fit` of `config` in bf16-mixed that validates once, at its last step, then
    tests; in a dry run on CPU with the CPU preset layered and the dry-run data."""
    command = genrec("fit", "--config", str(CONFIGS / config))
    if ctx.dry_run:  # layered before the options below, which must win over it
        command += ["--config", str(CONFIGS / "presets" / "cpu.yaml")]
    command += [
        "--trainer.accelerator", "cpu" if ctx.dry_run else "gpu",
        "--trainer.devices", str(devices),
        "--trainer.precision", "bf16-mixed",
        "--trainer.max_steps", str(steps),
        "--trainer.max_epochs", "1",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.val_check_interval", str(steps),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(ctx.runs),
        "--trainer.logger.init_args.name", name,
        "--model.init_args.optimization.warmup_steps", str(max(1, steps // 10)),
        "--data.init_args.cache_dir", str(ctx.cache_dir),
    ]  # fmt: skip
    if ctx.dry_run:
        command += [
            "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1",
            "--trainer.log_every_n_steps", "1",
            "--data.init_args.batch_size", "64",
            "--data.init_args.eval_batch_size", "32",
            "--data.init_args.encoder", "gpu_check.DryRunEncoder",
        ]  # fmt: skip
    return command


def short_stage_configs(ctx: Context) -> tuple[Path, Path]:
    """UniGRec's stage-1 and teacher YAMLs, shortened (GPU: 100 of 1000 epochs, 1 of 10 teacher
    epochs; dry run: tiny networks and a few batches), written to `<output>/configs/`."""
    pretrain = yaml.safe_load((CONFIGS / "unigrec_pretrain.yaml").read_text())
    teacher = yaml.safe_load((CONFIGS / "sasrec.yaml").read_text())
    for cfg in (pretrain, teacher):
        cfg["trainer"]["enable_progress_bar"] = False
        cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(ctx.runs)
    if ctx.dry_run:
        tok = pretrain["model"]["init_args"]["tokenizer"]["init_args"]
        tok["hidden_dims"], tok["latent_dim"] = [16], 8
        tok["quantizer"]["init_args"].update(num_levels=2, codebook_size=16)
        pretrain["trainer"].update(max_epochs=2, check_val_every_n_epoch=2)
        teacher["model"]["init_args"]["network"]["init_args"]["hidden_dim"] = 16
        teacher["trainer"].update(max_epochs=1, limit_train_batches=5, limit_val_batches=1)
    else:
        pretrain["trainer"].update(max_epochs=100, check_val_every_n_epoch=50)
        teacher["trainer"].update(max_epochs=1)
    folder = ctx.output / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "unigrec_pretrain_short.yaml", folder / "sasrec_short.yaml"
    for path, cfg in zip(paths, (pretrain, teacher), strict=True):
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def plan(ctx: Context, selected: Sequence[str]) -> list[Step]:
    """The selected steps with their commands (GPU versions, or tiny CPU ones in a dry run)."""
    dry = ctx.dry_run
    builders: dict[str, Callable[[Context], Step]] = {
        "environment": environment_step,
        "gpu-tests": gpu_tests_step,
        "tiger-bf16": tiger_step,
        "unigrec-bf16": unigrec_step,
        "throughput": throughput_step,
        "beam-search": beam_search_step,
        "rqkmeans": rqkmeans_step,
        "ddp-2gpu": ddp_step,
    }
    steps = [builders[name](ctx) for name in STEP_NAMES if name in selected]
    if dry:
        for step in steps:
            step.env.setdefault(
                "PYTHONPATH", os.pathsep.join(filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
            )
    for step in steps:
        step.env.setdefault("PYTHONUNBUFFERED", "1")
    return steps


def environment_step(ctx: Context) -> Step:
    worker = this_script("--worker", "environment", *(["--dry-run"] if ctx.dry_run else []))
    return Step(
        "environment",
        "versions, GPUs, bf16 support, faiss GPUs, NCCL",
        [worker],
        lambda log, started: parse_environment(log, ctx.dry_run),
        timeout=90,
        min_seconds=10,
    )


def gpu_tests_step(ctx: Context) -> Step:
    base = [*python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu"]
    command = [*base, "--collect-only"] if ctx.dry_run else base
    return Step(
        "gpu-tests",
        "the @pytest.mark.gpu tests" + (" (collected only in a dry run)" if ctx.dry_run else ""),
        [command],
        lambda log, started: parse_pytest(log, ctx.dry_run),
        timeout=240,
        min_seconds=30,
    )


def tiger_step(ctx: Context) -> Step:
    steps = 2 if ctx.dry_run else 300
    command = fit_command(ctx, "tiger_curriculum.yaml", "tiger_bf16", steps=steps)
    if ctx.dry_run:
        command += ["--data.init_args.semantic_ids_from", str(ctx.ids)]
    notes = [
        f"{steps} optimiser steps, warm-up {max(1, steps // 10)}, one validation at the last step, "
        "then the test of the best checkpoint"
    ]
    if not ctx.dry_run:
        notes.append(
            "on a fresh cache this includes encoding the item texts and training the "
            "RQ-VAE IDs of configs/tokenizers/rqvae_4x256.yaml (the paper's layout) on the GPU"
        )
    return Step(
        "tiger-bf16",
        "TIGER + curriculum (paper-size T5) in bf16-mixed: fit, validation, test",
        [command],
        lambda log, started: parse_fit(
            ctx.runs / "tiger_bf16", started, batch_size=64 if ctx.dry_run else 256
        ),
        timeout=330,
        min_seconds=90,
        notes=notes,
    )


def unigrec_step(ctx: Context) -> Step:
    steps = 2 if ctx.dry_run else 50
    pretrain, teacher = short_stage_configs(ctx)
    command = fit_command(ctx, "unigrec.yaml", "unigrec_bf16", steps=steps)
    command += ["--data.init_args.semantic_ids_from", str(pretrain),
                "--data.init_args.teacher_from", str(teacher),
                "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]  # fmt: skip
    what = (
        "tiny networks, a few batches"
        if ctx.dry_run
        else "stage 1 100 of 1000 epochs, teacher 1 of 10 epochs"
    )
    return Step(
        "unigrec-bf16",
        "UniGRec joint module in bf16-mixed (stage 1 and teacher built first)",
        [command],
        lambda log, started: parse_fit(
            ctx.runs / "unigrec_bf16", started, batch_size=64 if ctx.dry_run else 512, unigrec=True
        ),
        timeout=240,
        min_seconds=60,
        notes=[
            f"{steps} optimiser steps; stage-1 tokenizer and SASRec teacher shortened ({what}): "
            f"{pretrain}, {teacher}",
            "validation and test limited to one batch",
        ],  # fmt: skip
    )


def throughput_step(ctx: Context) -> Step:
    script = str(BENCHMARKS / "train_throughput.py")
    if ctx.dry_run:
        common = ["--preset", str(ctx.preset), "--accelerator", "cpu", "--modules", "TIGER",
                  "--warmup", "0", "--steps", "1"]  # fmt: skip
        modules = ("TIGER",)
    else:
        common = ["--preset", "none", "--accelerator", "gpu", "--modules", *THROUGHPUT_MODULES,
                  "--warmup", "5", "--steps", "20"]  # fmt: skip
        modules = THROUGHPUT_MODULES
    commands = [[*python(), script, *common, "--precision", p] for p in PRECISIONS]
    return Step(
        "throughput",
        "training samples/s and peak memory per module, 32-true and bf16-mixed",
        commands,
        lambda log, started: parse_throughput(log, modules),
        timeout=200,
        min_seconds=40,
        cwd=scripts_cwd(ctx),
    )


def beam_search_step(ctx: Context) -> Step:
    script = str(BENCHMARKS / "beam_search.py")
    if ctx.dry_run:
        common = ["--device", "cpu", "--users", "4", "--repeats", "1", "--tokenizer", str(ctx.ids),
                  "--preset", str(CONFIGS / "presets" / "cpu.yaml")]  # fmt: skip
    else:
        common = ["--device", "cuda", "--users", "256"]
    return Step(
        "beam-search",
        "constrained beam search: ours vs HF generate, identical lists",
        [[*python(), script, *common, "--beam", str(beam)] for beam in BEAMS],
        lambda log, started: parse_beam_search(log),
        timeout=150,
        min_seconds=30,
        cwd=scripts_cwd(ctx),
        notes=["random-init paper-size T5 (CPU preset T5 in a dry run)"],
    )


def rqkmeans_step(ctx: Context) -> Step:
    worker = this_script(
        "--worker", "rqkmeans", "--cache-dir", str(ctx.cache_dir), *(["--dry-run"] if ctx.dry_run else [])
    )
    notes = [
        "the project's RQKMeans (configs/tokenizers/rqkmeans.yaml settings) fitted twice, with "
        "faiss on the GPU and forced onto the CPU; near-ties can give other codes"
    ]
    if ctx.dry_run:
        notes = ["dry run: both fits on CPU faiss, 300 items, 2 levels x 16 codes"]
    return Step(
        "rqkmeans",
        "RQ-KMeans IDs with GPU faiss vs CPU faiss",
        [worker],
        lambda log, started: parse_result_line(log, rqkmeans_figures),
        timeout=150,
        min_seconds=20,
        notes=notes,
    )


def ddp_step(ctx: Context) -> Step:
    command = fit_command(ctx, "tiger_curriculum.yaml", "tiger_ddp", steps=100, devices=2)
    command += ["--trainer.strategy", "ddp"]
    skip = None if ctx.num_gpus >= 2 else f"skipped ({ctx.num_gpus} GPU{'' if ctx.num_gpus == 1 else 's'})"
    return Step(
        "ddp-2gpu",
        "2-process DDP (NCCL) TIGER fit and test",
        [command],
        lambda log, started: parse_fit(ctx.runs / "tiger_ddp", started, batch_size=512),
        timeout=240,
        min_seconds=60,
        skip=skip,
        notes=["100 optimiser steps on 2 GPUs, one validation, then the test"],
    )


# --------------------------------------------------------------------------------- parsers
def _fmt(value: float, digits: int = 4) -> str:
    """A metric with fixed digits."""
    return f"{value:.{digits}f}"


def result_payload(log: str) -> dict[str, Any] | None:
    """The last `GPU_CHECK_RESULT {json}` line a worker printed."""
    lines = [line for line in log.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX) :]) if lines else None


def parse_result_line(log: str, figures: Callable[[dict[str, Any]], Parsed]) -> Parsed:
    """A worker's result line turned into figures, or a failed check when it is missing."""
    payload = result_payload(log)
    if payload is None:
        return Parsed(problems=["no result line in the log"])
    return figures(payload)


def parse_environment(log: str, dry_run: bool) -> Parsed:
    """Versions and devices; a GPU run fails without a CUDA device or bf16 support."""
    payload = result_payload(log)
    if payload is None:
        return Parsed(problems=["no result line in the log"])
    gpus = payload.get("gpus", [])
    figures = {
        "python": payload["python"],
        "torch": f"{payload['torch']} (CUDA {payload['cuda']}, cuDNN {payload['cudnn']})",
        "lightning / transformers": f"{payload['lightning']} / {payload['transformers']}",
        "GPUs": str(len(gpus)),
    }
    for i, gpu in enumerate(gpus):
        figures[f"GPU {i}"] = (
            f"{gpu['name']}, {gpu['memory_gib']:.1f} GiB, compute capability {gpu['capability']}"
        )
    figures["bf16 supported"] = str(payload["bf16_supported"])
    if payload.get("bf16_matmul_rel_error") is not None:
        figures["bf16 matmul relative error vs fp32"] = f"{payload['bf16_matmul_rel_error']:.2e}"
    figures["faiss"] = f"{payload['faiss']} (GPUs seen by faiss: {payload['faiss_gpus']})"
    figures["NCCL available"] = str(payload["nccl"])
    problems = []
    if not dry_run:
        if not gpus:
            problems.append("torch sees no CUDA device")
        if not payload["bf16_supported"]:
            problems.append("torch.cuda.is_bf16_supported() is False")
    first = f"{gpus[0]['name']} ({gpus[0]['memory_gib']:.0f} GiB)" if gpus else "no GPU"
    summary = (
        f"{first}, bf16 {payload['bf16_supported']}, faiss {payload['faiss']} ({payload['faiss_gpus']} GPUs)"
    )
    return Parsed(figures, summary, problems)


def parse_pytest(log: str, dry_run: bool) -> Parsed:
    """pytest's counts; a GPU run fails when a gpu test is skipped or none passed."""
    if dry_run:
        match = re.search(r"(\d+)(?:/(\d+))? tests? collected", log)
        if not match:
            return Parsed(problems=["no 'collected' line from pytest"])
        selected = int(match.group(1))
        figures = {"gpu tests collected": str(selected)}
        if match.group(2):
            figures["tests in the suite"] = match.group(2)
        problems = [] if selected else ["no test is marked gpu"]
        return Parsed(figures, f"{selected} gpu tests collected", problems)
    summary_lines = [
        line for line in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)
    ]
    if not summary_lines:
        return Parsed(problems=["no pytest summary line"])
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary_lines[-1])}
    figures = {word: str(counts.get(word, 0)) for word in ("passed", "failed", "skipped", "errors")}
    problems = []
    if counts.get("skipped"):
        problems.append(f"{counts['skipped']} gpu test(s) skipped: CUDA not visible to pytest?")
    if not counts.get("passed"):
        problems.append("no gpu test passed")
    return Parsed(figures, summary_lines[-1].strip("= "), problems)


def newest_run(folder: Path, started: float) -> Path | None:
    """The newest `version_*` directory of a logger folder written since `started`."""
    runs = [p for p in folder.glob("version_*") if p.is_dir() and p.stat().st_mtime >= started - 1]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def scalar_series(run: Path) -> dict[str, list[tuple[float, int, float]]]:
    """Every TensorBoard scalar of a run as (wall time, step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.wall_time, e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def parse_fit(folder: Path, started: float, batch_size: int, unigrec: bool = False) -> Parsed:
    """Test metrics from `<log dir>/test_metrics.json`; training speed and losses from TensorBoard."""
    run = newest_run(folder, started)
    if run is None or not (run / "test_metrics.json").is_file():
        return Parsed(problems=[f"no test_metrics.json under {folder} from this run"])
    payload = json.loads((run / "test_metrics.json").read_text())
    metrics = payload["metrics"]
    figures = {"run": str(run)}
    problems = []
    for key in ("test/ndcg@10", "test/recall@10", "test/ndcg@20", "test/recall@20"):
        if key in metrics:
            figures[key.replace("test/", "test ").replace("ndcg", "NDCG").replace("recall", "Recall")] = _fmt(
                metrics[key]
            )
    for key in ("test/ndcg@10", "test/recall@10"):
        value = metrics.get(key)
        if value is None or not (math.isfinite(value) and 0.0 <= value <= 1.0):
            problems.append(f"{key} = {value} is not a number in [0, 1]")
    figures["tested checkpoint"] = str(payload.get("checkpoint") or "final weights")
    try:
        series = scalar_series(run)
    except Exception as err:  # a missing or unreadable event file costs the speed figure only
        series = {}
        figures["TensorBoard"] = f"not readable ({err})"
    loss = series.get("train/loss") or series.get("train/rec_loss") or []
    if len(loss) >= 2 and loss[-1][0] > loss[0][0]:
        steps_per_s = (loss[-1][1] - loss[0][1]) / (loss[-1][0] - loss[0][0])
        figures["training"] = (
            f"{steps_per_s:.2f} steps/s = {steps_per_s * batch_size:,.0f} samples/s "
            f"(steps {loss[0][1]}-{loss[-1][1]}, batch {batch_size}, from TensorBoard wall times)"
        )
    if loss:
        figures["last logged training loss"] = f"{loss[-1][2]:.4f} at step {loss[-1][1]}"
    losses = {tag: values for tag, values in series.items() if tag.startswith("train/") and "loss" in tag}
    if unigrec:
        losses |= {tag: values for tag, values in series.items() if tag.startswith("train/cd_")}
    bad = [tag for tag, values in losses.items() if not all(math.isfinite(v) for _, _, v in values)]
    if bad:
        problems.append(f"non-finite training losses: {', '.join(sorted(bad))}")
    elif losses:
        figures["training losses finite"] = ", ".join(sorted(losses))
    summary = f"NDCG@10 {_fmt(metrics.get('test/ndcg@10', float('nan')))}, Recall@10 " + _fmt(
        metrics.get("test/recall@10", float("nan"))
    )
    if "training" in figures:
        summary += f", {figures['training'].split(' = ')[1].split(' (')[0]}"
    return Parsed(figures, summary, problems)


def command_segments(log: str) -> list[str]:
    """The log split at the `$ command` lines the runner writes before each command."""
    return re.split(r"^\$ ", log, flags=re.MULTILINE)[1:]


def parse_throughput(log: str, modules: Sequence[str]) -> Parsed:
    """samples/s and peak memory per module and precision from train_throughput.py's tables."""
    figures: dict[str, str] = {}
    problems = []
    speeds: dict[str, dict[str, str]] = {}
    for segment in command_segments(log):
        match = re.search(r"precision (\S+),", segment)
        precision = match.group(1) if match else "?"
        for line in segment.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 3 or cells[0] not in modules:
                continue
            name = cells[0]
            if cells[2].startswith("failed"):
                problems.append(f"{name} {precision}: {cells[2]}")
                continue
            if len(cells) >= 8:
                cuda = f"peak CUDA {cells[7]} GiB" if cells[7][:1].isdigit() else "no CUDA"
                figures[f"{name}, {precision}"] = (
                    f"{cells[4]} samples/s, {cells[5]} s/step, batch {cells[2]}, {cells[3]}M params, "
                    f"{cuda}, peak RSS {cells[6]} GiB"
                )
                speeds.setdefault(name, {})[precision] = cells[4]
    for name in modules:
        for precision in PRECISIONS:
            if precision not in speeds.get(name, {}) and not any(
                p.startswith(f"{name} {precision}") for p in problems
            ):
                problems.append(f"no result for {name} in {precision}")
    summary = "; ".join(
        f"{name} " + " / ".join(f"{speeds[name].get(p, '-')}" for p in PRECISIONS) for name in speeds
    )
    return Parsed(figures, (summary + " samples/s (32 / bf16)") if speeds else "", problems)


def parse_beam_search(log: str) -> Parsed:
    """Speed of both decoders per beam; fails unless the lists are identical and valid."""
    figures: dict[str, str] = {}
    problems = []
    parts = []
    segments = command_segments(log)
    for i, beam in enumerate(BEAMS):
        segment = segments[i] if i < len(segments) else ""
        ours = re.search(r"^ours\s+([\d.,]+) users/s", segment, re.MULTILINE)
        hf = re.search(r"^HF\s+([\d.,]+) users/s", segment, re.MULTILINE)
        speedup = re.search(r"^speed-up\s+([\d.]+)x", segment, re.MULTILINE)
        same = re.search(
            r"identical top-(\d+) lists: (True|False) \(([\d.]+)% of users\); max \|score gap\| (\S+)",
            segment,
        )
        valid = re.search(r"every returned ID is a real item, no duplicates: (True|False)", segment)
        if not (ours and hf and speedup and same and valid):
            problems.append(f"beam {beam}: output incomplete (see the log)")
            continue
        figures[f"beam {beam}"] = (
            f"ours {ours.group(1)} users/s, HF {hf.group(1)} users/s, speed-up {speedup.group(1)}x"
        )
        figures[f"beam {beam} identical lists"] = (
            f"{same.group(2)} ({same.group(3)}% of users, max score gap {same.group(4)})"
        )
        figures[f"beam {beam} valid items, no duplicates"] = valid.group(1)
        if same.group(2) != "True":
            problems.append(f"beam {beam}: top-{beam} lists differ from HF generate for some users")
        if valid.group(1) != "True":
            problems.append(f"beam {beam}: invalid or duplicate items returned")
        parts.append(f"beam {beam}: {speedup.group(1)}x, identical {same.group(2)}")
    return Parsed(figures, "; ".join(parts), problems)


def rqkmeans_figures(payload: dict[str, Any]) -> Parsed:
    """Times, ID agreement and quantisation error of the GPU and CPU k-means."""
    figures = {
        "items x dim": f"{payload['items']} x {payload['dim']}",
        "levels x codes, niter": f"{payload['levels']} x {payload['codes']}, {payload['niter']}",
        "faiss GPUs": str(payload["faiss_gpus"]),
        "first fit (GPU side, incl. faiss GPU start-up) s": _fmt(payload["gpu_first_s"], 3),
        "fit + encode on the GPU side s": _fmt(payload["gpu_s"], 3),
        "fit + encode on CPU faiss s": _fmt(payload["cpu_s"], 3),
        "items whose IDs agree (all levels)": f"{payload['agreement']:.1%}",
        "agreement per level": ", ".join(f"{a:.1%}" for a in payload["level_agreement"]),
        "quantisation MSE GPU / CPU": f"{payload['mse_gpu']:.5f} / {payload['mse_cpu']:.5f}",
        "GPU side deterministic (same seed twice)": str(payload["gpu_deterministic"]),
    }
    summary = (
        f"GPU {payload['gpu_s']:.2f} s vs CPU {payload['cpu_s']:.2f} s, IDs agree {payload['agreement']:.1%}"
    )
    return Parsed(figures, summary, [])


# ---------------------------------------------------------------------------------- workers
def emit(payload: dict[str, Any]) -> None:
    """Print a worker's result line (parsed by the step's parser)."""
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def environment_worker(dry_run: bool) -> int:
    """Print the versions and devices this machine offers (one result line)."""
    import faiss
    import lightning
    import torch
    import transformers

    from genrec_lightning.tokenizers.kmeans import faiss_gpus

    cuda = torch.cuda.is_available()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "name": props.name,
                "memory_gib": props.total_memory / 2**30,
                "capability": f"{props.major}.{props.minor}",
            }
        )
    error = None
    if cuda:  # a bf16 matmul on the device, against float32
        a, b = torch.randn(512, 512, device="cuda"), torch.randn(512, 512, device="cuda")
        exact = a @ b
        error = float(((a.bfloat16() @ b.bfloat16()).float() - exact).norm() / exact.norm())
    payload = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "gpus": gpus,
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "bf16_matmul_rel_error": error,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss_gpus(),
        "nccl": bool(torch.distributed.is_available() and torch.distributed.is_nccl_available()),
    }
    emit(payload)
    for key, value in payload.items():
        print(f"{key}: {value}")
    return 0 if (dry_run or gpus) else 1


def rqkmeans_worker(dry_run: bool, cache_dir: Path) -> int:
    """Fit the project's RQKMeans with GPU faiss and with CPU faiss; print times and agreement."""
    import torch

    from genrec_lightning.data.datamodules import MovieLensDataModule

    km = importlib.import_module("genrec_lightning.tokenizers.kmeans")  # the package exports a kmeans()

    settings = yaml.safe_load((CONFIGS / "tokenizers" / "rqkmeans.yaml").read_text())
    args = dict(settings["model"]["init_args"]["tokenizer"]["init_args"])
    encoder = DryRunEncoder() if dry_run else None
    data = MovieLensDataModule(**ML100K, cache_dir=str(cache_dir), encoder=encoder)
    x = data.item_embeddings().float()
    if dry_run:
        x = x[:300]
        args.update(num_levels=2, codebook_size=16, niter=5)
    gpus = km.faiss_gpus()
    if not dry_run and gpus == 0:
        print("faiss sees no GPU: install the gpu extra (faiss-gpu) in place of faiss-cpu", file=sys.stderr)
        return 1
    real_gpus = km.faiss_gpus

    def fit(on_gpu: bool) -> tuple[float, torch.Tensor, float]:
        km.faiss_gpus = real_gpus if (on_gpu and not dry_run) else (lambda: 0)
        try:
            start = time.perf_counter()
            tokenizer = km.RQKMeans(x.shape[1], **args).fit(x)
            codes = tokenizer.encode(x)
            seconds = time.perf_counter() - start
        finally:
            km.faiss_gpus = real_gpus
        mse = float((tokenizer.reconstruct(codes) - x).pow(2).sum(1).mean())
        return seconds, codes, mse

    first_s, first_codes, _ = fit(True)  # includes faiss's GPU start-up
    gpu_s, gpu_codes, mse_gpu = fit(True)
    cpu_s, cpu_codes, mse_cpu = fit(False)
    same = gpu_codes == cpu_codes
    emit(
        {
            "items": int(x.shape[0]),
            "dim": int(x.shape[1]),
            "levels": args["num_levels"],
            "codes": args["codebook_size"],
            "niter": args["niter"],
            "faiss_gpus": gpus,
            "gpu_first_s": first_s,
            "gpu_s": gpu_s,
            "cpu_s": cpu_s,
            "agreement": float(same.all(1).float().mean()),
            "level_agreement": [float(v) for v in same.float().mean(0)],
            "mse_gpu": mse_gpu,
            "mse_cpu": mse_cpu,
            "gpu_deterministic": bool(torch.equal(first_codes, gpu_codes)),
        }
    )
    return 0


# --------------------------------------------------------------------------------- dry run
def prepare_dry_run(ctx: Context) -> None:
    """Preprocessed ML-100K (cached), hash embeddings and random 2-level IDs for the dry run's commands."""
    import torch

    from genrec_lightning.data.datamodules import MovieLensDataModule
    from genrec_lightning.semantic_ids import SemanticIds

    data = MovieLensDataModule(**ML100K, cache_dir=str(ctx.cache_dir), encoder=DryRunEncoder())
    data.build_embeddings()
    ids = ctx.output / "dry_run" / "ids"
    raw = torch.randint(0, 16, (data.num_items, 2), generator=torch.Generator().manual_seed(0))
    SemanticIds.from_codes(raw, 16, dedup="suffix").save(ids, meta=data.semantic_ids_expectation())
    preset = yaml.safe_load((CONFIGS / "presets" / "cpu.yaml").read_text())
    preset["data"] = {
        "init_args": {
            "cache_dir": str(ctx.cache_dir),
            "semantic_ids_from": str(ids),
            "encoder": {"class_path": "gpu_check.DryRunEncoder"},
        }
    }
    path = ctx.output / "dry_run" / "preset.yaml"
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    ctx.ids, ctx.preset = ids, path


# ----------------------------------------------------------------------------------- runner
def _kill(process: subprocess.Popen) -> None:
    """Stop a step's process group: SIGTERM (genrec then saves last.ckpt), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(result: Result, log_path: Path, deadline: float) -> None:
    """Run a step's commands under min(its timeout, the time left) into its log; fill in `result`.

    A signal (`Interrupted`) stops the step's process group, marks the step interrupted and
    propagates.
    """
    step = result.step
    result.log, result.status = log_path, "running"
    start, started_wall = time.monotonic(), time.time()
    limit = min(step.timeout, deadline - start)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    status = None
    with log_path.open("a") as log:  # append mode: the children's writes and ours interleave in order
        for command in step.commands:
            left = limit - (time.monotonic() - start)
            if left <= 0:
                status = f"timed out (after {limit:.0f} s)"
                break
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=step.cwd,
                env={**os.environ, **step.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the whole group (DDP ranks too) can be stopped
            )
            began = time.monotonic()
            try:
                code = process.wait(timeout=left)
            except subprocess.TimeoutExpired:
                _kill(process)
                result.exit_codes.append(None)
                status = f"timed out (after {limit:.0f} s)"
                log.write(f"\n[gpu_check: timed out after {limit:.0f} s, process group stopped]\n")
                break
            except Interrupted as err:
                _kill(process)
                result.exit_codes.append(None)
                result.status, result.wall_s = f"interrupted ({err})", time.monotonic() - start
                raise
            result.exit_codes.append(code)
            log.write(f"[gpu_check: exit code {code} after {time.monotonic() - began:.1f} s]\n")
            log.flush()
    result.wall_s = time.monotonic() - start
    try:
        result.parsed = step.parse(log_path.read_text(errors="replace"), started_wall)
    except Exception as err:  # a parser that trips over odd output must not hide the step
        result.parsed = Parsed(problems=[f"could not parse the output: {type(err).__name__}: {err}"])
    failed = [code for code in result.exit_codes if code]
    if status is None and failed:
        status = f"failed (exit {failed[0]})"
    elif status is None and result.parsed.problems:
        status = "failed (checks)"
    result.status = status or "passed"


# ----------------------------------------------------------------------------------- report
def tail(path: Path | None, lines: int = TAIL_LINES) -> str:
    """The last lines of a log."""
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])


def header_lines(
    ctx: Context,
    results: list[Result],
    argv: Sequence[str],
    started: float,
    elapsed: float,
    finished: bool,
    budget: float,
) -> list[str]:
    """Date, machine, GPU and versions (from the environment step's log), wall time, command."""
    env = next((r for r in results if r.step.name == "environment" and r.ran), None)
    payload = (
        result_payload(env.log.read_text(errors="replace")) if env and env.log and env.log.is_file() else None
    )
    if payload:
        gpus = payload["gpus"]
        gpu = "; ".join(f"{g['name']} ({g['memory_gib']:.1f} GiB)" for g in gpus) or "none"
        gpu += f"; bf16 supported: {payload['bf16_supported']}"
        versions = (
            f"python {payload['python']}, torch {payload['torch']} (CUDA {payload['cuda']}), lightning "
            f"{payload['lightning']}, transformers {payload['transformers']}, faiss {payload['faiss']} "
            f"({payload['faiss_gpus']} GPUs)"
        )
    else:
        gpu, versions = "see the environment step (not run)", f"python {platform.python_version()}"
    mode = "DRY RUN on CPU (plumbing check only, not a GPU proof)" if ctx.dry_run else "GPU run"
    state = "finished" if finished else "in progress"
    return [
        "# GPU check report",
        "",
        f"- mode: {mode}",
        f"- date: {dt.datetime.fromtimestamp(started, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC "
        f"(report updated {dt.datetime.now(dt.timezone.utc):%H:%M:%S} UTC, run {state})",
        f"- machine: {platform.node()}, {platform.platform()}, {os.cpu_count()} CPUs",
        f"- GPU: {gpu}",
        f"- versions: {versions}",
        f"- total wall time: {elapsed:.1f} s (budget {budget:.0f} s)",
        f"- command: `{shlex.join(['python', 'benchmarks/gpu_check.py', *argv])}` (cwd {os.getcwd()})",
        f"- data cache: {ctx.cache_dir}" + (f"; random IDs {ctx.ids}" if ctx.ids else ""),
        "",
    ]


def render(
    ctx: Context,
    results: list[Result],
    argv: Sequence[str],
    started: float,
    elapsed: float,
    finished: bool,
    budget: float,
) -> str:
    """The whole report: header, table of steps, then each step's figures, command and log tail."""
    lines = header_lines(ctx, results, argv, started, elapsed, finished, budget)
    lines += ["| step | status | wall s | key figures |", "|---|---|---|---|"]
    for r in results:
        wall = f"{r.wall_s:.1f}" if r.wall_s is not None else ""
        summary = r.parsed.summary.replace("|", "/")
        lines.append(f"| {r.step.name} | {r.status} | {wall} | {summary} |")
    for r in results:
        lines += ["", f"## {r.step.name}", "", f"{r.step.purpose}.", "", f"- status: {r.status}"]
        if r.wall_s is not None:
            lines.append(f"- wall time: {r.wall_s:.1f} s")
        if r.log is not None:
            lines.append(f"- log: {r.log}")
        lines += [f"- note: {note}" for note in r.step.notes]
        lines += [f"- {key}: {value}" for key, value in r.parsed.figures.items()]
        lines += [f"- check failed: {problem}" for problem in r.parsed.problems]
        if not r.status.startswith("skipped"):
            lines += ["", "```", *(shlex.join(c) for c in r.step.commands), "```"]
        if r.ran and not r.passed and r.status != "running":
            lines += ["", f"Last {TAIL_LINES} lines of the log:", "", "```", tail(r.log), "```"]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` at once (a kill never leaves half a report)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


# ------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; `--steps` becomes a checked list of step names."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="runs/gpu_check", help="report, logs and runs go here")
    parser.add_argument("--steps", default=",".join(STEP_NAMES), help="comma-separated subset of the steps")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together")
    parser.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        help="multiply every step's time limit (a dry run on a loaded CPU; keep 1 on the GPU)",
    )
    parser.add_argument("--cache-dir", default="data/cache", help="data cache of every command")
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU versions of every step (no GPU)")
    parser.add_argument("--worker", choices=("environment", "rqkmeans"), help=argparse.SUPPRESS)
    # Test hook: that step's command is replaced by one that prints a line and exits with code 3.
    parser.add_argument("--inject-failure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if args.timeout_scale <= 0:
        parser.error(f"--timeout-scale must be positive, got {args.timeout_scale}")
    unknown = sorted(set(args.steps) - set(STEP_NAMES))
    if unknown or not args.steps:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEP_NAMES)}")
    return args


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM/SIGINT raise `Interrupted` while the steps run (restored afterwards)."""
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected steps and write the report; 0 only when every step that ran passed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cache_dir = Path(args.cache_dir).expanduser().resolve()
    if args.worker == "environment":
        return environment_worker(args.dry_run)
    if args.worker == "rqkmeans":
        return rqkmeans_worker(args.dry_run, cache_dir)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: error: no CUDA device visible to torch; on a machine without a GPU use --dry-run",
            file=sys.stderr,
        )
        return 2
    started, clock = time.time(), time.monotonic()
    deadline = clock + args.budget
    output = Path(args.output).expanduser().resolve()
    (output / "logs").mkdir(parents=True, exist_ok=True)
    ctx = Context(output, cache_dir, args.dry_run, 0 if args.dry_run else torch.cuda.device_count())
    if args.dry_run and DATA_STEPS & set(args.steps):
        prepare_dry_run(ctx)
    steps = plan(ctx, args.steps)
    for step in steps:
        step.timeout *= args.timeout_scale
        step.min_seconds *= args.timeout_scale
    if args.inject_failure:
        for step in steps:
            if step.name == args.inject_failure:
                step.commands = [[*python(), "-c", "print('injected failure'); raise SystemExit(3)"]]
    results = [Result(step) for step in steps]
    report = output / REPORT_NAME

    def write(finished: bool = False) -> None:
        text = render(ctx, results, argv, started, time.monotonic() - clock, finished, args.budget)
        write_atomic(report, text)

    code = 0
    with signals_raise():
        try:
            for result in results:
                step = result.step
                if step.skip:
                    result.status = step.skip
                elif deadline - time.monotonic() < step.min_seconds:
                    result.status = "skipped (budget)"
                else:
                    result.status, result.log = "running", output / "logs" / f"{step.name}.log"
                    write()
                    run_step(result, result.log, deadline)
                    print(f"gpu_check: {step.name}: {result.status} ({result.wall_s:.1f} s)", flush=True)
                write()
        except Interrupted as err:
            print(f"gpu_check: stopped by {err}", file=sys.stderr)
            code = 143
    write(finished=True)
    print(f"gpu_check: report {report}")
    if code:
        return code
    return 0 if all(r.passed for r in results if r.ran) else 1


if __name__ == "__main__":
    raise SystemExit(main())
