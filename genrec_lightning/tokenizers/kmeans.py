"""k-means with faiss, and the two training-free tokenizers built on it (residual and product k-means).

`kmeans` always clusters *all* rows it is given (faiss would otherwise subsample to 256 points per
centroid), because the semantic-ID quality of small clusters depends on every item. The helpers
`residual_kmeans`/`residual_assign` and `product_kmeans`/`product_assign` are shared with the
trainable quantizers, which use them to initialise and to read out hard codes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from genrec_lightning.errors import ConfigError

try:
    import faiss
except ImportError as err:  # pragma: no cover - faiss-cpu is a hard dependency
    raise ImportError(
        "genrec_lightning.tokenizers needs faiss: pip install faiss-cpu (or faiss-gpu)"
    ) from err

DEFAULT_CHUNK_SIZE = 16384


def check_codebooks(owner: str, num_levels: int, codebook_size: int) -> None:
    """Refuse level/codebook settings that cannot give distinct IDs, at construction (before fitting).

    One code per level gives every item the same token there: a one-code codebook would be accepted
    by k-means and training, and only show up as a collision rate near 1 after the whole stage.
    """
    if num_levels < 1:
        raise ConfigError(f"{owner}: num_levels must be >= 1, got {num_levels}; set it to 1 or more")
    if codebook_size < 2:
        raise ConfigError(
            f"{owner}: codebook_size must be >= 2, got {codebook_size}; set it to 2 or more (e.g. 256)"
        )


def faiss_gpus() -> int:
    """GPUs the installed faiss can use: 0 with the faiss-cpu build or without a visible GPU."""
    count = getattr(faiss, "get_num_gpus", None)
    try:
        return int(count()) if count is not None else 0
    except RuntimeError:  # a GPU build on a machine whose driver is missing
        return 0


def _check_matrix(x: Tensor, what: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-d [N, d] tensor, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty (0 rows): nothing to cluster")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{what} contains NaN/inf values in {bad} of {x.shape[0]} rows; fix the embeddings")


def squared_distances(x: Tensor, centroids: Tensor) -> Tensor:
    """Squared L2 distances [N, K] between rows of x [N, d] and centroids [K, d].

    Expanded as |x|^2 - 2 x.c + |c|^2 (one matmul, no [N, K, d] intermediate) and computed in at
    least float32 with autocast off: soft assignment divides these by tau = 1e-3, which would blow
    bf16 rounding up into wrong probabilities. Differentiable in both arguments.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, centroids.dtype), torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, centroids = x.to(dtype), centroids.to(dtype)
        dist = x.pow(2).sum(-1, keepdim=True) - 2.0 * (x @ centroids.T) + centroids.pow(2).sum(-1)
        return dist.clamp_min(0.0)


