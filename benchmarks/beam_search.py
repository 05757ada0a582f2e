"""Constrained beam search: ours vs HF `generate` + `prefix_allowed_tokens_fn`, same model and inputs.

    python benchmarks/beam_search.py                     # paper-size T5, ML-100K IDs, 64 users, beam 20
    python benchmarks/beam_search.py --ckpt runs/tiger/version_0/checkpoints/last.ckpt
    python benchmarks/beam_search.py --preset configs/presets/cpu.yaml   # the CPU-preset T5

Prints users/s for both decoders (median of interleaved timed calls), the speed-up, and whether
the top-`beam` item lists are identical for every user. The model is the paper-size TIGER T5
(random init unless `--ckpt` gives a GenerativeRecommender checkpoint); the IDs come from
`configs/rqvae.yaml` on embedded ML-100K.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import yaml
from hf_reference import hf_beam_search, token_trie

from genrec_lightning.data.datamodules import MovieLensDataModule
from genrec_lightning.generation import beam_search
from genrec_lightning.modules.recommender import GenerativeRecommender
from genrec_lightning.networks.t5 import T5Recommender
from genrec_lightning.pipeline import attach_upstream


def interleaved(fns: dict[str, object], rounds: int, every: dict[str, int], device: torch.device) -> dict:
    """Median seconds per call and the last output of each function, timed in interleaved rounds.

    Function `name` runs in every `every[name]`-th round, so that all of them see the same machine
    load (on a shared CPU the speed drifts by tens of percent within a minute); each runs once
    untimed first.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {name: [] for name in fns}
    outputs = {name: fn() for name, fn in fns.items()}  # warm-up
    for round_ in range(rounds):
        for name, fn in fns.items():
            if round_ % every[name]:
                continue
            sync()
            start = time.perf_counter()
            outputs[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), outputs[name]) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", default="configs/rqvae.yaml")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds (HF runs in every third)")
    parser.add_argument(
        "--ckpt", default=None, help="GenerativeRecommender checkpoint (default: random init)"
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="YAML whose model.init_args.network.init_args size the T5 "
        "(e.g. configs/presets/cpu.yaml; default: the paper-size T5)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = attach_upstream(
        MovieLensDataModule(variant="100k", text_fields=["title", "genres"], semantic_ids_from=args.tokenizer)
    )
    ids = data.semantic_ids
    size = {}
    if args.preset:
        size = yaml.safe_load(Path(args.preset).read_text())["model"]["init_args"]["network"]["init_args"]
    network = partial(T5Recommender, **size)
    model = GenerativeRecommender(ids.codebook_sizes, ids.num_items, data.max_history, network=network)
    if args.ckpt:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    else:
        model.set_semantic_ids(ids)
    model.eval().to(device)
    batch = {k: v.to(device) for k, v in data.split("test").batch(torch.arange(args.users)).items()}
    tokens, mask = model.encoder_inputs(batch)
    index, offsets = model.prefix_index(tokens.device), model.token_offsets
    trie = token_trie(ids)
    print(f"{ids} | T5 {sum(p.numel() for p in model.network.parameters()) / 1e6:.2f}M parameters")
    print(f"{args.users} users x {tokens.shape[1]} input tokens, beam {args.beam}, device {device}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip

    with torch.inference_mode():  # as in Lightning's validation and test loops
        results = interleaved(
            {
                "ours": partial(beam_search, model.network, index, offsets, tokens, mask, args.beam),
                "hf": partial(hf_beam_search, model.network, ids, tokens, mask, args.beam, trie),
                "encoder": partial(model.network.encode, tokens, mask),
            },
            args.repeats,
            {"ours": 1, "hf": 3, "encoder": 1},
            device,
        )
    (ours_s, ours), (hf_s, (hf_items, hf_scores)), (encoder_s, _) = results.values()
    hf_items, hf_scores = hf_items.to(device), hf_scores.to(device)
    same = torch.equal(ours.items, hf_items)
    rows = (ours.items == hf_items).all(dim=1).float().mean().item()
    gap = (ours.scores - hf_scores).abs().max().item()
    print(f"ours      {args.users / ours_s:9.1f} users/s  ({ours_s * 1e3:8.1f} ms per batch)")
    print(f"HF        {args.users / hf_s:9.1f} users/s  ({hf_s * 1e3:8.1f} ms per batch)")
    print(f"speed-up  {hf_s / ours_s:9.1f}x")
    # Both decoders run the same encoder pass once per user; the rest is the decoding itself.
    print(f"encoder   {encoder_s * 1e3:9.1f} ms per batch (in both); decoding alone: ours "
          f"{(ours_s - encoder_s) * 1e3:.1f} ms, HF {(hf_s - encoder_s) * 1e3:.1f} ms, "
          f"{(hf_s - encoder_s) / (ours_s - encoder_s):.1f}x")  # fmt: skip
    print(f"identical top-{args.beam} lists: {same} ({rows:.1%} of users); max |score gap| {gap:.2e}")
    valid = (ours.items >= 0).all().item() and all(len(set(r)) == len(r) for r in ours.items.tolist())
    print(f"every returned ID is a real item, no duplicates: {valid}")


if __name__ == "__main__":
    main()
