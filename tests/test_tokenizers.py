"""Tokenizer maths against independent references: brute-force loops, manual losses, all-points k-means."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from genrec_lightning.tokenizers import (
    MLP,
    RQVAE,
    PQKMeans,
    ProductQuantizer,
    ResidualQuantizer,
    RQKMeans,
    SoftResidualQuantizer,
    Tokenizer,
    kmeans,
    nearest,
    squared_distances,
    uniformity_loss,
)

# the package re-exports the function kmeans(), which shadows the submodule name
kmeans_module = importlib.import_module("genrec_lightning.tokenizers.kmeans")


def clustered(
    num_clusters: int = 8, per_cluster: int = 50, dim: int = 16, spread: float = 0.1, seed: int = 0
):
    """Points around `num_clusters` random centres, [num_clusters * per_cluster, dim]."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, dim, generator=gen) * 3
    points = centres.repeat_interleave(per_cluster, 0) + spread * torch.randn(
        num_clusters * per_cluster, dim, generator=gen
    )
    return points[torch.randperm(len(points), generator=gen)]


def brute_nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.tensor([int(((row - centroids) ** 2).sum(1).argmin()) for row in x])


def brute_residual(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """Per-row, per-level loop: codes [N, L] and the residual v_l seen at each level."""
    codes, residuals = [], []
    for row in x:
        v, row_codes, row_res = row.clone(), [], []
        for book in codebooks:
            c = int(((v - book) ** 2).sum(1).argmin())
            row_codes.append(c)
            row_res.append(v.clone())
            v = v - book[c]
        codes.append(row_codes)
        residuals.append(row_res)
    return torch.tensor(codes), residuals


def record_kmeans_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap kmeans() so each call records how many rows it clustered."""
    rows: list[int] = []
    original = kmeans_module.kmeans

    def wrapped(x, k, **kwargs):
        rows.append(x.shape[0])
        return original(x, k, **kwargs)

    monkeypatch.setattr(kmeans_module, "kmeans", wrapped)
    return rows


# ---------------------------------------------------------------- distances, nearest, kmeans


def test_squared_distances_and_nearest_match_brute_force():
    gen = torch.Generator().manual_seed(1)
    x, c = torch.randn(300, 12, generator=gen), torch.randn(20, 12, generator=gen)
    expected = ((x[:, None] - c[None]) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(x, c), expected, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # stays float32 under autocast
        dist = squared_distances(x, c)
    assert dist.dtype == torch.float32
    torch.testing.assert_close(dist, expected, atol=1e-5, rtol=1e-5)
    codes = nearest(x, c, chunk_size=7)  # many chunks
    assert codes.dtype == torch.long
    assert torch.equal(codes, brute_nearest(x, c))


def test_kmeans_shape_dtype_and_determinism():
    x = clustered().double()
    a = kmeans(x, 8, niter=10, seed=3)
    assert a.shape == (8, 16) and a.dtype == torch.float64 and a.device == x.device
    assert torch.equal(a, kmeans(x, 8, niter=10, seed=3))


@pytest.mark.parametrize("gpus", [0, 1])
def test_kmeans_runs_on_gpu_faiss_when_the_build_sees_a_gpu(
    monkeypatch: pytest.MonkeyPatch, gpus: int
) -> None:
    import faiss

    seen: list[bool] = []
    real = faiss.Kmeans

    def recording(*args, gpu: bool = False, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(gpu)
        return real(*args, **kwargs)  # train on CPU here whatever was asked

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: gpus)
    monkeypatch.setattr(faiss, "Kmeans", recording)
    assert kmeans_module.faiss_gpus() == gpus
    kmeans(clustered(), 8, niter=2)
    assert seen == [bool(gpus)]


def test_kmeans_uses_all_rows():
    # k = 1: the centroid is the mean of whatever faiss trained on; faiss' default would subsample 256 rows.
    x = (
        torch.randn(5000, 4, generator=torch.Generator().manual_seed(0))
        + torch.arange(5000.0)[:, None] / 1000
    )
    torch.testing.assert_close(kmeans(x, 1)[0], x.mean(0), atol=1e-4, rtol=0)


def test_kmeans_centroids_are_means_of_all_assigned_points():
    # Lloyd's fixed point over the full set: each centroid is the mean of every point assigned to it.
    x = clustered(num_clusters=6, per_cluster=400, dim=8)
    centroids = kmeans(x, 6, niter=50)
    codes = nearest(x, centroids)
    for k in codes.unique():
        torch.testing.assert_close(centroids[k], x[codes == k].mean(0), atol=1e-4, rtol=0)


def test_kmeans_fewer_points_than_codes():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x, x[:2]])  # 7 rows, 5 distinct
    centroids = kmeans(x, 16, seed=1)
    assert centroids.shape == (16, 3) and torch.isfinite(centroids).all()
    assert torch.equal(centroids[:5], x[:5])  # every distinct point is a code
    assert torch.cdist(centroids, centroids).add(torch.eye(16)).min() > 0  # all codes distinct
    assert torch.equal(centroids, kmeans(x, 16, seed=1))


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        kmeans(torch.empty(0, 4), 2)
    x = torch.randn(10, 4)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        kmeans(x, 2)


# ---------------------------------------------------------------- RQKMeans / PQKMeans


def test_rqkmeans_fit_encode_deterministic_and_roundtrip():
    x = clustered()
    model = RQKMeans(16, num_levels=3, codebook_size=8, niter=10, seed=2).fit(x)
    codes = model.encode(x)
    assert codes.shape == (len(x), 3) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 8
    assert torch.equal(codes, brute_residual(x, model.centroids)[0])
    again = RQKMeans(16, num_levels=3, codebook_size=8, niter=10, seed=2).fit(x)
    assert torch.equal(model.centroids, again.centroids)
    restored = RQKMeans(16, num_levels=3, codebook_size=8)
    restored.load_state_dict(model.state_dict())
    assert bool(restored.fitted) and torch.equal(restored.encode(x), codes)


def test_rqkmeans_error_decreases_with_levels():
    x = clustered(spread=0.5)
    errors = []
    for levels in (1, 2, 3):
        model = RQKMeans(16, num_levels=levels, codebook_size=8, niter=10).fit(x)
        errors.append(float(((model.reconstruct(model.encode(x)) - x) ** 2).mean()))
    assert errors[0] > errors[1] > errors[2]


def test_rqkmeans_all_rows_per_level_and_few_points(monkeypatch):
    rows = record_kmeans_rows(monkeypatch)
    x = clustered(per_cluster=30)
    RQKMeans(16, num_levels=3, codebook_size=8, niter=5).fit(x)
    assert rows == [len(x)] * 3
    small = torch.randn(10, 16)
    model = RQKMeans(16, num_levels=2, codebook_size=32).fit(small)
    codes = model.encode(small)
    assert int(codes.max()) < 32
    torch.testing.assert_close(model.reconstruct(codes), small, atol=1e-5, rtol=0)


def test_kmeans_tokenizers_reject_bad_use():
    model = RQKMeans(16, codebook_size=4)
    with pytest.raises(RuntimeError, match="fit"):
        model.encode(torch.randn(3, 16))
    with pytest.raises(ValueError, match=r"12-d.*16-d"):
        model.fit(torch.randn(30, 12))
    nan = torch.randn(30, 16)
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.fit(nan)
    with pytest.raises(ValueError, match="num_levels"):
        PQKMeans(10, num_levels=4)


def test_pqkmeans_codes_are_per_segment_nearest(monkeypatch):
    rows = record_kmeans_rows(monkeypatch)
    x = clustered(dim=12)
    model = PQKMeans(12, num_levels=3, codebook_size=8, niter=10).fit(x)
    assert rows == [len(x)] * 3 and model.centroids.shape == (3, 8, 4)
    codes = model.encode(x)
    for level in range(3):
        assert torch.equal(
            codes[:, level], brute_nearest(x[:, 4 * level : 4 * level + 4], model.centroids[level])
        )
    expected = torch.cat([model.centroids[level][codes[:, level]] for level in range(3)], dim=1)
    torch.testing.assert_close(model.reconstruct(codes), expected)
    assert torch.equal(PQKMeans(12, num_levels=3, codebook_size=8, niter=10).fit(x).encode(x), codes)


# ---------------------------------------------------------------- quantizers


def make_codebooks(quantizer, seed: int = 0, scale: float = 1.0):
    with torch.no_grad():
        quantizer.codebooks.copy_(
            torch.randn(quantizer.codebooks.shape, generator=torch.Generator().manual_seed(seed))
        )
        quantizer.codebooks.mul_(scale)
    return quantizer


@pytest.mark.parametrize(
    "quantizer", [ResidualQuantizer(8, 3, 5), SoftResidualQuantizer(8, 3, 5), ProductQuantizer(8, 4, 5)]
)
def test_quantizer_output_shapes(quantizer):
    out = quantizer(torch.randn(6, 8))
    assert out.quantized.shape == (6, 8)
    assert out.codes.shape == (6, quantizer.num_levels) and out.codes.dtype == torch.long
    assert out.loss.ndim == 0
    assert quantizer.encode(torch.randn(6, 8)).shape == (6, quantizer.num_levels)
    if isinstance(quantizer, SoftResidualQuantizer):
        assert out.probs.shape == (6, 3, 5) and set(out.terms) == {"uniformity"}
        torch.testing.assert_close(out.probs.sum(-1), torch.ones(6, 3))
        torch.testing.assert_close(out.log_probs.exp(), out.probs)
    else:
        assert out.probs is None and set(out.terms) == {"codebook", "commitment"}
    with pytest.raises(ValueError, match="latents"):
        quantizer(torch.randn(6, 9))


def test_hard_residual_codes_quantized_and_loss_match_manual():
    quantizer = make_codebooks(ResidualQuantizer(6, num_levels=3, codebook_size=7, beta=0.3))
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(5))
    out = quantizer(x)
    codes, residuals = brute_residual(x, quantizer.codebooks.detach())
    assert torch.equal(out.codes, codes)
    assert torch.equal(quantizer.encode(x), codes)
    books = quantizer.codebooks.detach()
    chosen = [torch.stack([books[level, codes[i, level]] for i in range(40)]) for level in range(3)]
    torch.testing.assert_close(out.quantized, sum(chosen), atol=1e-5, rtol=0)
    expected = 0.0
    for level in range(3):
        v = torch.stack([residuals[i][level] for i in range(40)])
        mse = float(((chosen[level] - v) ** 2).sum()) / v.numel()
        expected += mse + 0.3 * mse
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-5)


def test_hard_residual_gradients():
    quantizer = make_codebooks(ResidualQuantizer(6, num_levels=2, codebook_size=16))
    x = torch.randn(10, 6, requires_grad=True)
    out = quantizer(x)
    out.quantized.sum().backward(retain_graph=True)
    torch.testing.assert_close(x.grad, torch.ones_like(x))  # straight-through
    assert quantizer.codebooks.grad is None  # the decoder path never reaches the codebooks
    x.grad = None
    out.loss.backward()
    assert x.grad.abs().sum() > 0  # commitment
    grad_rows = quantizer.codebooks.grad.abs().sum(-1) > 0  # [L, K]: exactly the used codes
    used = torch.zeros(2, 16, dtype=torch.bool)
    used[torch.arange(2), out.codes] = True
    assert torch.equal(grad_rows, used)


def test_soft_quantizer_tends_to_hard_assignment():
    hard = make_codebooks(ResidualQuantizer(6, num_levels=3, codebook_size=9))
    soft = SoftResidualQuantizer(6, num_levels=3, codebook_size=9, temperature=1e-6)
    soft.load_state_dict(hard.state_dict())
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(3))
    hard_out, soft_out = hard(x), soft(x)
    assert torch.equal(soft_out.codes, hard_out.codes)
    assert torch.equal(soft.encode(x), hard.encode(x))
    torch.testing.assert_close(soft_out.quantized, hard_out.quantized, atol=1e-5, rtol=0)
    one_hot = F.one_hot(hard_out.codes, 9).float()
    torch.testing.assert_close(soft_out.probs, one_hot, atol=1e-5, rtol=0)


def test_soft_quantizer_loss_gradients_and_small_temperature():
    soft = make_codebooks(SoftResidualQuantizer(6, num_levels=2, codebook_size=8, uniformity_weight=0.5))
    x = torch.randn(20, 6, requires_grad=True)
    out = soft(x)
    torch.testing.assert_close(out.loss, 0.5 * uniformity_loss(out.probs))
    torch.testing.assert_close(out.terms["uniformity"], uniformity_loss(out.probs))
    out.quantized.pow(2).sum().backward()  # reconstruction-like path alone reaches both
    assert x.grad.abs().sum() > 0 and soft.codebooks.grad.abs().sum() > 0
    soft.temperature = 1e-3
    x = (10 * torch.randn(20, 6)).requires_grad_()
    out = soft(x)
    (out.quantized.sum() + out.loss).backward()
    assert torch.isfinite(out.quantized).all() and torch.isfinite(out.log_probs).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(soft.codebooks.grad).all()


def eq14_probs(x: torch.Tensor, books: torch.Tensor, taus: list[float]) -> torch.Tensor:
    """UniGRec eq. 14 by loops: level l's softmax of -|r - e|^2 / tau_l, r the soft residual."""
    residual, out = x.clone(), []
    for level, book in enumerate(books):
        logits = torch.stack([-((residual - e) ** 2).sum(-1) / taus[level] for e in book], dim=-1)
        probs = torch.softmax(logits, dim=-1)
        out.append(probs)
        residual = residual - probs @ book
    return torch.stack(out, dim=1)


def test_relative_temperature_with_unit_scale_is_eq14_and_otherwise_scale_free():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 6, generator=gen)
    plain = make_codebooks(SoftResidualQuantizer(6, num_levels=2, codebook_size=8, temperature=0.3)).eval()
    relative = SoftResidualQuantizer(
        6, num_levels=2, codebook_size=8, temperature=0.3, relative_temperature=True
    )
    relative.load_state_dict(plain.state_dict())  # distance_scale: ones
    relative.eval()
    torch.testing.assert_close(relative(x).probs, plain(x).probs)
    torch.testing.assert_close(plain(x).probs, eq14_probs(x, plain.codebooks.detach(), [0.3, 0.3]))

    # k-means init sets each level's unit to the mean squared distance to the nearest code (hard residual)
    relative.init_codebooks(x)
    residual, expected = x, []
    for book in relative.codebooks.detach():
        d = torch.stack([((residual - e) ** 2).sum(-1) for e in book], dim=-1)
        expected.append(d.min(-1).values.mean())
        residual = residual - book[d.argmin(-1)]
    torch.testing.assert_close(relative.distance_scale, torch.stack(expected))
    scale = relative.distance_scale.tolist()
    torch.testing.assert_close(
        relative(x).probs, eq14_probs(x, relative.codebooks.detach(), [0.3 * s for s in scale])
    )
    # latents and codebooks 10x larger: the same assignment distributions (eq. 14 would sharpen them)
    big = SoftResidualQuantizer(6, num_levels=2, codebook_size=8, temperature=0.3, relative_temperature=True)
    big.init_codebooks(10 * x)
    big.eval()
    torch.testing.assert_close(big.distance_scale, 100 * relative.distance_scale)
    torch.testing.assert_close(big(10 * x).probs, relative(x).probs, atol=1e-5, rtol=1e-4)


