"""Byte-level BPE tokenizers (HF `tokenizers`), lossless on any text.

All 256 byte symbols are in the initial alphabet, so every string encodes and decodes back exactly, whatever
merges were learned. `encode_bytes_batch` and `decode_bytes` extend that to arbitrary bytes (invalid UTF-8
included): HF `tokenizers` only takes `str`, and its decoder replaces bytes that are not UTF-8, so the bytes of
every token are looked up in the byte-level alphabet instead. A tokenizer is a directory holding `tokenizer.json`
(the HF format, plain JSON: loading it runs no code) and `meta.json` (vocab size, special tokens, training inputs,
content hash). `save` also writes `tokenizer_config.json` and `special_tokens_map.json`, so that Hugging Face
`transformers` (`PreTrainedTokenizerFast.from_pretrained(directory)`) loads the directory with the same special
tokens and encodes exactly as arscale does; arscale itself never reads them, so a directory without them still loads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_DOCUMENT = "<|endoftext|>"
# The HF trainer allocates for the whole vocabulary up front (about 70 bytes a token: 10^12 aborts the interpreter);
# a million is beyond any model's vocabulary, and token ids stay 32-bit.
MAX_VOCAB_SIZE = 1_000_000
# Bytes that are not UTF-8 come back from `bytes.decode(..., "surrogateescape")` as these lone surrogates.
_ESCAPED_BYTES = re.compile("([\udc80-\udcff]+)")


def byte_alphabet() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's bytes_to_unicode, as HF's ByteLevel uses it): character -> the byte it stands
    for. Printable bytes stand for themselves; the others are shifted to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shift = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shift)] = b
            shift += 1
    return chars


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
        # A document that contains the text "<|endoftext|>" must encode it as ordinary bytes, or it would not decode
        # back (special tokens stand for no bytes) and would split the document in a token stream.
        tokenizer.encode_special_tokens = True
        self.hf = tokenizer
        self.meta = meta
        self._bytes = self._token_byte_table()
        alphabet = {b: c for c, b in byte_alphabet().items()}
        self._byte_ids = [tokenizer.token_to_id(alphabet[b]) for b in range(256)]
        flat = b"".join(self._bytes)
        self._flat = np.frombuffer(flat, dtype=np.uint8) if flat else np.zeros(0, np.uint8)
        self._lengths = np.array([len(b) for b in self._bytes], dtype=np.int64)
        self._starts = np.cumsum(self._lengths) - self._lengths

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def eod_id(self) -> int:
        return self.meta.eod_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_bytes_batch(self, docs: Sequence[str | bytes]) -> list[list[int]]:
        """Token ids of each document, given as text or as raw bytes; decode_bytes gives back the same bytes.

        UTF-8 documents (nearly all) go to HF `encode_batch` in one call. In the others, each run of bytes that is not
        UTF-8 becomes the tokens of those single bytes, and the valid text around it is encoded as usual.
        """
        texts: list[str | None] = []
        broken: dict[int, list[str]] = {}
        for i, doc in enumerate(docs):
            if isinstance(doc, str):
                texts.append(doc)
                continue
            try:
                texts.append(doc.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(None)
                broken[i] = _ESCAPED_BYTES.split(doc.decode("utf-8", "surrogateescape"))
        ids = self.encode_batch([t for t in texts if t is not None])
        if not broken:
            return ids
        valid = iter(ids)
        return [next(valid) if t is not None else self._encode_escaped(broken[i]) for i, t in enumerate(texts)]

    def _encode_escaped(self, parts: list[str]) -> list[int]:
        """`parts` alternate valid text and runs of escaped bytes (re.split with a group)."""
        encoded = iter(self.encode_batch(parts[0::2]))
        out: list[int] = []
        for k, part in enumerate(parts):
            if k % 2 == 0:
                out += next(encoded)
            else:
                out += [self._byte_ids[b] for b in part.encode("utf-8", "surrogateescape")]
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The exact bytes that token ids stand for (special tokens stand for none), vectorised over the ids."""
        ids = np.asarray(ids, dtype=np.int64)
        lengths = self._lengths[ids]
        total = int(lengths.sum())
        out_starts = np.cumsum(lengths) - lengths
        source = np.repeat(self._starts[ids] - out_starts, lengths) + np.arange(total)
        return self._flat[source].tobytes()

    def token_bytes(self) -> list[int]:
        """Number of UTF-8 bytes each token id stands for (0 for special tokens); gives exact bits per byte."""
        return [len(b) for b in self._bytes]

    def _token_byte_table(self) -> list[bytes]:
        specials = set(self.meta.special_tokens)
        alphabet = byte_alphabet()
        table = []
        for i in range(self.vocab_size):
            tok = self.hf.id_to_token(i)
            # In the byte-level alphabet each character stands for exactly one byte.
            table.append(b"" if tok is None or tok in specials else bytes(alphabet[c] for c in tok))
        return table

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / "tokenizer.json"))
        (directory / "meta.json").write_text(json.dumps(asdict(self.meta), indent=2))
        for name, content in transformers_files(self.meta.special_tokens).items():
            (directory / name).write_text(json.dumps(content, indent=2))

    @classmethod
    def load(cls, directory: Path) -> BPETokenizer:
        """Load from a tokenizer directory; raises FileNotFoundError or ValueError naming the bad file."""
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a tokenizer directory must hold tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a plain Exception on malformed JSON
            raise ValueError(f"{path} is not a valid tokenizer file ({str(e).splitlines()[0]}); train one with "
                             "`arscale tokenizer train bpe`") from None
        meta_path = path.with_name("meta.json")
        if meta_path.is_file():
            meta = _read_meta(meta_path)
            # the hash names the tokenizer in manifests: a tokenizer.json swapped under it would decode to garbage
            if content_hash(tokenizer) != meta.sha256:
                raise ValueError(f"{path} is not the tokenizer its meta.json records (its sha256 differs): it was "
                                 "changed or replaced; restore it, or train the tokenizer again")
        else:  # a plain HF tokenizer.json: derive what we need
            eod = tokenizer.token_to_id(END_OF_DOCUMENT)
            if eod is None:
                raise ValueError(f"{path} has no {END_OF_DOCUMENT} token; train one with arscale")
            meta = BPEMeta(tokenizer.get_vocab_size(), [END_OF_DOCUMENT], eod, content_hash(tokenizer))
        return cls(tokenizer, meta)


