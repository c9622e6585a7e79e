"""Step `tokenizer`: train the study's text tokenizer (`tokenizer.kind`) on a sample of the training split:
byte-level BPE (armodels.bpe), or a character-level or word-level vocabulary (armodels.char_word).

A BPE folder also loads in Hugging Face `transformers` (`PreTrainedTokenizerFast.from_pretrained(folder)`):
BPETokenizer.save writes tokenizer_config.json and special_tokens_map.json beside tokenizer.json. Folders of
earlier runs lack them (this step's VERSION did not change) and load in arscale as before. A char or word folder
holds tokenizer.json and meta.json (its coverage of the sample among them).
"""

from __future__ import annotations

from dataclasses import dataclass

from armodels.bpe import train_bpe, transformers_files
from armodels.char_word import train_char_word
from armodels.config_fields import added_field
from pipelines.step import StepContext
from pipelines.steps.corpus import read_texts

VERSION = "1"


@dataclass(frozen=True)
class TextTokenizerStepConfig:
    vocab_size: int
    train_bytes: int
    kind: str = added_field("bpe")  # "bpe", "char" or "word"


def train_text_tokenizer(config: TextTokenizerStepConfig, ctx: StepContext) -> dict:
    sample, size = [], 0
    for text in read_texts(ctx.inputs["corpus"], "train"):  # documents are already in a seeded shuffle
        if size >= config.train_bytes:
            break
        sample.append(text)
        size += len(text.encode("utf-8"))
    training = {"documents": len(sample), "bytes": size}
    if config.kind == "bpe":
        tokenizer = train_bpe(sample, config.vocab_size, training_info=training)
        tokenizer.save(ctx.output)
        ctx.log(f"trained byte-level BPE: {tokenizer.vocab_size} tokens on {size / 1e6:.1f} MB")
        files, more = ("tokenizer.json", *transformers_files(tokenizer.meta.special_tokens)), {}  # a folder HF loads
    else:
        tokenizer = train_char_word(config.kind, sample, config.vocab_size, training_info=training)
        tokenizer.save(ctx.output)
        meta = tokenizer.meta
        ctx.log(f"trained a {config.kind}-level tokenizer: {tokenizer.vocab_size} tokens on {size / 1e6:.1f} MB, "
                f"coverage {meta.coverage:.2%} of {meta.training['units']:,} units ({meta.byte_coverage:.2%} of bytes)")
        files, more = ("tokenizer.json", "meta.json"), {"coverage": meta.coverage, "byte_coverage": meta.byte_coverage}
        ctx.tracker.log_metrics({"tokenizer_coverage": meta.coverage, "tokenizer_byte_coverage": meta.byte_coverage},
                                step=0)
    for name in files:
        ctx.tracker.log_artifact(ctx.output / name)
    ctx.tracker.set_tags({"arscale.tokenizer_sha256": tokenizer.meta.sha256})
    return {"vocab_size": tokenizer.vocab_size, "sha256": tokenizer.meta.sha256, "train_bytes": size, **more}
