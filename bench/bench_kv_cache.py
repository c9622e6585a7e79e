"""Greedy generation with and without the transformer's KV cache, side by side in one run.

Without the cache every new token reruns the whole prefix (O(T²) tokens through the network for T tokens); with it,
each step runs one token against cached keys and values. Both must produce the same tokens. Prints times and the
speed-up (the goal is ≥ 10× for 1,024 tokens); asserts nothing.

    .venv/bin/python bench/bench_kv_cache.py            # 1,024 tokens
    .venv/bin/python bench/bench_kv_cache.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from armodels.models.transformer import Transformer, TransformerConfig  # noqa: E402
from armodels.sampling import generate, sample  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="tokens to generate after a 1-token prompt")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; one token at a time is latency-bound, and on a shared machine threads "
                             "waiting on each other can cost more than they give")
    parser.add_argument("--smoke", action="store_true", help="64 tokens on a small model, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.n_layer, args.n_embd = 64, 2, 64

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=256, seq_len=args.tokens + 1, n_layer=args.n_layer, n_head=4, n_embd=args.n_embd)
    model = Transformer(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 1))
    print(f"transformer: {cfg.n_layer} layers, width {cfg.n_embd}, {model.num_params():,} non-embedding parameters; "
          f"greedy generation of {args.tokens} tokens, {torch.get_num_threads()} CPU threads")

    generate(model, prompt, 8, temperature=0)  # warm-up
    cached, t_cached = timed(lambda: generate(model, prompt, args.tokens, temperature=0, use_cache=True))
    uncached, t_uncached = timed(lambda: generate(model, prompt, args.tokens, temperature=0, use_cache=False))
    # the family interface: armodels.sampling.sample decodes through model.decoder(), the same cache
    _, t_sampler = timed(lambda: sample(model, 1, temperature=0, prompt=prompt))

    print(f"  recompute the prefix     {t_uncached:8.2f} s   {args.tokens / t_uncached:8.1f} tokens/s")
    print(f"  KV cache (generate)      {t_cached:8.2f} s   {args.tokens / t_cached:8.1f} tokens/s")
    print(f"  KV cache (sample)        {t_sampler:8.2f} s   {args.tokens / t_sampler:8.1f} tokens/s")
    print(f"  speed-up of the cache    {t_uncached / t_cached:8.1f} ×   (goal ≥ 10×)")
    print(f"  same tokens: {torch.equal(cached, uncached)}")


if __name__ == "__main__":
    main()
