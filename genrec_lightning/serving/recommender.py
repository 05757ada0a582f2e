"""`Recommender`: recommendations from a bundle for any history, and new items without retraining.

    rec = Recommender.load("bundle/")
    rec.recommend([[50, 172, 133]], k=10)        # raw item ids in, raw item ids and scores out
    rec.add_items(["Toy Story 5 (2027)"], raw_ids=[99001]).save()

Histories go through the model's own ranking (`rank`: constrained beam search for the generative
models), batched, so a bundle recommends exactly what `genrec predict` of its checkpoint ranks.
A generative model searches with at least its evaluation beam (`beam_size`); excluding seen items
widens it by their number, so k unseen items can always be returned.

New items get semantic IDs the way the bundle's own were made: the frozen text encoder (or given
embeddings), the frozen tokenizer, and the bundle's dedup rule against the existing table (a
`suffix` numbers the items sharing a raw ID; `reassign_last` moves a collision to a free
last-level code under its prefix). The prefix index then lets the beam search generate them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from jsonargparse import ArgumentParser
from jsonargparse.typing import import_object
from safetensors.torch import load_file, load_model
from torch import Tensor

from genrec_lightning.errors import GenRecError
from genrec_lightning.modules.base import RecommenderModule
from genrec_lightning.modules.id_table import ItemIdTable
from genrec_lightning.modules.recommender import GenerativeRecommender
from genrec_lightning.modules.tokenizer import (
    TOKENIZER_CONFIG_KEY,
    TOKENIZER_FILE,
    build_tokenizer,
    load_tokenizer_weights,
)
from genrec_lightning.modules.unigrec import UniGRecModule
from genrec_lightning.semantic_ids import SemanticIds, extend_reassign_last, extend_suffix
from genrec_lightning.semantic_ids.io import _REQUIRED_META as TABLE_META
from genrec_lightning.serving.bundle import (
    IDS_DIR,
    ITEMS_FILE,
    MODEL_FILE,
    USERS_FILE,
    BundleError,
    read_bundle_meta,
    read_config,
    read_embeddings,
    read_semantic_ids,
    write_bundle,
)

#: Items per forward pass when none is given.
DEFAULT_BATCH_SIZE = 256


class InputError(GenRecError, ValueError):
    """A request the bundle cannot answer as given (empty history, k out of range, ...)."""


class UnknownItemsError(InputError):
    """History items the bundle's catalogue does not have; `.unknown` maps history index -> ids."""

    def __init__(self, message: str, unknown: dict[int, list[Any]]) -> None:
        super().__init__(message)
        self.unknown = unknown


@dataclass(frozen=True)
class Recommendation:
    """One history's recommendations, best first.

    `scores` are the model's: log-probabilities of the item's ID (generative models) or of the
    item (SASRec/GRU4Rec), training interaction counts for most-popular. `unknown` lists history
    items the catalogue does not have, which were left out (only with `unknown="ignore"`).
    """

    items: list[Any]
    scores: list[float]
    unknown: list[Any] = field(default_factory=list)


def build_model(spec: dict[str, Any]) -> RecommenderModule:
    """The recommender a bundle's config describes (class_path + init_args), untrained."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(RecommenderModule, "model")
    try:
        model = parser.instantiate_classes(parser.parse_object({"model": spec})).model
    except Exception as err:
        raise BundleError(f"the bundle's model cannot be built ({str(err).splitlines()[0]})") from err
    return model


def _raw_id_caster(dtype: pl.DataType) -> Any:
    """Turn a given raw id into the catalogue's type: '50' and 50 both find item 50 of MovieLens."""
    if dtype.is_integer():

        def cast(value: Any) -> Any:
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                return int(value)
            text = str(value).strip()
            return int(text) if text.lstrip("-").isdigit() else text

        return cast
    return lambda value: str(value)


