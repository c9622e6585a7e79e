"""Step `tokenizer`: train a byte-level BPE tokenizer on a sample of the training split.

Its folder also loads in Hugging Face `transformers` (`PreTrainedTokenizerFast.from_pretrained(folder)`):
BPETokenizer.save writes tokenizer_config.json and special_tokens_map.json beside tokenizer.json. Folders of
earlier runs lack them (this step's VERSION did not change) and load in arscale as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from armodels.bpe import train_bpe, transformers_files
from pipelines.step import StepContext
from pipelines.steps.corpus import read_texts

VERSION = "1"


@dataclass(frozen=True)
class TextTokenizerStepConfig:
    vocab_size: int
    train_bytes: int


def train_text_tokenizer(config: TextTokenizerStepConfig, ctx: StepContext) -> dict:
    sample, size = [], 0
    for text in read_texts(ctx.inputs["corpus"], "train"):  # documents are already in a seeded shuffle
        if size >= config.train_bytes:
            break
        sample.append(text)
        size += len(text.encode("utf-8"))
    tokenizer = train_bpe(sample, config.vocab_size, training_info={"documents": len(sample), "bytes": size})
    tokenizer.save(ctx.output)
    ctx.log(f"trained byte-level BPE: {tokenizer.vocab_size} tokens on {size / 1e6:.1f} MB")
    for name in ("tokenizer.json", *transformers_files(tokenizer.meta.special_tokens)):  # a folder HF loads
        ctx.tracker.log_artifact(ctx.output / name)
    ctx.tracker.set_tags({"arscale.tokenizer_sha256": tokenizer.meta.sha256})
    return {"vocab_size": tokenizer.vocab_size, "sha256": tokenizer.meta.sha256, "train_bytes": size}
