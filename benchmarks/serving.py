"""Serving speed of a bundle: in-process `Recommender.recommend` vs the HTTP server (`genrec serve`).

    python benchmarks/serving.py                      # the CPU-preset TIGER of `make demo`
    python benchmarks/serving.py --bundle bundle/     # any exported bundle

Without --bundle the model of `configs/tiger_curriculum.yaml` + `configs/presets/cpu.yaml` is
built with untrained weights and exported to a temporary bundle: beam search does the same work
whatever the weights, so the figures are those of the trained model. Histories are drawn from
the catalogue (seeded), `max_history` items each.

Printed: in-process latency p50/p99 per call and histories/s at each batch size (the reference),
then for each client concurrency the HTTP latency p50/p99 per request, requests/s, and requests/s
as a share of the in-process rate at the same batch size (what HTTP, JSON and the batching wait
cost). Run it alone: other jobs on the machine change every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from genrec_lightning.serving.client import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("configs/tiger_curriculum.yaml", "configs/presets/cpu.yaml")


def build_bundle(configs: Sequence[str], target: Path) -> Path:
    """Export the configs' model with untrained weights (same compute as the trained one)."""
    from genrec_lightning.cli import GenRecCLI
    from genrec_lightning.cli.config_data import sequence_data
    from genrec_lightning.cli.serving import _encoder_spec
    from genrec_lightning.pipeline.keys import plain_config
    from genrec_lightning.serving import export_bundle

    args = [a for c in configs for a in ("--config", str(ROOT / c))]
    cli = GenRecCLI(
        args=[*args, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"], run=False
    )
    data = sequence_data(cli.datamodule)
    cli.model.attach_data(cli.datamodule, "predict")
    return export_bundle(
        cli.model,
        data,
        target,
        spec=plain_config(cli.config.model),
        checkpoint={},
        checkpoint_path=Path("untrained"),
        encoder=_encoder_spec(cli.config, data),
    )


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def in_process(rec, histories: list[list], batch_sizes: Sequence[int], calls: int) -> dict[int, dict]:  # noqa: ANN001
    out = {}
    for size in batch_sizes:
        rec.recommend(histories[:size], k=10)  # warm-up
        times = []
        for i in range(calls):
            start = (i * size) % max(1, len(histories) - size)
            began = time.perf_counter()
            rec.recommend(histories[start : start + size], k=10)
            times.append(time.perf_counter() - began)
        p50, p99 = percentiles(times)
        out[size] = {"p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99, "per_s": size * len(times) / sum(times)}
    return out


def request(url: str, history: list) -> float:
    body = json.dumps({"history": history, "k": 10}).encode()
    began = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"})) as r:
        r.read()
    return time.perf_counter() - began


def over_http(
    bundle: Path, histories: list[list], levels: Sequence[int], requests: int, threads: int, timeout: float
) -> dict:
    port = free_port()
    env = dict(os.environ)
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "genrec_lightning",
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--max_batch_size",
            str(max(levels)),
            "--batch_timeout",
            str(timeout),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, timeout=180)
        out = {}
        for level in levels:
            for history in histories[:level]:  # warm-up
                request(f"{url}/recommend", history)
            count = max(requests, level)
            began = time.perf_counter()
            with ThreadPoolExecutor(max_workers=level) as clients:  # `level` requests in flight at a time
                latencies = list(
                    clients.map(
                        lambda j: request(f"{url}/recommend", histories[j % len(histories)]), range(count)
                    )
                )
            elapsed = time.perf_counter() - began
            p50, p99 = percentiles(latencies)
            out[level] = {"p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99, "per_s": len(latencies) / elapsed}
        return out
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)  # nothing of the server may outlive the benchmark


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundle", type=Path, help="an exported bundle (default: build the CPU-preset model)"
    )
    parser.add_argument(
        "--config", action="append", help="configs of the model to build (default: the demo's)"
    )
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--calls", type=int, default=30, help="in-process calls per batch size")
    parser.add_argument("--requests", type=int, default=256, help="HTTP requests per concurrency level")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="server: seconds to fill a batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from genrec_lightning.serving import Recommender

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or build_bundle(args.config or DEFAULT_CONFIGS, Path(tmp) / "bundle")
        rec = Recommender.load(bundle)
        length = int(getattr(rec.model, "max_history", 20))
        rng = np.random.default_rng(args.seed)
        ids = rec.items["item_raw"].to_list()
        histories = [[ids[i] for i in rng.choice(len(ids), size=length, replace=False)] for _ in range(512)]
        local = in_process(rec, histories, args.batch_sizes, args.calls)
        remote = over_http(
            bundle, histories, args.concurrency, args.requests, args.threads, args.batch_timeout
        )
    print(
        f"# Serving {rec.meta.get('model_class', '?').rsplit('.', 1)[-1]} ({rec.num_items:,} items, "
        f"{sum(p.numel() for p in rec.model.parameters()):,} parameters, beam {rec.list_length}, k 10)"
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}\n"
    )
    print("| in-process batch | p50 ms/call | p99 ms/call | histories/s |\n|---|---|---|---|")
    for size, row in local.items():
        print(f"| {size} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['per_s']:.1f} |")
    print(f"\nServer: max_batch_size {max(args.concurrency)}, batch_timeout {args.batch_timeout} s.")
    print(
        "\n| HTTP concurrency | p50 ms/request | p99 ms/request | requests/s | vs in-process at that batch |"
    )
    print("|---|---|---|---|---|")
    for level, row in remote.items():
        ratio = f"{row['per_s'] / local[level]['per_s']:.2f}x" if level in local else "-"
        print(f"| {level} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['per_s']:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
