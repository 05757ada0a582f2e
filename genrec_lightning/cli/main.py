"""`genrec`: pick the subcommand, turn expected user errors into one line, tidy up DDP on exit.

`fit`/`validate`/`test`/`predict` go to `GenRecCLI`; `compare`, `report` and the serving commands
(`export`, `recommend`, `serve`) are imported only when called, so the training commands never
load the figure, statistics or serving code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genrec_lightning import __version__
from genrec_lightning.cli.data_commands import data_command, tokenize_command
from genrec_lightning.cli.lightning_cli import GenRecCLI
from genrec_lightning.errors import GenRecError

DATA_COMMANDS = ("data-stats", "prepare")


#: Every subcommand with what it does, for `genrec --help` and a bare `genrec`.
COMMANDS: dict[str, str] = {
    "fit": "train a model from a config, then test its best checkpoint (Recall/NDCG)",
    "validate": "score a checkpoint on the validation targets",
    "test": "score a checkpoint on the held-out last items; writes test_metrics.json, test_users.parquet",
    "compare": "paired significance test of runs against runs on the same test users",
    "predict": "write the ranked top-k lists of the test users (predictions.parquet)",
    "prepare": "build every data artifact of a dataset now (splits, item embeddings)",
    "data-stats": "print a dataset's statistics (interactions, users, items, history length)",
    "tokenize": "build or reuse the semantic IDs of a tokenizer config and print their statistics",
    "report": "draw the papers' figures and CSV tables from finished runs",
    "export": "write a self-contained bundle of a checkpoint (weights, IDs, tokenizer, catalogue)",
    "recommend": "print recommendations of a bundle for given histories",
    "serve": "answer recommendation requests over HTTP from a bundle (LitServe)",
}


def usage() -> str:
    """The overview printed by `genrec --help` (each subcommand has its own --help)."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"genrec_lightning {__version__}: generative recommendation with semantic IDs",
        "",
        "usage: genrec <command> --config <yaml> [--config <delta yaml>] [--section.option value ...]",
        "",
        "commands:",
        *(f"  {name:{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "options of every command: genrec <command> --help. Other flags:",
        "  --version        print the version",
        "  --verbose        show the traceback of an error (also GENREC_VERBOSE=1)",
        "",
        "example: genrec fit --config configs/tiger_curriculum.yaml --config configs/presets/cpu.yaml",
    ]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> None:
    command = argv[0]
    if command in DATA_COMMANDS:
        data_command(command, argv[1:])
    elif command == "tokenize":
        tokenize_command(argv[1:])
    elif command == "compare":
        from genrec_lightning.cli.compare import main as compare_main

        compare_main(argv[1:])
    elif command in ("export", "recommend", "serve"):
        from genrec_lightning.cli.serving import main as serving_main

        serving_main(command, argv[1:])
    elif command == "report":
        from genrec_lightning.cli.report import main as report_main

        report_main(argv[1:])
    else:
        # From the console, LightningCLI reads sys.argv itself (it warns when given both).
        GenRecCLI(args=None if argv == sys.argv[1:] else argv)


def _close_process_group(clean: bool) -> None:
    """Destroy the DDP process group before the interpreter exits.

    Lightning destroys it only for NCCL; a gloo group left alive lets its C++ worker threads be
    torn down by the exit handlers, which aborts the process at random with "terminate called
    without an active exception" (SIGABRT) after the run has finished. The barrier keeps one rank
    from tearing down while another still talks to it.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    with contextlib.suppress(Exception):
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point (`genrec`, `python -m genrec_lightning`)."""
    argv = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in argv or os.environ.get("GENREC_VERBOSE", "") not in ("", "0")
    if "--verbose" in argv:
        argv = [arg for arg in argv if arg != "--verbose"]
        os.environ["GENREC_VERBOSE"] = "1"  # DDP ranks re-run the command line without the flag
        if args is None:
            sys.argv = [sys.argv[0], *argv]
    from genrec_lightning.output import configure_output

    configure_output(verbose)
    if argv and argv[0] in ("--version", "-V"):
        print(f"genrec_lightning {__version__}")
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        if not argv:
            raise SystemExit(2)
        return
    clean = False
    try:
        _dispatch(argv)
        clean = True
    except SIGTERMException:
        # Lightning's SIGTERMException is a SystemExit with code 0: a killed run would look done.
        print(
            "genrec: stopped by SIGTERM. Resume with the same command plus --ckpt_path last",
            file=sys.stderr,
        )
        raise SystemExit(143) from None
    except GenRecError as err:
        if verbose:
            raise
        print(f"genrec: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        _close_process_group(clean)


__all__ = ["COMMANDS", "DATA_COMMANDS", "main", "usage"]