def _read_meta(path: Path) -> BPEMeta:
    """meta.json as BPEMeta; ValueError names the file and what is wrong."""
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    kinds = {"vocab_size": (int, "a whole number"), "special_tokens": (list, "a list"),
             "eod_id": (int, "a whole number"), "sha256": (str, "a string"), "training": (dict, "an object")}
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object with {', '.join(kinds)}; restore it, or train the "
                         "tokenizer again")
    unknown, missing = sorted(set(d) - set(kinds)), [k for k in kinds if k not in d and k != "training"]
    wrong = [k for k, (kind, _) in kinds.items() if k in d and (not isinstance(d[k], kind) or isinstance(d[k], bool))]
    if unknown or missing or wrong:
        problem = (f"unknown key {', '.join(unknown)}" if unknown else f"missing key {', '.join(missing)}" if missing
                   else f"{wrong[0]} must be {kinds[wrong[0]][1]}")
        raise ValueError(f"{path} is not a tokenizer's meta.json ({problem}); restore it, or train the tokenizer "
                         "again")
    return BPEMeta(**d)


def transformers_files(special_tokens: Sequence[str]) -> dict[str, dict]:
    """`tokenizer_config.json` and `special_tokens_map.json` for Hugging Face `transformers`, given the special tokens
    (end-of-document first, as train_bpe orders them).

    arscale ends every document with end-of-document and starts each sample right after one, so that token is both
    the eos (it ends a document) and the bos (what a new document is conditioned on), as in GPT-2. Neither is added
    by encoding (arscale appends end-of-document between documents itself: ids(doc) + [eos]). `split_special_tokens`
    makes text that contains a special token's string encode it as ordinary bytes, as arscale does; no clean-up of
    spaces on decoding, so decode(encode(text)) == text. Byte-level BPE needs no unknown token; arscale never pads.
    """
    eod, *others = special_tokens
    tokens = {"bos_token": eod, "eos_token": eod, **({"additional_special_tokens": others} if others else {})}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens, "add_bos_token": False, "add_eos_token": False,
              "split_special_tokens": True, "clean_up_tokenization_spaces": False}
    return {"tokenizer_config.json": config, "special_tokens_map.json": tokens}


def vocab_size_problem(vocab_size: int, n_special: int = 1) -> str | None:
    """Why `vocab_size` cannot be trained (it must leave room for a merge beside the 256 bytes and the special
    tokens, and be at most MAX_VOCAB_SIZE), or None when it can."""
    minimum = 256 + n_special + 1
    if vocab_size < minimum:
        return f"{vocab_size:,} is too small: byte-level BPE needs at least {minimum} (256 bytes, the special tokens " \
               "and a merge)"
    if vocab_size > MAX_VOCAB_SIZE:
        return f"{vocab_size:,} is too large: use at most {MAX_VOCAB_SIZE:,} tokens"
    return None


def train_bpe(texts: Iterable[str], vocab_size: int, *, special_tokens: tuple[str, ...] = (END_OF_DOCUMENT,),
              training_info: dict | None = None) -> BPETokenizer:
    """Train a byte-level BPE tokenizer on `texts`.

    `vocab_size` counts the 256 bytes and the special tokens, so it must exceed 256 + len(special_tokens), and is at
    most MAX_VOCAB_SIZE; it is a ceiling (a small corpus may yield fewer merges).
    """
    if problem := vocab_size_problem(vocab_size, len(special_tokens)):
        raise ValueError(f"vocab_size {problem}")
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