class Recommender:
    """A trained recommender and its catalogue, loaded from a bundle (`Recommender.load`)."""

    def __init__(
        self,
        model: RecommenderModule,
        items: pl.DataFrame,
        meta: dict[str, Any],
        config: dict[str, Any],
        embeddings: Tensor | None = None,
        semantic_ids: SemanticIds | None = None,
        directory: Path | None = None,
        users: pl.DataFrame | None = None,
    ) -> None:
        self.model = model.eval()
        self.items = items
        self.meta = meta
        self.config = config
        self.embeddings = embeddings
        self.semantic_ids = semantic_ids
        #: Where the bundle was loaded from (`save()` writes back there by default).
        self.directory = directory
        #: (user, user_raw) of the training data, for models that read a user token.
        self.users = users
        self._cast = _raw_id_caster(items.schema["item_raw"])
        self._index = {raw: i for i, raw in enumerate(items["item_raw"].to_list())}
        self._tokenizer: torch.nn.Module | None = None

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        bundle: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        verify: bool = True,
    ) -> Recommender:
        """Load a bundle (checksums verified unless `verify=False`) onto `device`; `dtype`
        (e.g. torch.bfloat16 on a GPU) casts the weights, IDs stay integers."""
        directory = Path(bundle)
        meta = read_bundle_meta(directory, verify=verify)
        config = read_config(directory)
        model = build_model(config["model"])
        missing, unexpected = load_model(model, str(directory / MODEL_FILE), strict=False)
        if missing or unexpected:
            raise BundleError(
                f"{directory / MODEL_FILE} does not fit the bundle's model (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}): export the bundle again"
            )
        items = pl.read_parquet(directory / ITEMS_FILE)
        embeddings = read_embeddings(directory)
        ids = read_semantic_ids(directory)
        if items.height != model.num_items or (ids is not None and ids.num_items != items.height):
            raise BundleError(
                f"{directory}: the model has {model.num_items} items, the catalogue {items.height}"
                + (f" and the ID table {ids.num_items}" if ids is not None else "")
                + ": export the bundle again"
            )
        if isinstance(model, UniGRecModule):
            if embeddings is None:
                raise BundleError(f"{directory} has no item embeddings, which UniGRec reads: export it again")
            model.item_embeddings = embeddings.clone()
        model = model.to(device=device)
        if dtype is not None:
            model = model.to(dtype=dtype)
        users = pl.read_parquet(directory / USERS_FILE) if (directory / USERS_FILE).is_file() else None
        return cls(model, items, meta, config, embeddings, ids, directory, users)

    # ------------------------------------------------------------------------------ catalogue
    @property
    def num_items(self) -> int:
        return self.items.height

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def list_length(self) -> int:
        """The model's own list length: its beam (generative) or top_k."""
        return int(getattr(self.model, "beam_size", self.model.top_k))

    def known(self, raw_id: Any) -> bool:
        return self._cast(raw_id) in self._index

    def texts(self, raw_ids: Sequence[Any]) -> list[str]:
        """The catalogue text of each raw id (for display)."""
        texts = self.items["text"].to_list()
        return [texts[self._index[self._cast(r)]] for r in raw_ids]

    # ------------------------------------------------------------------------------ recommending
    def _dense(
        self, histories: Sequence[Sequence[Any]], unknown: str
    ) -> tuple[list[list[int]], list[list[Any]]]:
        dense, missing = [], []
        for history in histories:
            if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
                raise InputError(f"a history must be a list of item ids, got {history!r}")
            ids, lost = [], []
            for raw in history:
                item = self._index.get(self._cast(raw))
                (lost if item is None else ids).append(raw if item is None else item)
            dense.append(ids)
            missing.append(lost)
        bad = {i: lost for i, lost in enumerate(missing) if lost}
        if bad and unknown == "error":
            first = next(iter(bad))
            count = sum(map(len, bad.values()))
            raise UnknownItemsError(
                f"{count} history item(s) are not in the catalogue (e.g. history {first}: {bad[first][:5]}); "
                "add them with add_items() or pass unknown='ignore' to leave them out",
                bad,
            )
        return dense, missing

    def recommend(
        self,
        histories: Sequence[Sequence[Any]],
        k: int = 10,
        exclude_seen: bool = True,
        unknown: Literal["error", "ignore"] = "error",
        users: Sequence[Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[Recommendation]:
        """Top-k raw item ids and scores for each history (raw item ids, oldest first).

        Unknown history items raise `UnknownItemsError` (or are left out and reported with
        `unknown="ignore"`); a history with no known item is an `InputError`. Histories longer than
        the model's `max_history` keep their most recent items. `users` (raw user ids) are needed
        only by models with user tokens.
        """
        if unknown not in ("error", "ignore"):
            raise InputError(f"unknown must be 'error' or 'ignore', got {unknown!r}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= int(k) <= self.num_items:
            raise InputError(f"k must be an integer from 1 to the catalogue size {self.num_items}, got {k!r}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        dense, missing = self._dense(histories, unknown)
        empty = [i for i, items in enumerate(dense) if not items]
        if empty:
            raise InputError(
                f"history {empty[0]} has no item of the catalogue ({len(empty)} such histories): "
                "a recommendation needs at least one known item"
            )
        user_ids = self._user_ids(users, len(dense))
        k = int(k)
        widths = [self._width(items, k, exclude_seen) for items in dense]
        out: list[Recommendation | None] = [None] * len(dense)
        # Histories that need the same beam share batches, so a result never depends on its neighbours.
        for width in sorted(set(widths)):
            rows = [i for i, w in enumerate(widths) if w == width]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                batch = self._batch([dense[i] for i in chunk], user_ids[chunk])
                with torch.no_grad():
                    ranking = self.model.rank(batch, width)
                    cold = self._cold_start(batch)
                for row, i in enumerate(chunk):
                    out[i] = self._result(ranking, cold, row, dense[i], k, exclude_seen, missing[i])
        return out  # type: ignore[return-value]

    @property
    def trained_items(self) -> int:
        """Items the model was trained with (dense ids below); later ones came from add_items."""
        return int(self.meta.get("trained_items", self.num_items))

    def _cold_start(self, batch: dict[str, Tensor]) -> tuple[list[int], Tensor] | None:
        """(items, scores [B, M]) of the items added after training, or None when there are none.

        A new item's last ID token was never a training target, so the model's likelihood of it
        says little (it mostly reflects how often that code ended IDs in training). Such an item
        is scored by the likelihood of its prefix, shared equally among the items under that
        prefix: log p(prefix | history) - log(items under the prefix), TIGER's retrieval of cold
        items by their semantic-ID prefix, made a score that ranks with the trained items.
        """
        start, model = self.trained_items, self.model
        if start >= self.num_items or not isinstance(model, GenerativeRecommender):
            return None
        codes = model.item_codes()
        levels = codes.shape[1] - 1
        items = torch.arange(start, self.num_items, device=codes.device)
        prefix = model.id_scores(batch, items, levels=levels)
        _, group, counts = torch.unique(codes[:, :levels], dim=0, return_inverse=True, return_counts=True)
        share = counts[group[items]].to(prefix.dtype).log()
        return items.tolist(), prefix - share[None, :].to(prefix.device)

    def _width(self, history: list[int], k: int, exclude_seen: bool) -> int:
        seen = len(set(history)) if exclude_seen else 0
        return min(self.num_items, max(self.list_length, k + seen))

    @property
    def uses_users(self) -> bool:
        """Whether the model reads a user token (T5 with hashed user buckets, as in TIGER)."""
        return bool(getattr(getattr(self.model, "network", None), "num_user_buckets", 0))

    def _user_ids(self, users: Sequence[Any] | None, count: int) -> Tensor:
        if not self.uses_users:
            return torch.zeros(count, dtype=torch.long)
        if users is None or self.users is None:
            raise InputError("this model reads a user token: pass users=[the raw user id of each history]")
        if len(users) != count:
            raise InputError(f"got {len(users)} users for {count} histories")
        index = {str(raw): int(i) for i, raw in zip(self.users["user"], self.users["user_raw"], strict=True)}
        unknown = [u for u in users if str(u) not in index]
        if unknown:
            raise InputError(f"users {unknown[:5]} are not in the training data the bundle was exported from")
        return torch.tensor([index[str(u)] for u in users], dtype=torch.long)

    def _batch(self, histories: list[list[int]], users: Tensor) -> dict[str, Tensor]:
        """Histories as the datamodule batches them: the most recent `max_history` items, oldest
        first, left-padded with the padding item (= catalogue size)."""
        length = int(getattr(self.model, "max_history", 20))
        pad = self.num_items
        history = torch.full((len(histories), length), pad, dtype=torch.long)
        for row, items in enumerate(histories):
            recent = items[-length:]
            history[row, length - len(recent) :] = torch.tensor(recent, dtype=torch.long)
        return {
            "history": history.to(self.device),
            "history_mask": (history != pad).to(self.device),
            "user": users.to(self.device),
            "target": torch.zeros(len(histories), dtype=torch.long, device=self.device),
        }

    def _result(
        self,
        ranking: Any,
        cold: tuple[list[int], Tensor] | None,
        row: int,
        history: list[int],
        k: int,
        exclude_seen: bool,
        unknown: list[Any],
    ) -> Recommendation:
        items = ranking.items[row].cpu().tolist()
        scores = ranking.scores[row].float().cpu().tolist()
        pairs = [(i, s) for i, s in zip(items, scores, strict=True) if i >= 0]
        if cold is not None:  # new items ranked by their prefix score, with the trained ones
            trained = [(i, s) for i, s in pairs if i < self.trained_items]
            new = list(zip(cold[0], cold[1][row].float().cpu().tolist(), strict=True))
            pairs = sorted(trained + new, key=lambda pair: -pair[1])
        seen = set(history) if exclude_seen else set()
        kept = [(i, s) for i, s in pairs if i not in seen][:k]
        raw = self.items["item_raw"]
        return Recommendation([raw[i] for i, _ in kept], [s for _, s in kept], list(unknown))

    # ------------------------------------------------------------------------------ new items
    def add_items(
        self,
        raw_ids: Sequence[Any],
        texts: Sequence[str] | None = None,
        embeddings: Tensor | np.ndarray | None = None,
    ) -> pl.DataFrame:
        """Add items the model never saw and make them recommendable; returns their IDs.

        Give the item texts (encoded with the bundle's frozen text encoder) or their embeddings
        from that encoder. Raises `InputError` for duplicate or known ids and when the model's
        vocabulary has no free ID for an item (e.g. a `suffix` level already full under its raw
        ID); nothing changes then. `save()` makes the addition permanent.
        """
        if not isinstance(self.model, GenerativeRecommender) or self.semantic_ids is None:
            raise InputError(
                f"{type(self.model).__name__} scores a fixed set of item ids: only a model that decodes "
                "semantic IDs (TIGER, UniGRec) can take new items without retraining"
            )
        raw_ids = [self._cast(r) for r in raw_ids]
        if not raw_ids:
            raise InputError("no items given")
        if self.items.schema["item_raw"].is_integer() and not all(isinstance(r, int) for r in raw_ids):
            wrong = [r for r in raw_ids if not isinstance(r, int)][:5]
            raise InputError(f"this catalogue's item ids are integers: new ids {wrong} are not")
        known = [r for r in raw_ids if r in self._index]
        if known or len(set(raw_ids)) != len(raw_ids):
            what = f"already in the catalogue: {known[:5]}" if known else "repeated"
            raise InputError(f"new item ids must be new and distinct; {what}")
        vectors = self._new_embeddings(raw_ids, texts, embeddings)
        raw_new = self._encode(vectors)
        codes = self._assign(raw_new)
        self._grow(codes, raw_new, vectors, raw_ids, list(texts) if texts is not None else None)
        first = self.num_items - len(raw_ids)
        return pl.DataFrame(
            {"item_raw": raw_ids, "item": range(first, self.num_items), "codes": codes.tolist()}
        )

    def _new_embeddings(self, raw_ids: list[Any], texts: Sequence[str] | None, embeddings: Any) -> Tensor:
        if (texts is None) == (embeddings is None):
            raise InputError("give the new items' texts or their embeddings (one of the two)")
        if texts is not None:
            if len(texts) != len(raw_ids) or not all(isinstance(t, str) and t.strip() for t in texts):
                raise InputError("give one non-empty text per new item")
            encoder = self._encoder()
            embeddings = encoder.encode(list(texts))
        vectors = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        dim = self.embeddings.shape[1] if self.embeddings is not None else None
        if vectors.ndim != 2 or len(vectors) != len(raw_ids) or (dim is not None and vectors.shape[1] != dim):
            raise InputError(
                f"embeddings must have shape ({len(raw_ids)}, {dim}), got {tuple(vectors.shape)}"
            )
        if not bool(torch.isfinite(vectors).all()):
            raise InputError("embeddings contain NaN or infinite values")
        return vectors

    def _encoder(self) -> Any:
        """The bundle's text encoder (the one its item embeddings came from), built on demand."""
        spec = self.meta.get("encoder")
        if not spec:
            raise InputError("the bundle records no text encoder: pass embeddings= instead of texts=")
        try:
            return import_object(spec["class_path"])(**spec.get("init_args", {}))
        except Exception as err:
            raise InputError(
                f"the bundle's text encoder {spec['class_path']} cannot be built here ({err}); "
                "pass embeddings= from that encoder instead of texts="
            ) from err

    def _tokenizer_of(self) -> torch.nn.Module:
        """The frozen tokenizer that made the IDs: UniGRec's own, else the one in the bundle."""
        if isinstance(self.model, UniGRecModule):
            return self.model.tokenizer
        if self._tokenizer is None:
            assert self.semantic_ids is not None
            spec = self.semantic_ids.meta.get(TOKENIZER_CONFIG_KEY)
            if spec is None or self.directory is None:
                raise InputError(
                    "the bundle's semantic IDs record no tokenizer (IDs made without one): new items "
                    "cannot be encoded"
                )
            tokenizer = build_tokenizer(spec)
            load_tokenizer_weights(tokenizer, self.directory / IDS_DIR)
            self._tokenizer = tokenizer.eval()
        return self._tokenizer

    @torch.no_grad()
    def _encode(self, vectors: Tensor) -> Tensor:
        tokenizer = self._tokenizer_of()
        device = next(iter(tokenizer.parameters()), torch.empty(0)).device
        return tokenizer.encode(vectors.to(device)).cpu().long()

    def _assign(self, raw_new: Tensor) -> Tensor:
        """Final IDs of new items under the bundle's dedup rule; existing IDs never change."""
        ids = self.semantic_ids
        assert ids is not None
        sizes = list(self.model.codebook_sizes)
        if ids.dedup == "suffix":
            new = extend_suffix(ids.raw_codes, raw_new)
            full = new[:, -1] >= sizes[-1]
            if bool(full.any()):
                row = int(full.nonzero()[0])
                raise InputError(
                    f"new item {row} shares its raw ID {raw_new[row].tolist()} with {int(new[row, -1])} "
                    f"items; the model's suffix level has {sizes[-1]} codes, so it cannot get a unique ID "
                    "without retraining (UniGRec: a larger suffix_capacity)"
                )
            return new
        if ids.dedup == "reassign_last":
            tokenizer = ids.meta.get(TOKENIZER_CONFIG_KEY) or {}
            seed = int((tokenizer.get("init_args") or {}).get("dedup_seed", 0)) + self.num_items
            try:
                return extend_reassign_last(ids.codes, raw_new, sizes[-1], seed)
            except ValueError as err:
                raise InputError(f"{err}: it cannot get a unique ID without retraining") from err
        return raw_new

    def _grow(
        self, codes: Tensor, raw: Tensor, vectors: Tensor, raw_ids: list[Any], texts: list[str] | None
    ) -> None:
        """Append the new items to the model's ID table, the catalogue and the embeddings."""
        ids, model = self.semantic_ids, self.model
        assert ids is not None and isinstance(model, GenerativeRecommender)
        table = torch.cat([ids.codes, codes])
        # What the table says about itself (sizes, statistics) is derived again when it is saved.
        meta = {k: v for k, v in ids.meta.items() if k not in TABLE_META}
        grown = SemanticIds(
            table, ids.codebook_sizes, raw_codes=torch.cat([ids.raw_codes, raw]), dedup=ids.dedup, meta=meta
        )  # type: ignore[arg-type]
        item_ids = ItemIdTable(len(table), model.codebook_sizes, fixed=model.item_ids.fixed).to(self.device)
        item_ids.store(table)
        model.item_ids = item_ids
        model.num_items = len(table)
        if self.embeddings is not None:
            self.embeddings = torch.cat([self.embeddings, vectors.cpu()])
        if isinstance(model, UniGRecModule):
            model.item_embeddings = self.embeddings.to(self.device)  # type: ignore[union-attr]
        start = self.items.height
        added = pl.DataFrame(
            {
                "item": range(start, start + len(raw_ids)),
                "item_raw": raw_ids,
                "text": texts if texts is not None else [f"Item {r}" for r in raw_ids],
            },
            schema=self.items.schema,
        )
        self.items = pl.concat([self.items, added])
        self._index.update({r: start + i for i, r in enumerate(raw_ids)})
        self.semantic_ids = grown
        self.meta = {**self.meta, "added_items": int(self.meta.get("added_items", 0)) + len(raw_ids)}

    # ------------------------------------------------------------------------------ saving
    def save(self, path: str | Path | None = None) -> Path:
        """Write the bundle (with any added items) to `path` (default: where it was loaded from);
        the directory is replaced only once the new bundle is complete."""
        target = Path(path) if path is not None else self.directory
        if target is None:
            raise InputError("this recommender was not loaded from a directory: pass save(path)")
        spec = copy.deepcopy(self.config["model"])
        spec.setdefault("init_args", {})["num_items"] = self.num_items
        tokenizer_state = None
        if isinstance(self.model, UniGRecModule):
            tokenizer_state = self.model.tokenizer.state_dict()
        elif self.semantic_ids is not None and self.directory is not None:
            stored = self.directory / IDS_DIR / TOKENIZER_FILE
            tokenizer_state = load_file(str(stored)) if stored.is_file() else None
        keep = {k: v for k, v in self.meta.items() if k not in ("files", "format", "num_items")}
        extra = {k: v for k, v in self.config.items() if k != "model"}
        device, dtype = self.device, next(self.model.parameters()).dtype
        self.model.to(device="cpu", dtype=torch.float32)  # a bundle holds float32 weights
        try:
            write_bundle(
                target,
                model=self.model,
                model_spec=spec,
                items=self.items,
                meta=keep,
                embeddings=self.embeddings,
                semantic_ids=self.semantic_ids,
                tokenizer_state=tokenizer_state,
                extra_config=extra,
                users=self.users,
            )
        finally:
            self.model.to(device=device, dtype=dtype)
        self.directory = target
        return target


__all__ = ["InputError", "Recommendation", "Recommender", "UnknownItemsError", "build_model"]
