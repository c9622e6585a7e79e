"""Greedy generation with and without the transformer's KV cache, side by side in one run.

Without the cache every new token reruns the whole prefix (O(T²) tokens through the network for T tokens); with it,
each step runs one token against cached keys and values. Both must produce the same tokens. Prints times and the
speed-up (the goal is ≥ 10× for 1,024 tokens); asserts nothing.

    .venv/bin/python bench/bench_kv_cache.py            # 1,024 tokens
    .venv/bin/python bench/bench_kv_cache.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse

import torch

from common import INFO, MISSED, Row, check, timed
from armodels.models.transformer import Transformer, TransformerConfig
from armodels.sampling import generate, sample

GOAL = 10.0


def compare(tokens: int, n_layer: int, n_embd: int, threads: int) -> dict:
    """Seconds to generate `tokens` tokens greedily with and without the cache, and whether both agree."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=256, seq_len=tokens + 1, n_layer=n_layer, n_head=4, n_embd=n_embd)
    model = Transformer(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 1))
    print(f"transformer: {cfg.n_layer} layers, width {cfg.n_embd}, {model.num_params():,} non-embedding parameters; "
          f"greedy generation of {tokens} tokens, {torch.get_num_threads()} CPU threads")
    generate(model, prompt, 8, temperature=0)  # warm-up
    cached, t_cached = timed(lambda: generate(model, prompt, tokens, temperature=0, use_cache=True))
    uncached, t_uncached = timed(lambda: generate(model, prompt, tokens, temperature=0, use_cache=False))
    # the family interface: armodels.sampling.sample decodes through model.decoder(), the same cache
    _, t_sampler = timed(lambda: sample(model, 1, temperature=0, prompt=prompt))
    return {"tokens": tokens, "cached": t_cached, "uncached": t_uncached, "sampler": t_sampler,
            "same": torch.equal(cached, uncached)}


def measure(smoke: bool = False, threads: int = 1) -> list[Row]:
    r = compare(64, 2, 64, threads) if smoke else compare(1024, 4, 128, threads)
    speedup = r["uncached"] / r["cached"]
    status = INFO if smoke else check(speedup, at_least=GOAL)
    if not r["same"]:
        status = MISSED
    return [Row(f"KV cache: generate {r['tokens']:,} tokens", f"{speedup:.1f}× ({r['tokens'] / r['cached']:,.0f} vs "
                f"{r['tokens'] / r['uncached']:,.0f} tokens/s)", f"≥ {GOAL:g}×", status, speedup,
                "same tokens with and without the cache" if r["same"] else "cached and uncached tokens DIFFER")]


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
    r = compare(args.tokens, args.n_layer, args.n_embd, args.threads)
    print(f"  recompute the prefix     {r['uncached']:8.2f} s   {args.tokens / r['uncached']:8.1f} tokens/s")
    print(f"  KV cache (generate)      {r['cached']:8.2f} s   {args.tokens / r['cached']:8.1f} tokens/s")
    print(f"  KV cache (sample)        {r['sampler']:8.2f} s   {args.tokens / r['sampler']:8.1f} tokens/s")
    print(f"  speed-up of the cache    {r['uncached'] / r['cached']:8.1f} ×   (goal ≥ {GOAL:g}×)")
    print(f"  same tokens: {r['same']}")


if __name__ == "__main__":
    main()