def test_distance_scale_follows_training_batches_only():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(30, 6, generator=gen)
    soft = SoftResidualQuantizer(6, num_levels=2, codebook_size=8, relative_temperature=True)
    soft.init_codebooks(x)
    before = soft.distance_scale.clone()
    soft.eval()
    soft(3 * x)
    assert torch.equal(soft.distance_scale, before)  # evaluation leaves it alone
    soft.train()
    soft(3 * x, update_scale=False)
    assert torch.equal(soft.distance_scale, before)  # so do projected (non-item) vectors
    batch = 3 * x
    out = soft(batch)
    # level 1 sees the soft residual of level 0, computed with level 0's updated scale
    residual, expected = batch, []
    for level, book in enumerate(soft.codebooks.detach()):
        d = squared_distances(residual, book)
        expected.append(0.9 * before[level] + 0.1 * d.min(-1).values.mean())
        residual = residual - out.probs[:, level] @ book
    torch.testing.assert_close(soft.distance_scale, torch.stack(expected))
    # weights saved before the buffer existed load as eq. 14 (unit scale)
    state = {k: v for k, v in soft.state_dict().items() if k != "distance_scale"}
    fresh = SoftResidualQuantizer(6, num_levels=2, codebook_size=8, relative_temperature=True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.distance_scale, torch.ones(2))