@torch.no_grad()
def nearest(x: Tensor, centroids: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Index [N] (long) of the nearest centroid [K, d] for each row of x [N, d].

    Chunked over rows so a 100k-item table never materialises a full [N, K] distance matrix.
    """
    if x.shape[-1] != centroids.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]}-d rows but the centroids are {centroids.shape[-1]}-d")
    centroids = centroids.to(x.device)
    out = [squared_distances(chunk, centroids).argmin(dim=1) for chunk in x.split(chunk_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)


def kmeans(x: Tensor, k: int, *, niter: int = 25, seed: int = 0) -> Tensor:
    """Centroids [k, d] of faiss k-means on *all* rows of x [N, d], on x's device and dtype.

    With N <= k faiss cannot run; then every distinct point becomes a centroid and the remaining
    codes are copies of random points plus small seeded Gaussian noise, so all k codes exist.
    Runs on GPU faiss whenever the installed build sees a GPU (the `gpu` extra), else on CPU.
    Deterministic for a fixed seed on one device; GPU and CPU centroids differ slightly (other
    float summation order), so IDs built on either agree up to near-ties, not bit for bit.
    """
    _check_matrix(x, "k-means input")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if niter < 1:
        raise ValueError(f"niter must be >= 1, got {niter}")
    n, d = x.shape
    data = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    if n <= k:
        centroids = _fill_centroids(data, k, seed)
    else:
        use_gpu = faiss_gpus() > 0
        km = faiss.Kmeans(
            d,
            k,
            niter=niter,
            seed=seed,
            verbose=False,
            gpu=use_gpu,
            # no "too few points" warning, and no subsampling: every row takes part
            min_points_per_centroid=1,
            max_points_per_centroid=-(-n // k),
        )
        km.train(data)
        centroids = km.centroids
    return torch.from_numpy(np.array(centroids, dtype=np.float32)).to(device=x.device, dtype=x.dtype)


def _fill_centroids(data: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The distinct points (first-occurrence order) plus noisy copies of random ones, [k, d]."""
    _, first = np.unique(data, axis=0, return_index=True)
    distinct = data[np.sort(first)]
    missing = k - len(distinct)
    if missing == 0:
        return distinct
    rng = np.random.default_rng(seed)
    scale = 1e-3 * (float(data.std()) or 1.0)
    extra = distinct[rng.integers(0, len(distinct), size=missing)]
    extra = extra + scale * rng.standard_normal(extra.shape).astype(np.float32)
    return np.concatenate([distinct, extra.astype(np.float32)])


def residual_kmeans(
    x: Tensor, num_levels: int, codebook_size: int, *, niter: int = 25, seed: int = 0
) -> Tensor:
    """Residual k-means codebooks [L, K, d]: level l clusters the hard residuals of all rows of x [N, d]."""
    residual = x.detach()
    levels = []
    for level in range(num_levels):
        centroids = kmeans(residual, codebook_size, niter=niter, seed=seed + level)
        residual = residual - centroids[nearest(residual, centroids)]
        levels.append(centroids)
    return torch.stack(levels)


@torch.no_grad()
def residual_assign(x: Tensor, codebooks: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Hard residual codes [N, L] of x [N, d] under codebooks [L, K, d] (nearest code, then subtract it)."""
    residual = x
    codes = []
    for book in codebooks:
        level_codes = nearest(residual, book, chunk_size)
        residual = residual - book[level_codes].to(residual.dtype)
        codes.append(level_codes)
    return torch.stack(codes, dim=1)


def split_segments(x: Tensor, num_levels: int) -> Tensor:
    """View x [N, d] as L equal segments [N, L, d / L] (product quantisation)."""
    if x.shape[-1] % num_levels:
        raise ValueError(f"cannot split {x.shape[-1]}-d vectors into {num_levels} equal segments")
    return x.reshape(*x.shape[:-1], num_levels, x.shape[-1] // num_levels)


def product_kmeans(
    x: Tensor, num_levels: int, codebook_size: int, *, niter: int = 25, seed: int = 0
) -> Tensor:
    """Product k-means codebooks [L, K, d / L]: one independent k-means per segment over all rows."""
    segments = split_segments(x.detach(), num_levels)
    return torch.stack(
        [
            kmeans(segments[:, level], codebook_size, niter=niter, seed=seed + level)
            for level in range(num_levels)
        ]
    )


@torch.no_grad()
def product_assign(x: Tensor, codebooks: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Product codes [N, L] of x [N, d]: nearest code of each segment in its own codebook [L, K, d / L]."""
    segments = split_segments(x, codebooks.shape[0])
    return torch.stack(
        [nearest(segments[:, level], book, chunk_size) for level, book in enumerate(codebooks)], 1
    )


def _divisors(n: int, limit: int = 16) -> list[int]:
    return [m for m in range(1, limit + 1) if n % m == 0]


class _KMeansTokenizer(nn.Module):
    """Shared state of the training-free tokenizers: centroids and a `fitted` flag, both in state_dict."""

    trainable = False

    def __init__(
        self, input_dim: int, num_levels: int, codebook_size: int, code_dim: int, niter: int, seed: int
    ) -> None:
        super().__init__()
        check_codebooks(type(self).__name__, num_levels, codebook_size)
        if input_dim < 1:
            raise ConfigError(f"{type(self).__name__}: input_dim must be >= 1, got {input_dim}")
        self.input_dim = input_dim
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.niter = niter
        self.seed = seed
        self.register_buffer("centroids", torch.zeros(num_levels, codebook_size, code_dim))
        self.register_buffer("fitted", torch.tensor(False))

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"the data gives {x.shape[-1]}-d item embeddings (shape {tuple(x.shape)}) but "
                f"{type(self).__name__} expects {self.input_dim}-d (input_dim={self.input_dim}); "
                "link input_dim to the data"
            )

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(item_embeddings) first")

    def _check_codes(self, codes: Tensor) -> None:
        if codes.ndim != 2 or codes.shape[1] != self.num_levels:
            raise ValueError(f"codes must have shape [N, {self.num_levels}], got {tuple(codes.shape)}")

    #: k-means over all rows -> centroids [L, K, d], and the matching nearest-code assignment.
    _fit_centroids: Callable[..., Tensor]
    _assign: Callable[[Tensor, Tensor], Tensor]

    @torch.no_grad()
    def fit(self, x: Tensor) -> _KMeansTokenizer:
        """Fit every codebook on all rows of x [N, input_dim]; returns self."""
        self._check_input(x)
        _check_matrix(x, "item embeddings")
        fit = type(self)._fit_centroids
        self.centroids.copy_(
            fit(x.float(), self.num_levels, self.codebook_size, niter=self.niter, seed=self.seed)
        )
        self.fitted.fill_(True)
        return self

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes [N, L] (long) of x [N, input_dim]."""
        self._check_fitted()
        self._check_input(x)
        return type(self)._assign(x.to(self.centroids.dtype), self.centroids.to(x.device))


class RQKMeans(_KMeansTokenizer):
    """Residual k-means semantic IDs (OneRec-style): no training loop, one k-means per level.

    Level l clusters the residuals left by levels < l, so codes go from coarse to fine.
    """

    def __init__(
        self, input_dim: int, num_levels: int = 3, codebook_size: int = 256, niter: int = 25, seed: int = 0
    ) -> None:
        """
        Args:
            input_dim: size of the item embeddings (linked from the data).
            num_levels: number of codebooks L, i.e. tokens per item.
            codebook_size: codes per codebook K.
            niter: k-means iterations per level.
            seed: k-means seed (level l uses seed + l).
        """
        super().__init__(input_dim, num_levels, codebook_size, input_dim, niter, seed)

    _fit_centroids = staticmethod(residual_kmeans)
    _assign = staticmethod(residual_assign)

    @torch.no_grad()
    def reconstruct(self, codes: Tensor) -> Tensor:
        """Sum of the selected centroids [N, input_dim] for codes [N, L]."""
        self._check_codes(codes)
        levels = torch.arange(self.num_levels, device=codes.device)
        return self.centroids.to(codes.device)[levels, codes].sum(dim=1)


class PQKMeans(_KMeansTokenizer):
    """Product-quantisation semantic IDs: L equal embedding segments, each with its own k-means codebook.

    This is the PQ variant of the token-weighting paper (§5.2.3); token l describes segment l only.
    """

    def __init__(
        self, input_dim: int, num_levels: int = 4, codebook_size: int = 256, niter: int = 25, seed: int = 0
    ) -> None:
        """
        Args:
            input_dim: size of the item embeddings (linked from the data); must be divisible by num_levels.
            num_levels: number of segments L, i.e. tokens per item.
            codebook_size: codes per segment codebook K.
            niter: k-means iterations per segment.
            seed: k-means seed (segment l uses seed + l).
        """
        check_codebooks(type(self).__name__, num_levels, codebook_size)
        if input_dim % num_levels:
            raise ConfigError(
                f"PQKMeans splits the {input_dim}-d embedding into num_levels={num_levels} equal segments, "
                f"so num_levels must divide input_dim; pick one of {_divisors(input_dim)}"
            )
        super().__init__(input_dim, num_levels, codebook_size, input_dim // num_levels, niter, seed)

    _fit_centroids = staticmethod(product_kmeans)
    _assign = staticmethod(product_assign)

    @torch.no_grad()
    def reconstruct(self, codes: Tensor) -> Tensor:
        """Concatenation of the selected segment centroids [N, input_dim] for codes [N, L]."""
        self._check_codes(codes)
        levels = torch.arange(self.num_levels, device=codes.device)
        return self.centroids.to(codes.device)[levels, codes].flatten(1)
