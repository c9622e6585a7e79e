"""Step `shards`: tokenize both splits into Parquet token shards with a manifest (armodels.shards format)."""

from __future__ import annotations

from dataclasses import dataclass

from armodels.bpe import BPETokenizer
from armodels.shards import tokenize_to_shards
from pipelines.executor import StepContext
from pipelines.steps.corpus import SPLITS, read_texts

VERSION = "1"


@dataclass(frozen=True)
class ShardStepConfig:
    shard_tokens: int


def shard_corpus(config: ShardStepConfig, ctx: StepContext) -> dict:
    tokenizer = BPETokenizer.load(ctx.inputs["tokenizer"])
    summary = {}
    for split in SPLITS:
        manifest = tokenize_to_shards(tokenizer, read_texts(ctx.inputs["corpus"], split), ctx.output / split,
                                      split=split, shard_tokens=config.shard_tokens)
        summary[f"{split}_tokens"] = manifest.tokens
        summary[f"{split}_bytes_per_token"] = manifest.bytes / manifest.tokens
        ctx.log(f"{split}: {manifest.tokens:,} tokens in {len(manifest.shards)} shards "
                f"({manifest.bytes / manifest.tokens:.2f} bytes/token)")
    return summary
