"""Training throughput and peak memory of each module, through the real Lightning training loop.

Every module is built from its shipped YAML exactly as `genrec fit` builds it (stages cached on
first use) and trained for `--warmup + --steps` optimiser steps without validation; samples/s
counts the steps after the warm-up. Each module runs in a fresh process so its peak memory (CUDA:
max allocated; CPU: the process's peak RSS, data and Python included) is its own.

    python benchmarks/train_throughput.py                                  # CPU, CPU preset
    python benchmarks/train_throughput.py --preset none --accelerator gpu --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import lightning.pytorch as L
import torch

MODULES = {
    "rqvae (tokenizer)": "configs/rqvae.yaml",
    "soft rqvae (UniGRec stage 1)": "configs/unigrec_pretrain.yaml",
    "TIGER": "configs/tiger.yaml",
    "TIGER + curriculum": "configs/tiger_curriculum.yaml",
    "SASRec": "configs/sasrec.yaml",
    "UniGRec": "configs/unigrec.yaml",
}
T5_MODULES = {"TIGER", "TIGER + curriculum", "UniGRec"}  # the preset sizes a T5


class StepTimer(L.Callback):
    """Wall time from the end of the warm-up steps to the last step, with a device sync."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.samples, self.elapsed = warmup, 0.0, 0, 0.0

    @staticmethod
    def _sync(module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int
    ) -> None:  # noqa: ANN001
        if trainer.global_step == self.warmup:
            self._sync(module)
            self.start = time.perf_counter()
        if trainer.global_step >= self.warmup:
            first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
            self.samples += len(first)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._sync(module)
        self.elapsed = time.perf_counter() - self.start


def worker(config: str, preset: str | None, args: argparse.Namespace) -> dict:
    from genrec_lightning.cli import GenRecCLI

    configs = ["--config", config] + (["--config", preset] if preset else [])
    cli = GenRecCLI(args=[*configs, "--trainer.logger", "false"], run=False)
    model, data = cli.model, cli.datamodule
    if args.batch_size:
        data.batch_size = args.batch_size
    timer = StepTimer(args.warmup)
    scratch = tempfile.mkdtemp(prefix="genrec-throughput-")  # the tokenizer writes its IDs at fit end
    trainer = L.Trainer(
        default_root_dir=scratch,
        accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=args.warmup + args.steps,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    on_gpu = args.accelerator == "gpu"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.fit(model, datamodule=data)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = {
        "samples_per_s": timer.samples / timer.elapsed,
        "s_per_step": timer.elapsed / args.steps,
        "batch_size": timer.samples // args.steps,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if on_gpu:
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modules", nargs="+", default=list(MODULES), choices=list(MODULES))
    parser.add_argument(
        "--preset", default="configs/presets/cpu.yaml", help="layered on the recommenders; 'none'"
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=0, help="override the YAML's batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        t5 = any(MODULES[name] == args.worker for name in T5_MODULES)
        preset = args.preset if t5 and args.preset != "none" else None
        print("RESULT " + json.dumps(worker(args.worker, preset, args)))
        return
    print(
        f"accelerator {args.accelerator}, precision {args.precision}, T5 preset {args.preset}, "
        f"{args.steps} timed steps after {args.warmup}, torch threads {torch.get_num_threads()}"
    )
    header = ["module", "config", "samples/step", "params (M)", "samples/s", "s/step", "peak RSS (GiB)"]
    print("| " + " | ".join([*header, "peak CUDA (GiB)"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    passthrough = sys.argv[1:]
    for name in args.modules:
        command = [sys.executable, __file__, *passthrough, "--worker", MODULES[name]]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"| {name} | {MODULES[name]} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(lines[-1][len("RESULT ") :])
        cuda = f"{r['peak_cuda_gib']:.2f}" if "peak_cuda_gib" in r else "–"
        cells = [name, f"`{MODULES[name]}`", str(r["batch_size"]), f"{r['parameters_m']:.2f}"]
        cells += [f"{r['samples_per_s']:,.0f}", f"{r['s_per_step']:.3f}", f"{r['peak_rss_gib']:.2f}", cuda]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
