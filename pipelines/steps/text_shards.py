"""Step `shards`: tokenize both splits into Parquet token shards with a manifest, with the same code as
`arscale tokenize` (pipelines.tokenization.corpus_to_shards), run in the step's own process: the corpus of a study is
small, and the step's task already holds the CPU it uses."""

from __future__ import annotations

from dataclasses import dataclass

from armodels.corpus_readers import ReadOptions
from pipelines.step import StepContext
from pipelines.steps.corpus import SPLITS
from pipelines.tokenization.corpus_to_shards import TokenizeSettings, tokenize_corpus

VERSION = "2"  # 2: bulk tokenization (manifest format 2, documents that contain "<|endoftext|>" encode it as text)


@dataclass(frozen=True)
class TextShardStepConfig:
    shard_tokens: int


def shard_corpus(config: TextShardStepConfig, ctx: StepContext) -> dict:
    summary = {}
    for split in SPLITS:
        settings = TokenizeSettings((str(ctx.inputs["corpus"] / f"{split}.parquet"),), config.shard_tokens,
                                    read=ReadOptions(column="text"), split=split)
        manifest = tokenize_corpus(ctx.inputs["tokenizer"], ctx.output / split, settings, use_ray=False,
                                   log=ctx.log)
        summary[f"{split}_tokens"] = manifest.tokens
        summary[f"{split}_bytes_per_token"] = manifest.bytes / manifest.tokens
        ctx.log(f"{split}: {manifest.tokens:,} tokens in {len(manifest.shards)} shards "
                f"({manifest.bytes / manifest.tokens:.2f} bytes/token)")
    return summary
