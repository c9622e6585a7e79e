"""Byte-level BPE tokenizers (HF `tokenizers`), lossless on any text.

All 256 byte symbols are in the initial alphabet, so every string encodes and decodes back exactly, whatever
merges were learned. A tokenizer is a directory holding `tokenizer.json` (the HF format, plain JSON: loading it runs
no code) and `meta.json` (vocab size, special tokens, training inputs, content hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_DOCUMENT = "<|endoftext|>"


@dataclass(frozen=True)
class BPEMeta:
    vocab_size: int
    special_tokens: list[str]
    eod_id: int
    sha256: str  # of tokenizer.json: identifies the tokenizer in manifests and MLflow tags
    training: dict = field(default_factory=dict)  # what it was trained on (inputs, bytes)


class BPETokenizer:
    """A trained byte-level BPE tokenizer: encode/decode and the byte length of every token."""

    def __init__(self, tokenizer: Tokenizer, meta: BPEMeta):
        self.hf = tokenizer
        self.meta = meta

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def eod_id(self) -> int:
        return self.meta.eod_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> list[int]:
        """Number of UTF-8 bytes each token id stands for (0 for special tokens); gives exact bits per byte."""
        specials = set(self.meta.special_tokens)
        lengths = []
        for i in range(self.vocab_size):
            tok = self.hf.id_to_token(i)
            # In the byte-level alphabet each character stands for exactly one byte.
            lengths.append(0 if tok in specials else len(tok))
        return lengths

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / "tokenizer.json"))
        (directory / "meta.json").write_text(json.dumps(asdict(self.meta), indent=2))

    @classmethod
    def load(cls, directory: Path) -> BPETokenizer:
        """Load from a tokenizer directory; raises FileNotFoundError or ValueError naming the bad file."""
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a tokenizer directory must hold tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a plain Exception on malformed JSON
            raise ValueError(f"{path} is not a valid tokenizer file ({str(e).splitlines()[0]})") from None
        meta_path = path.with_name("meta.json")
        if meta_path.is_file():
            meta = BPEMeta(**json.loads(meta_path.read_text()))
        else:  # a plain HF tokenizer.json: derive what we need
            eod = tokenizer.token_to_id(END_OF_DOCUMENT)
            if eod is None:
                raise ValueError(f"{path} has no {END_OF_DOCUMENT} token; train one with arscale")
            meta = BPEMeta(tokenizer.get_vocab_size(), [END_OF_DOCUMENT], eod, content_hash(tokenizer))
        return cls(tokenizer, meta)


def train_bpe(texts: Iterable[str], vocab_size: int, *, special_tokens: tuple[str, ...] = (END_OF_DOCUMENT,),
              training_info: dict | None = None) -> BPETokenizer:
    """Train a byte-level BPE tokenizer on `texts`.

    `vocab_size` counts the 256 bytes and the special tokens, so it must exceed 256 + len(special_tokens); it is a
    ceiling (a small corpus may yield fewer merges).
    """
    minimum = 256 + len(special_tokens) + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {minimum}")
    tokenizer = Tokenizer(models.BPE())
    # No prefix space and no offset trimming: the byte-level mapping alone, so decode(encode(x)) == x.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even ones the corpus lacks
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    meta = BPEMeta(
        vocab_size=tokenizer.get_vocab_size(),
        special_tokens=list(special_tokens),
        eod_id=tokenizer.token_to_id(special_tokens[0]),
        sha256=content_hash(tokenizer),
        training=training_info or {},
    )
    return BPETokenizer(tokenizer, meta)


def content_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON (independent of how the file was pretty-printed)."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
