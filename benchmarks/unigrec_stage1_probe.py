"""Why UniGRec's stage 1 collides: the soft RQ-VAE's latent geometry over a run, outside Lightning.

`genrec fit --config configs/unigrec_pretrain.yaml` logs the collision rate; this script also
prints what explains it, every `--every` steps, for one temperature/learning-rate schedule:

- `collision`: 1 - unique hard IDs / items (what `CollisionMonitor` logs);
- `usage`: the share of each level's codes that some item uses;
- `max_p`: the batch mean of the largest assignment probability per level (1/256: uniform, 1: hard);
- `latent_sq`: the mean squared norm of the encoder output |r|^2;
- `nearest_sq`: the mean squared distance of each level's input to its nearest code;
- `recon`: the reconstruction loss of the batch.

It trains the library's `RQVAE` with a `SoftResidualQuantizer` exactly as `TokenizerModule` does
(standardised inputs, k-means init on all items, AdamW, linear temperature annealing per step,
optionally the warm-up + linear learning-rate decay of `lr_decay: linear`), on the embedded
MovieLens-100K item embeddings, one thread, seeded:

    python benchmarks/unigrec_stage1_probe.py --lr-decay constant            # latents drift away
    python benchmarks/unigrec_stage1_probe.py --lr-decay linear --warmup 33  # the shipped recipe
    python benchmarks/unigrec_stage1_probe.py --tau-max 0.001 --lr-decay constant   # Fixed-Low
    python benchmarks/unigrec_stage1_probe.py --raw                          # unstandardised inputs
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import torch

from genrec_lightning.callbacks.temperature import anneal
from genrec_lightning.data.datamodules import MovieLensDataModule
from genrec_lightning.optim import warmup_cosine
from genrec_lightning.semantic_ids import collision_rate, usage_entropy
from genrec_lightning.tokenizers import RQVAE, SoftResidualQuantizer, squared_distances


def geometry(model: RQVAE, z: torch.Tensor) -> tuple[float, list[float]]:
    """Mean |r|^2 of all items' latents and, per level, the mean squared distance of the level's
    hard residual to its nearest code."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        residual = model.latent(z)
        latent_sq = float(residual.pow(2).sum(dim=1).mean())
        nearest = []
        for book in model.quantizer.codebooks:
            d = squared_distances(residual, book)
            nearest.append(float(d.min(dim=1).values.mean()))
            residual = residual - book[d.argmin(dim=1)]
        model.train(was_training)
    return latent_sq, nearest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tau-max", type=float, default=0.01)
    p.add_argument("--tau-min", type=float, default=0.001)
    p.add_argument("--steps", type=int, default=2000, help="the stage-1 config's 1000 epochs of 2 batches")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay", choices=["constant", "linear", "cosine"], default="linear")
    p.add_argument("--warmup", type=int, default=33)
    p.add_argument("--uniformity", type=float, default=1e-4)
    p.add_argument("--relative", action="store_true", help="SoftResidualQuantizer relative_temperature")
    p.add_argument("--raw", action="store_true", help="standardize: false")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = MovieLensDataModule(variant="100k", text_fields=["title", "genres"])
    data.prepare_data()
    z = data.item_embeddings()
    quantizer = partial(
        SoftResidualQuantizer,
        num_levels=3,
        codebook_size=256,
        temperature=args.tau_max,
        uniformity_weight=args.uniformity,
        relative_temperature=args.relative,
    )
    model = RQVAE(z.shape[1], [512, 256, 128, 64], 32, quantizer, standardize=not args.raw)
    model.fit_normalization(z)
    model.init_codebooks(z)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, args.warmup, args.steps, 0.0, args.lr_decay)
    )
    generator = torch.Generator().manual_seed(args.seed)
    rows, step, start = [], 0, time.perf_counter()
    codes = model.encode(z)
    latent_sq, nearest = geometry(model, z)
    with torch.no_grad():
        start_p = model(z).probs.max(dim=-1).values.mean(dim=0).tolist()  # type: ignore[union-attr]
    print(f"k-means init: collision {collision_rate(codes):.4f}  latent_sq {latent_sq:.4g}  "
          f"nearest_sq {[round(v, 6) for v in nearest]}  "
          f"max_p at tau_max {[round(p, 4) for p in start_p]}")  # fmt: skip
    while step < args.steps:
        for batch in torch.randperm(len(z), generator=generator).split(1024):
            model.temperature = anneal(step / args.steps, args.tau_max, args.tau_min)
            out = model(z[batch])
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % args.every == 0 or step == args.steps:
                codes = model.encode(z)
                usage, _ = usage_entropy(codes, [256] * 3)
                latent_sq, nearest = geometry(model, z)
                assert out.probs is not None
                row = {
                    "step": step,
                    "tau": model.temperature,
                    "lr": schedule.get_last_lr()[0],
                    "collision": collision_rate(codes),
                    "usage": usage,
                    "max_p": out.probs.max(dim=-1).values.mean(dim=0).tolist(),
                    "latent_sq": latent_sq,
                    "nearest_sq": nearest,
                    "recon": float(out.recon_loss.detach()),
                }
                rows.append(row)
                print(
                    f"step {step:>5}  tau {row['tau']:.4f}  lr {row['lr']:.2e}  "
                    f"collision {row['collision']:.4f}  "
                    f"usage {[round(u, 3) for u in usage]}  max_p {[round(v, 3) for v in row['max_p']]}  "
                    f"latent_sq {latent_sq:.3g}  nearest_sq {[round(v, 3) for v in nearest]}  "
                    f"recon {row['recon']:.3f}",
                    flush=True,
                )
            if step >= args.steps:
                break
    print(f"{args.steps} steps in {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f)


if __name__ == "__main__":
    main()
