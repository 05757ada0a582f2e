"""Tokenizer stage at catalogue scale: synthetic item tables up to 1M items.

For each size N (each in a fresh process, so the peak memory is that size's own) it times:
RQ-KMeans fitting and encoding (faiss k-means on all N rows), RQ-VAE encoding (the
configs/rqvae.yaml network, untrained: inference cost only), suffix dedup into a SemanticIds table,
building the beam-search prefix index (CSR, no dense K^L tables), whose size it reports, and
constrained beam search over the whole catalogue (64 users, 20 beams, a small random T5). The
last lines give each figure's growth per doubling of N: ~2.0 means linear.

    python benchmarks/tokenizer_scale.py                      # 125k .. 1M items, 384-d
    python benchmarks/tokenizer_scale.py --items 1000000 --niter 25
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from functools import partial

import torch

from genrec_lightning.generation import beam_search
from genrec_lightning.modules.recommender import GenerativeRecommender
from genrec_lightning.networks.t5 import T5Recommender
from genrec_lightning.semantic_ids import PrefixIndex, SemanticIds
from genrec_lightning.tokenizers import RQVAE, RQKMeans
from genrec_lightning.tokenizers.kmeans import faiss_gpus


def synthetic_items(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Unit-norm embeddings around 4,096 topics, each item as far from its topic centre as the
    centres are from each other (like sentence embeddings of a catalogue: clustered, not duplicated)."""
    gen = torch.Generator().manual_seed(seed)
    topics = torch.nn.functional.normalize(torch.randn(4096, dim, generator=gen), dim=1)
    out = torch.empty(n, dim)
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        which = torch.randint(0, len(topics), (rows,), generator=gen)
        out[start : start + rows] = topics[which] + torch.randn(rows, dim, generator=gen) / dim**0.5
    return torch.nn.functional.normalize(out, dim=1)


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def index_bytes(index: PrefixIndex) -> int:
    tensors = [index.sorted_items, index.sorted_codes, *index.keys, *index.ptr, *index.next_codes,
               *index.starts, *index.ends]  # fmt: skip
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def beam_users_per_s(ids: SemanticIds, n: int, users: int = 64, beam: int = 20) -> float:
    """Constrained beam search over all n items with a small random T5 (64-d, 2+2 layers): the
    catalogue-dependent part of decoding (index lookups, masks) at this scale."""
    model = GenerativeRecommender(
        ids.codebook_sizes, n, max_history=20,
        network=partial(T5Recommender, d_model=64, d_ff=256, d_kv=16, num_heads=4, num_encoder_layers=2,
                        num_decoder_layers=2, dropout=0.0),
    ).eval()  # fmt: skip
    model.set_semantic_ids(ids)
    gen = torch.Generator().manual_seed(0)
    history = torch.randint(0, n, (users, 20), generator=gen)
    batch = {"history": history, "history_mask": torch.ones_like(history, dtype=torch.bool)}
    tokens, mask = model.encoder_inputs(batch)
    index = model.prefix_index(tokens.device)
    run = partial(beam_search, model.network, index, model.token_offsets, tokens, mask, beam)
    run()  # warm-up
    seconds, ranking = timed(run)
    assert bool((ranking.items >= 0).all()), "beam search returned a non-item"
    return users / seconds


def worker(n: int, dim: int, levels: int, codes: int, niter: int) -> dict:
    x = synthetic_items(n, dim)
    result = {"items": n}
    rqk = RQKMeans(dim, num_levels=levels, codebook_size=codes, niter=niter)
    result["rqkmeans_fit_s"], _ = timed(lambda: rqk.fit(x))
    result["rqkmeans_encode_s"], raw = timed(lambda: rqk.encode(x))
    rqvae = RQVAE(dim, hidden_dims=[512, 256, 128, 64], latent_dim=32).eval()
    rqvae.init_codebooks(x[:65536])
    result["rqvae_encode_s"], _ = timed(lambda: rqvae.encode(x))
    result["dedup_s"], ids = timed(lambda: SemanticIds.from_codes(raw, codes, dedup="suffix"))
    result["index_build_s"], index = timed(lambda: PrefixIndex.build(ids.codes, ids.codebook_sizes))
    result["index_mib"] = index_bytes(index) / 2**20
    result["table_mib"] = ids.codes.numel() * ids.codes.element_size() / 2**20
    result["collision_rate"] = float(ids.statistics()["collision_rate"])
    # One beam-search step's mask lookup for 64 users x 20 beams at level 1.
    prefixes = ids.codes[torch.randint(0, n, (64 * 20,)), :1]
    result["allowed_ms"] = timed(lambda: index.allowed(1, prefixes))[0] * 1e3
    result["beam_users_per_s"] = beam_users_per_s(ids, n)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, nargs="+", default=[125_000, 250_000, 500_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384, help="embedding size (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--niter", type=int, default=10, help="k-means iterations per level")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.dim, args.levels, args.codes, args.niter)))
        return
    print(f"{args.dim}-d items, RQ {args.levels}x{args.codes}, k-means niter {args.niter}, torch threads "
          f"{torch.get_num_threads()}, faiss GPUs {faiss_gpus()}")  # fmt: skip
    rows = []
    for n in args.items:
        command = [sys.executable, __file__, "--worker", str(n), "--dim", str(args.dim), "--levels",
                   str(args.levels), "--codes", str(args.codes), "--niter", str(args.niter),
                   "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    columns = ["items", "rqkmeans_fit_s", "rqkmeans_encode_s", "rqvae_encode_s", "dedup_s", "index_build_s",
               "index_mib", "table_mib", "allowed_ms", "beam_users_per_s", "collision_rate",
               "peak_rss_gib"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:,}" if c == "items" else f"{row[c]:.3g}" for c in columns) + " |")
    for prev, row in zip(rows, rows[1:], strict=False):
        factor = row["items"] / prev["items"]
        growth = {c: row[c] / prev[c] for c in columns[1:] if prev[c] > 0 and c != "collision_rate"}
        print(f"x{factor:g} items: " + ", ".join(f"{c} x{g:.2f}" for c, g in growth.items()))


if __name__ == "__main__":
    main()