def test_soft_temperature_is_validated():
    soft = SoftResidualQuantizer(4, codebook_size=3)
    soft.temperature = 0.002
    assert soft.temperature == 0.002
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            soft.temperature = bad
    with pytest.raises(ValueError, match="temperature"):
        SoftResidualQuantizer(4, temperature=0.0)


def test_uniformity_loss_matches_loops_and_is_minimal_when_uniform():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 2, 3, generator=gen)
    probs[:, 1, 2] = 0.0  # an unused code: p̄ = 0 must contribute 0, not NaN
    probs = probs / probs.sum(-1, keepdim=True)
    expected = 0.0
    for level in range(2):
        for k in range(3):
            mean = sum(float(probs[b, level, k]) for b in range(4)) / 4
            if mean > 0:
                expected += mean * math.log(mean)
    probs.requires_grad_()
    loss = uniformity_loss(probs)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    assert torch.isfinite(probs.grad).all()
    uniform = torch.full((5, 3, 8), 1 / 8)
    minimum = -3 * math.log(8)
    assert math.isclose(float(uniformity_loss(uniform)), minimum, rel_tol=1e-6)
    random = torch.softmax(torch.randn(5, 3, 8, generator=gen), -1)
    assert float(uniformity_loss(random)) > minimum


def test_product_quantizer_matches_per_segment_brute_force():
    quantizer = make_codebooks(ProductQuantizer(8, num_levels=4, codebook_size=6, beta=0.25))
    x = torch.randn(30, 8, requires_grad=True)
    out = quantizer(x)
    books = quantizer.codebooks.detach()
    expected_loss = 0.0
    for level in range(4):
        segment = x.detach()[:, 2 * level : 2 * level + 2]
        codes = brute_nearest(segment, books[level])
        assert torch.equal(out.codes[:, level], codes)
        torch.testing.assert_close(out.quantized[:, 2 * level : 2 * level + 2], books[level][codes])
        expected_loss += 1.25 * float(((books[level][codes] - segment) ** 2).mean())
    assert math.isclose(out.loss.item(), expected_loss, rel_tol=1e-5)
    assert torch.equal(quantizer.encode(x.detach()), out.codes)
    out.quantized.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    with pytest.raises(ValueError, match="divisible"):
        ProductQuantizer(10, num_levels=4)


