"""`genrec` command line: LightningCLI for fit/validate/test/predict plus data subcommands.

    genrec fit --config configs/<experiment>.yaml [--trainer.devices 2 --trainer.strategy ddp]
    genrec data-stats --config configs/data/ml100k.yaml      # Table-2 statistics of a dataset
    genrec prepare --config configs/data/ml100k.yaml         # build every data artifact now
    genrec tokenize --config configs/rqvae.yaml              # build/reuse semantic IDs, print stats
    genrec report runs/tiger/version_0                       # the papers' figures of finished runs

Expected user errors (a missing file, a corrupted artifact, a bad setting, nothing to resume)
print one line naming the problem and the fix and exit 1; `--verbose` or GENREC_VERBOSE=1 shows
the traceback. SIGTERM stops a fit with exit 143 after writing a resumable `last.ckpt`.

Models and datamodules are chosen by class (`--model X --data Y` or `class_path` in YAML); every
constructor argument is an option with its docstring in `--help`.

Files:
    main.py           `main` (the console entry point): dispatch, error lines, `usage`, `COMMANDS`
    lightning_cli.py  `GenRecCLI` (fit/validate/test/predict) and the datamodule->model `SIZE_LINKS`
    checks.py         config checks before any stage: input paths, model settings, writable dirs
    config_data.py    YAML -> data -> IDs without a trainer, shared by the data commands and report
    data_commands.py  `genrec data-stats`, `prepare`, `tokenize`
    report.py         `genrec report` (imported when called; figures in `genrec_lightning.analysis`)
    compare.py        `genrec compare` (imported when called; statistics in `analysis.compare`)
"""

from genrec_lightning.cli.checks import (
    INPUT_PATH_KEYS,
    check_model_settings,
    check_runs_dir,
    resolve_input_paths,
)
from genrec_lightning.cli.config_data import data_args, data_from_config, data_parser, sequence_data
from genrec_lightning.cli.data_commands import data_command, format_statistics, tokenize_command
from genrec_lightning.cli.lightning_cli import SIZE_LINKS, GenRecCLI
from genrec_lightning.cli.main import COMMANDS, DATA_COMMANDS, main, usage

__all__ = [
    "COMMANDS",
    "DATA_COMMANDS",
    "INPUT_PATH_KEYS",
    "SIZE_LINKS",
    "GenRecCLI",
    "check_model_settings",
    "check_runs_dir",
    "data_args",
    "data_command",
    "data_from_config",
    "data_parser",
    "format_statistics",
    "main",
    "resolve_input_paths",
    "sequence_data",
    "tokenize_command",
    "usage",
]
