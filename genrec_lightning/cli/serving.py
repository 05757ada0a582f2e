"""`genrec export`, `genrec recommend` and `genrec serve`: from a trained run to recommendations.

    genrec export --config configs/tiger.yaml --ckpt_path runs/tiger/version_0/checkpoints/best.ckpt \\
        --output bundle/
    genrec recommend bundle/ --history 50,172,133 --k 10
    genrec serve bundle/ --port 8000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genrec_lightning.checkpoints import check_model_class, read_checkpoint, weights_mismatch
from genrec_lightning.cli.checks import _class_path
from genrec_lightning.cli.config_data import sequence_data
from genrec_lightning.cli.lightning_cli import GenRecCLI
from genrec_lightning.data.datamodules import SequenceDataModule
from genrec_lightning.errors import ConfigError, RunError
from genrec_lightning.modules.base import DATA_KEY, RecommenderModule
from genrec_lightning.pipeline.keys import plain_config
from genrec_lightning.serving import Recommender, export_bundle
from genrec_lightning.serving.bundle import META_FILE

DEFAULT_ENCODER = "genrec_lightning.data.embeddings.SentenceTransformerEncoder"


class _ExportCLI(GenRecCLI):
    """The run's config built as `genrec test` would (sizes linked, IDs attached), not run; the
    checkpoint is checked against the model class and the data before any stage is built."""

    def __init__(self, args: Sequence[str], checkpoint: str) -> None:
        self._given_checkpoint = checkpoint
        self.checkpoint_path: Path | None = None
        self.checkpoint: dict[str, Any] = {}
        super().__init__(args=list(args), run=False)

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        config = self.config
        class_path = _class_path(config.get("model"))
        path = self._find_last(config) if self._given_checkpoint == "last" else Path(self._given_checkpoint)
        checkpoint = read_checkpoint(path)
        check_model_class(checkpoint, path, class_path)
        self.checkpoint_path, self.checkpoint = path, checkpoint
        self._checkpoint = (path, {k: checkpoint[k] for k in (DATA_KEY,) if k in checkpoint})


def _encoder_spec(config: Any, data: SequenceDataModule) -> dict[str, Any]:
    """class_path + init_args of the text encoder that made the item embeddings."""
    init_args = plain_config(config.get("data") or {}).get("init_args", {})
    given = init_args.get("encoder") or (init_args.get("data") or {}).get("init_args", {}).get("encoder")
    if isinstance(given, dict) and given.get("class_path"):
        return {"class_path": given["class_path"], "init_args": dict(given.get("init_args") or {})}
    settings = data.encoder.config()
    return {"class_path": DEFAULT_ENCODER, "init_args": {**settings, "show_progress": False}}


def _checkpoint_metrics(path: Path) -> dict[str, float]:
    """The test metrics the run recorded for this checkpoint (empty when it was not tested)."""
    for candidate in (path.parent.parent / "test_metrics.json", path.parent / "test_metrics.json"):
        if candidate.is_file():
            record = json.loads(candidate.read_text())
            if Path(str(record.get("checkpoint", ""))).resolve() == path.resolve():
                return dict(record.get("metrics", {}))
    return {}


def export_command(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="genrec export",
        description="Write a self-contained bundle (weights, IDs, tokenizer, catalogue) of a checkpoint. "
        "Other arguments are the run's config (--config ...) as for `genrec test`.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint file, or `last`")
    parser.add_argument("--output", required=True, help="bundle directory to write (replaced atomically)")
    args, rest = parser.parse_known_args(list(argv))
    output = Path(args.output)
    if output.exists() and (
        not output.is_dir() or (any(output.iterdir()) and not (output / META_FILE).is_file())
    ):
        raise ConfigError(f"--output {output} exists and is not a bundle: choose a new directory")
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        raise ConfigError(
            "give the run's config: genrec export --config <yaml> --ckpt_path <ckpt> --output <dir>"
        )
    cli = _ExportCLI(rest, args.ckpt_path)
    model, data = cli.model, sequence_data(cli.datamodule)
    if not isinstance(model, RecommenderModule) or not isinstance(data, SequenceDataModule):
        raise ConfigError("genrec export takes a recommender config (model: a RecommenderModule)")
    assert cli.checkpoint_path is not None
    model.attach_data(cli.datamodule, "predict")
    model.on_load_checkpoint(cli.checkpoint)
    try:
        model.load_state_dict(cli.checkpoint["state_dict"])
    except RuntimeError as err:  # a checkpoint of another architecture that did not record its class
        mismatch = weights_mismatch(err, cli.checkpoint_path, type(model).__name__)
        if mismatch is None:
            raise
        raise mismatch from err
    target = export_bundle(
        model,
        data,
        output,
        spec=plain_config(cli.config.model),
        checkpoint=cli.checkpoint,
        checkpoint_path=cli.checkpoint_path,
        encoder=_encoder_spec(cli.config, data),
        metrics=_checkpoint_metrics(cli.checkpoint_path),
        data_config=plain_config(cli.config.get("data")),
    )
    print(
        f"wrote bundle {target} ({type(model).__name__}, {data.num_items:,} items) from {cli.checkpoint_path}"
    )


def _histories(values: Sequence[str]) -> list[list[str]]:
    out = []
    for value in values:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise ConfigError(
                f"--history {value!r} has no item: give comma-separated item ids, e.g. 50,172,133"
            )
        out.append(items)
    return out


def recommend_command(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="genrec recommend", description="Recommend from a bundle.")
    parser.add_argument("bundle", help="bundle directory (genrec export)")
    parser.add_argument(
        "--history",
        action="append",
        required=True,
        help="comma-separated raw item ids, oldest first (repeat for several users)",
    )
    parser.add_argument("--k", type=int, default=10, help="items to recommend")
    parser.add_argument("--include_seen", action="store_true", help="keep items of the history")
    parser.add_argument(
        "--unknown",
        choices=("error", "ignore"),
        default="error",
        help="unknown history items: fail (default) or leave them out",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args(list(argv))
    histories = _histories(args.history)
    rec = Recommender.load(args.bundle, device=args.device)
    results = rec.recommend(histories, k=args.k, exclude_seen=not args.include_seen, unknown=args.unknown)
    for history, result in zip(histories, results, strict=True):
        texts = rec.texts(result.items)
        if args.json:
            rows = [
                {"item": i, "score": s, "text": t}
                for i, s, t in zip(result.items, result.scores, texts, strict=True)
            ]
            print(json.dumps({"history": history, "unknown": result.unknown, "items": rows}, default=str))
            continue
        print(
            f"history: {', '.join(history)}"
            + (f" (not in the catalogue: {result.unknown})" if result.unknown else "")
        )
        width = max((len(str(i)) for i in result.items), default=4)
        for rank, (item, score, text) in enumerate(zip(result.items, result.scores, texts, strict=True), 1):
            print(f"{rank:>3}. {str(item):>{width}}  {score:9.4f}  {text}")


def serve_command(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="genrec serve", description="HTTP server of a bundle (LitServe).")
    parser.add_argument("bundle", help="bundle directory (genrec export)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max_batch_size", type=int, default=32, help="requests batched into one forward pass"
    )
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="seconds to wait to fill a batch")
    parser.add_argument("--workers", type=int, default=1, help="model copies serving in parallel")
    args = parser.parse_args(list(argv))
    try:
        from genrec_lightning.serving.server import serve
    except ImportError as err:
        raise RunError(f"genrec serve needs LitServe ({err}): pip install 'genrec-lightning[serve]'") from err
    serve(
        args.bundle,
        host=args.host,
        port=args.port,
        device=args.device,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        workers=args.workers,
    )


def main(command: str, argv: Sequence[str]) -> None:
    {"export": export_command, "recommend": recommend_command, "serve": serve_command}[command](argv)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
