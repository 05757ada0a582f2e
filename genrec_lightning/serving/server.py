"""HTTP serving of a bundle with LitServe (the `serve` extra): `genrec serve bundle/`.

    POST /recommend  {"history": [50, 172, 133], "k": 10, "exclude_seen": true, "unknown": "error"}
      -> 200 {"items": [...], "scores": [...], "unknown": [...]}
      -> 400 {"detail": "..."} for a malformed request, an empty history, k out of range or
         history items the catalogue does not have (with unknown="error")
    GET  /health     -> 200 "ok" once the model is loaded

Requests arriving within `batch_timeout` of each other are ranked in one batch (up to
`max_batch_size`). A bad request is answered on its own: it never fails the others of its batch.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi.responses import JSONResponse

from genrec_lightning.serving.bundle import read_bundle_meta
from genrec_lightning.serving.recommender import InputError, Recommendation, Recommender

API_PATH = "/recommend"


@dataclass(frozen=True)
class Query:
    history: list[Any]
    k: int
    exclude_seen: bool
    unknown: str


@dataclass(frozen=True)
class Rejected:
    """A request answered with a client error instead of a recommendation."""

    status: int
    detail: str


def parse_query(body: Any, catalogue_size: int) -> Query | Rejected:
    """A request body as a Query, or the reason it is not one (checked before any model work)."""
    if not isinstance(body, dict):
        return Rejected(400, 'the body must be a JSON object such as {"history": [50, 172], "k": 10}')
    extra = sorted(set(body) - {"history", "k", "exclude_seen", "unknown"})
    if extra:
        return Rejected(400, f"unknown field(s) {extra}; the fields are history, k, exclude_seen, unknown")
    history = body.get("history")
    if not isinstance(history, list) or not all(
        isinstance(i, (int, str)) and not isinstance(i, bool) for i in history
    ):
        return Rejected(400, "history must be a list of item ids (numbers or strings), oldest first")
    if not history:
        return Rejected(400, "history is empty: give at least one item id")
    k = body.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= catalogue_size:
        return Rejected(400, f"k must be an integer from 1 to {catalogue_size}, got {k!r}")
    exclude_seen = body.get("exclude_seen", True)
    if not isinstance(exclude_seen, bool):
        return Rejected(400, f"exclude_seen must be true or false, got {exclude_seen!r}")
    unknown = body.get("unknown", "error")
    if unknown not in ("error", "ignore"):
        return Rejected(400, f"unknown must be 'error' or 'ignore', got {unknown!r}")
    return Query(history, k, exclude_seen, unknown)


class RecommenderAPI(ls.LitAPI):
    """LitServe API of one bundle: decode and check each request, rank the valid ones in batches."""

    def __init__(
        self,
        bundle: str | Path,
        device: str | None = None,
        max_batch_size: int = 32,
        batch_timeout: float = 0.005,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH)
        self.bundle = str(bundle)
        self.device_override = device
        self.recommender: Recommender | None = None

    def setup(self, device: str) -> None:
        self.recommender = Recommender.load(self.bundle, device=self.device_override or device)

    # LitServe reads the annotations of `request` and of encode_response's return to build the
    # FastAPI endpoint: left out, the body arrives as parsed JSON and any response passes through.
    def decode_request(self, request, **kwargs: Any) -> Query | Rejected:  # noqa: ANN001
        assert self.recommender is not None
        query = parse_query(request, self.recommender.num_items)
        if isinstance(query, Query) and query.unknown == "error":
            missing = [item for item in query.history if not self.recommender.known(item)]
            if missing:
                return Rejected(
                    400,
                    f"item(s) {missing[:10]} are not in the catalogue; send unknown='ignore' "
                    "to leave them out",
                )
        return query

    def batch(self, inputs: list[Query | Rejected]) -> list[Query | Rejected]:
        return inputs

    def predict(self, inputs: list[Query | Rejected], **kwargs: Any) -> list[Recommendation | Rejected]:
        assert self.recommender is not None
        out: list[Recommendation | Rejected | None] = [x if isinstance(x, Rejected) else None for x in inputs]
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, query in enumerate(inputs):
            if isinstance(query, Query):
                groups.setdefault((query.k, query.exclude_seen), []).append(i)
        for (k, exclude_seen), rows in groups.items():
            histories = [inputs[i].history for i in rows]  # type: ignore[union-attr]
            try:
                results = self.recommender.recommend(
                    histories, k=k, exclude_seen=exclude_seen, unknown="ignore"
                )
            except InputError:  # e.g. a history with no known item: answer each request on its own
                results = [self._one(inputs[i]) for i in rows]  # type: ignore[arg-type]
            for i, result in zip(rows, results, strict=True):
                out[i] = result
        return out  # type: ignore[return-value]

    def _one(self, query: Query) -> Recommendation | Rejected:
        assert self.recommender is not None
        try:
            return self.recommender.recommend(
                [query.history], k=query.k, exclude_seen=query.exclude_seen, unknown="ignore"
            )[0]
        except InputError as err:
            return Rejected(400, str(err))

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Recommendation | Rejected, **kwargs: Any):  # noqa: ANN201
        if isinstance(output, Rejected):
            return JSONResponse(status_code=output.status, content={"detail": output.detail})
        return {"items": output.items, "scores": output.scores, "unknown": output.unknown}


def serve(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    max_batch_size: int = 32,
    batch_timeout: float = 0.005,
    workers: int = 1,
) -> None:
    """Run the HTTP server of `bundle` until interrupted (the bundle is checked before it starts)."""
    meta = read_bundle_meta(bundle)
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    api = RecommenderAPI(bundle, device=device, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=1,
        workers_per_device=workers,
        model_metadata={"model": meta.get("model_class"), "items": meta.get("num_items")},
    )
    print(f"serving {bundle} ({meta.get('num_items'):,} items) on http://{host}:{port}{API_PATH}", flush=True)
    # SIGTERM (a container stop, `kill`) shuts down like Ctrl+C, so LitServe stops its workers;
    # the API processes forked from here inherit the handler and just exit.
    main_pid = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            raise SystemExit(0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.run(host=host, port=port, generate_client_file=False)
    finally:  # never leave a worker or an API process behind (they poll their queues: they use CPU)
        for child in multiprocessing.active_children():
            child.terminate()
            child.join(timeout=10)
            if child.is_alive():
                child.kill()


__all__ = ["API_PATH", "Query", "Rejected", "RecommenderAPI", "parse_query", "serve"]