@pytest.mark.parametrize(
    ("quantizer", "rows_per_level"),
    [(ResidualQuantizer(8, 3, 6, kmeans_iters=50), 3), (ProductQuantizer(8, 2, 6, kmeans_iters=50), 2)],
)
def test_init_codebooks_uses_all_latents(monkeypatch, quantizer, rows_per_level):
    rows = record_kmeans_rows(monkeypatch)
    x = clustered(num_clusters=6, per_cluster=300, dim=8)
    quantizer.init_codebooks(x)
    assert rows == [len(x)] * rows_per_level and bool(quantizer.initialized)
    # level/segment 0 is Lloyd's fixed point over the full set
    first = x if isinstance(quantizer, ResidualQuantizer) else x[:, :4]
    codes = quantizer.encode(x)[:, 0]
    for k in codes.unique():
        torch.testing.assert_close(quantizer.codebooks[0, k], first[codes == k].mean(0), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- RQ-VAE


def test_mlp_layout():
    mlp = MLP([4, 8, 8, 2], dropout=0.1)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [type(m).__name__ for m in MLP([4, 2])] == ["Linear"]


def test_rqvae_forward_encode_and_errors(monkeypatch):
    model = RQVAE(16, hidden_dims=[12], latent_dim=6, quantizer=ResidualQuantizer, dropout=0.2, chunk_size=7)
    assert (model.num_levels, model.codebook_size, model.input_dim, model.trainable) == (3, 256, 16, True)
    z = clustered(per_cluster=10)
    out = model(z)
    assert out.recon.shape == z.shape and out.codes.shape == (80, 3)
    torch.testing.assert_close(out.loss, out.recon_loss + out.quant_loss)
    torch.testing.assert_close(out.recon_loss, F.mse_loss(out.recon, z))
    assert set(out.terms) == {"recon", "codebook", "commitment"}
    model.train()
    codes = model.encode(z)  # eval mode inside (no dropout), chunked, training flag restored
    assert model.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(codes, model.quantizer.encode(model.latent(z)))
    with pytest.raises(ValueError, match=r"12-d.*16-d"):
        model(torch.randn(3, 12))
    with pytest.raises(ValueError, match=r"12-d.*16-d"):
        model.encode(torch.randn(3, 12))
    with pytest.raises(AttributeError, match="SoftResidualQuantizer"):
        _ = model.temperature
    with pytest.raises(AttributeError, match="SoftResidualQuantizer"):
        model.temperature = 0.1
    rows = record_kmeans_rows(monkeypatch)
    model.init_codebooks(z)
    assert rows == [80, 80, 80]


def test_rqvae_soft_temperature_forwarding_and_gradients():
    model = RQVAE(16, hidden_dims=[12], latent_dim=6, quantizer=SoftResidualQuantizer)
    assert model.temperature == 0.01
    model.temperature = 0.005
    assert model.quantizer.temperature == 0.005
    model.init_codebooks(clustered())
    out = model(clustered(seed=1))
    out.recon_loss.backward()  # reconstruction alone trains encoder and codebooks
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.quantizer.codebooks.grad.abs().sum() > 0


def test_rqvae_hard_gradient_paths():
    model = RQVAE(16, hidden_dims=[12], latent_dim=6)
    model.init_codebooks(clustered())
    out = model(clustered(seed=1))
    out.recon_loss.backward(retain_graph=True)
    assert model.encoder[0].weight.grad.abs().sum() > 0  # straight-through
    assert model.quantizer.codebooks.grad is None
    out.quant_loss.backward()
    assert model.quantizer.codebooks.grad.abs().sum() > 0


@pytest.mark.parametrize("quantizer", [ResidualQuantizer, SoftResidualQuantizer, ProductQuantizer])
def test_rqvae_training_lowers_loss(quantizer):
    torch.manual_seed(0)
    z = clustered(num_clusters=16, per_cluster=16, dim=16) / 3  # roughly unit-scale embeddings
    model = RQVAE(16, hidden_dims=[32], latent_dim=8, quantizer=lambda d: quantizer(d, 2, 8))
    model.init_codebooks(z)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(model(z).loss)
    for _ in range(300):
        optimizer.zero_grad()
        model(z).loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(model(z).loss)
    assert after < 0.5 * before


def test_rqvae_standardizes_with_all_item_statistics():
    z = clustered(num_clusters=4, per_cluster=30, dim=12) * 0.01 + 5.0
    model = RQVAE(12, hidden_dims=[16], latent_dim=4, quantizer=lambda d: ResidualQuantizer(d, 2, 4))
    model.fit_normalization(z)
    torch.testing.assert_close(model.input_mean, z.mean(0))
    torch.testing.assert_close(model.input_std, z.std(0))
    target = (z - z.mean(0)) / z.std(0)
    out = model(z)
    torch.testing.assert_close(out.recon_loss, F.mse_loss(out.recon, target))
    torch.testing.assert_close(out.recon_error, ((out.recon - target) ** 2).mean(1))
    torch.testing.assert_close(model.latent(z), model.encoder(target))
    raw = RQVAE(12, hidden_dims=[16], latent_dim=4, standardize=False)
    torch.testing.assert_close(raw(z).recon_loss, F.mse_loss(raw(z).recon, z))
    with pytest.raises(ValueError, match="NaN"):
        model.fit_normalization(torch.full((3, 12), float("nan")))


def test_tokenizer_protocol():
    for tokenizer in (RQVAE(8, hidden_dims=[4], latent_dim=4), RQKMeans(8), PQKMeans(8)):
        assert isinstance(tokenizer, Tokenizer)
    assert not RQKMeans(8).trainable
    assert not isinstance(torch.nn.Linear(2, 2), Tokenizer)


def test_rqvae_quantizer_from_yaml():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(RQVAE, "model")
    cfg = parser.parse_string(
        "model:\n  input_dim: 16\n  hidden_dims: [8]\n  latent_dim: 4\n  quantizer:\n"
        "    class_path: genrec_lightning.tokenizers.SoftResidualQuantizer\n"
        "    init_args: {temperature: 0.5, codebook_size: 7}\n"
    )
    model = parser.instantiate(cfg).model
    assert isinstance(model.quantizer, SoftResidualQuantizer)
    assert (model.temperature, model.codebook_size, model.quantizer.dim) == (0.5, 7, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast():
    z = clustered().cuda()
    assert kmeans(z, 8).is_cuda
    model = RQVAE(16, hidden_dims=[32], latent_dim=8, quantizer=SoftResidualQuantizer).cuda()
    model.init_codebooks(z)
    model.temperature = 1e-3
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(z)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.probs.dtype == torch.float32
    gpu_codes = model.encode(z).cpu()
    agreement = (gpu_codes == model.cpu().encode(z.cpu())).all(dim=1).float().mean()
    assert agreement > 0.99  # rounding may flip a rare near-tie
