"""Character-level and word-level text tokenizers, beside byte-level BPE (armodels.bpe), with the interface the
pipeline uses of BPETokenizer (encode_batch, encode_bytes_batch, decode, decode_bytes, token_bytes, vocab_size,
eod_id, meta.sha256, save, load), so that char, word and BPE tokens compare in one currency: bits per byte.

Vocabulary: the end-of-document token (id 0, `<|endoftext|>`), the unknown token (id 1, `<|unk|>`), then the most
frequent units of the training sample, most frequent first (ties in code point order), up to `vocab_size` in all
(a ceiling: a sample with fewer distinct units gives a smaller vocabulary). A unit is
- char: one Unicode character (code point);
- word: one piece of `WORD_PATTERN`, `\\w+|\\s+|[^\\w\\s]` (Python `re`, Unicode): a run of word characters
  (letters, digits, underscore), a run of whitespace, or one other character. Every character is in exactly one
  piece, so the pieces of a text laid end to end are the text. (Bulk tokenization cuts a text file larger than a
  piece, and a document larger than a read block, where BPE's tokens do not change, which may be inside a run of
  whitespace: that run is then two word tokens. Decoding still gives the exact text.)
Coverage (in meta.json): the share of the training sample's units that are in the vocabulary, and of its UTF-8 bytes.

Unknown units encode as `<|unk|>`, so decode(encode(text)) == text exactly when every unit of the text is in the
vocabulary; otherwise each unknown unit comes back as U+FFFD (the Unicode replacement character). Bytes that are not
UTF-8 (`encode_bytes_batch`) are unknown units, one per byte. Text that contains "<|endoftext|>" encodes it as
ordinary characters, as BPE does.

Bits per byte with unknown tokens. `token_bytes()` gives each token's UTF-8 length, and 0 for the special tokens:
an unknown token stands for no fixed bytes (decode writes U+FFFD in its place, a marker, not what it stood for).
Counted that way an unknown-heavy tokenizer could only look worse. The study's evaluation (`text_bytes_of_stream`)
does better: it divides the model's bits by the bytes of the original text, which the token shards record per
document, so every unknown token counts the bytes it replaced. That denominator is exact; the numerator is what the
model pays, and a model never pays for *which* unit an unknown token stood for, so with coverage below 100% bits per
byte is a lower bound on the cost of coding the text losslessly; the evaluation records the share of bytes that
were unknown beside it (`unknown_byte_share`).

A tokenizer is a folder of two JSON files (loading runs no code): tokenizer.json (format, level, pattern, special
tokens, vocabulary) and meta.json (level, vocab size, special token ids, coverage, training inputs and the sha256
of tokenizer.json's content). `load_text_tokenizer` loads a folder of any kind, BPE included.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from armodels import bpe
from armodels.bpe import END_OF_DOCUMENT, MAX_VOCAB_SIZE, BPETokenizer

FORMAT = "arscale-text-tokenizer/1"
LEVELS = ("char", "word")
UNKNOWN = "<|unk|>"
SPECIAL_TOKENS = (END_OF_DOCUMENT, UNKNOWN)  # ids 0 and 1
EOD_ID, UNK_ID = 0, 1
REPLACEMENT = "\ufffd"  # what an unknown token decodes to
WORD_PATTERN = r"\w+|\s+|[^\w\s]"
_WORDS = re.compile(WORD_PATTERN)
_SURROGATE = re.compile("[\ud800-\udfff]")  # not text: bytes that were not UTF-8 (never in a vocabulary)
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 1
_UNITS = {"char": "character", "word": "word piece"}


@dataclass(frozen=True)
class CharWordMeta:
    level: str  # "char" or "word"
    vocab_size: int
    special_tokens: list[str]
    eod_id: int
    unk_id: int
    sha256: str  # of tokenizer.json's content: identifies the tokenizer in manifests and MLflow tags
    coverage: float  # share of the training sample's units (characters or word pieces) in the vocabulary
    byte_coverage: float  # share of the training sample's UTF-8 bytes in units of the vocabulary
    training: dict = field(default_factory=dict)  # what it was trained on


def vocab_size_problem(kind: str, vocab_size: int) -> str | None:
    """Why a `kind` tokenizer (bpe, char or word) cannot have `vocab_size` tokens, or None when it can."""
    if kind == "bpe":
        return bpe.vocab_size_problem(vocab_size)
    if vocab_size < MIN_VOCAB_SIZE:
        return (f"{vocab_size:,} is too small: a {kind}-level tokenizer needs at least {MIN_VOCAB_SIZE} "
                f"(end-of-document, unknown and one {_UNITS[kind]})")
    if vocab_size > MAX_VOCAB_SIZE:
        return f"{vocab_size:,} is too large: use at most {MAX_VOCAB_SIZE:,} tokens"
    return None


def units(level: str, text: str) -> Iterable[str]:
    """The units of `text` that a `level` tokenizer gives a token each: its characters, or its word pieces."""
    return text if level == "char" else _WORDS.findall(text)


class CharWordTokenizer:
    """A trained character-level or word-level tokenizer: encode/decode and the byte length of every token."""

    def __init__(self, pieces: Sequence[str], meta: CharWordMeta):
        self.meta = meta
        self.pieces = list(pieces)  # the vocabulary after the two special tokens
        self._strings = [END_OF_DOCUMENT, REPLACEMENT, *self.pieces]
        self._bytes = [b"", REPLACEMENT.encode(), *(p.encode("utf-8") for p in self.pieces)]
        self._ids = {p: i for i, p in enumerate(self.pieces, len(SPECIAL_TOKENS))}
        if meta.level == "char":  # code points sorted, for a vectorised look-up
            points = np.array([ord(p) for p in self.pieces], dtype=np.uint32)
            order = np.argsort(points)
            self._points, self._point_ids = points[order], (order + len(SPECIAL_TOKENS)).astype(np.int64)

    @property
    def level(self) -> str:
        return self.meta.level

    @property
    def vocab_size(self) -> int:
        return len(self._strings)

    @property
    def eod_id(self) -> int:
        return EOD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode(t) for t in texts]

    def _encode(self, text: str) -> list[int]:
        if self.level == "word":
            get = self._ids.get
            return [get(p, UNK_ID) for p in _WORDS.findall(text)]
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        at = np.minimum(np.searchsorted(self._points, points), len(self._points) - 1)
        return np.where(self._points[at] == points, self._point_ids[at], UNK_ID).tolist()

    def encode_bytes_batch(self, docs: Sequence[str | bytes]) -> list[list[int]]:
        """Token ids of each document, given as text or as raw bytes: each byte that is not UTF-8 is an unknown unit
        of its own (it decodes as a lone surrogate, which no vocabulary holds)."""
        return self.encode_batch([d if isinstance(d, str) else d.decode("utf-8", "surrogateescape") for d in docs])

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`: end-of-document as "<|endoftext|>", an unknown token as U+FFFD; ids beyond the
        vocabulary (a model may have more outputs) are left out."""
        strings, n = self._strings, len(self._strings)
        return "".join(strings[i] for i in ids if 0 <= i < n)

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The UTF-8 bytes of `ids`: none for end-of-document, U+FFFD's for an unknown token."""
        table = self._bytes
        return b"".join(table[i] for i in np.asarray(ids, dtype=np.int64).tolist())

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes of each token's text; 0 for the special tokens, the unknown one included (see the module's
        docstring for how the evaluation counts the bytes it replaced)."""
        return [0, 0, *(len(b) for b in self._bytes[len(SPECIAL_TOKENS):])]

    def description(self) -> dict:
        """tokenizer.json's content."""
        return _description(self.level, self.pieces)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in (("tokenizer.json", self.description()), ("meta.json", asdict(self.meta))):
            (directory / name).write_text(json.dumps(content, indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> CharWordTokenizer:
        """Load from a tokenizer folder; raises FileNotFoundError or ValueError naming the bad file."""
        path, meta_path = Path(directory) / "tokenizer.json", Path(directory) / "meta.json"
        again = "restore it, or train the tokenizer again"
        d, m = _read_object(path), _read_object(meta_path)
        level, pieces = d.get("level"), d.get("vocab")
        if d.get("format") != FORMAT or level not in LEVELS:
            raise ValueError(f"{path} is not a char or word tokenizer (format {d.get('format')!r}, level "
                             f"{level!r}; this version of arscale reads {FORMAT}, level char or word); {again}")
        if (d.get("special_tokens") != list(SPECIAL_TOKENS) or d.get("pattern", WORD_PATTERN) != WORD_PATTERN
                or not isinstance(pieces, list) or not pieces or not all(isinstance(p, str) and p for p in pieces)
                or len(set(pieces)) != len(pieces) or (level == "char" and any(len(p) != 1 for p in pieces))):
            raise ValueError(f"{path} is not a {level} tokenizer arscale wrote (its special tokens, pattern or "
                             f"vocabulary differ from what arscale writes); {again}")
        try:
            meta = CharWordMeta(**m)
        except TypeError:
            raise ValueError(f"{meta_path} is not a {level} tokenizer's meta.json (keys: "
                             f"{', '.join(CharWordMeta.__dataclass_fields__)}); {again}") from None
        tokenizer = cls(pieces, meta)
        recorded = (meta.sha256, meta.level, meta.vocab_size, meta.eod_id, meta.unk_id, meta.special_tokens)
        if recorded != (content_hash(tokenizer.description()), level, tokenizer.vocab_size, EOD_ID, UNK_ID,
                        list(SPECIAL_TOKENS)):
            raise ValueError(f"{path} is not the tokenizer its meta.json records (its sha256, level or size "
                             f"differs): it was changed or replaced; {again}")
        return tokenizer


def _read_object(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a char or word tokenizer folder holds tokenizer.json and "
                                "meta.json")
    try:
        d = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it, or train the tokenizer again") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object; restore it, or train the tokenizer again")
    return d


def _description(level: str, pieces: list[str]) -> dict:
    return {"format": FORMAT, "level": level, **({"pattern": WORD_PATTERN} if level == "word" else {}),
            "special_tokens": list(SPECIAL_TOKENS), "vocab": pieces}


def content_hash(description: dict) -> str:
    """sha256 of tokenizer.json's content in canonical JSON (independent of how the file was printed)."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def train_char_word(level: str, texts: Iterable[str], vocab_size: int, *,
                    training_info: dict | None = None) -> CharWordTokenizer:
    """A `level` ("char" or "word") tokenizer of the most frequent units of `texts`, up to `vocab_size` tokens in
    all (the two special tokens count); ValueError for a vocab_size out of bounds or texts without a unit."""
    if level not in LEVELS:
        raise ValueError(f"unknown tokenizer level {level!r}; use one of {', '.join(LEVELS)}")
    if problem := vocab_size_problem(level, vocab_size):
        raise ValueError(f"vocab_size {problem}")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(units(level, text))
    sizes = {p: len(p.encode("utf-8", "surrogatepass")) for p in counts}
    total_units, total_bytes = sum(counts.values()), sum(n * sizes[p] for p, n in counts.items())
    ranked = sorted((p for p in counts if not _SURROGATE.search(p)), key=lambda p: (-counts[p], p))
    pieces = ranked[:vocab_size - len(SPECIAL_TOKENS)]
    if not pieces:
        raise ValueError("the training texts hold no text: nothing to make a vocabulary of")
    meta = CharWordMeta(
        level=level, vocab_size=len(pieces) + len(SPECIAL_TOKENS), special_tokens=list(SPECIAL_TOKENS),
        eod_id=EOD_ID, unk_id=UNK_ID, sha256=content_hash(_description(level, pieces)),
        coverage=sum(counts[p] for p in pieces) / total_units,
        byte_coverage=sum(counts[p] * sizes[p] for p in pieces) / total_bytes,
        training={**(training_info or {}), "units": total_units, "distinct_units": len(counts)})
    return CharWordTokenizer(pieces, meta)


TextTokenizer = BPETokenizer | CharWordTokenizer  # what a text study's token shards are made with
TEXT_TOKENIZERS = (BPETokenizer, CharWordTokenizer)


def load_text_tokenizer(directory: Path) -> TextTokenizer:
    """The text tokenizer in `directory`, whatever its kind: char or word when its meta.json names a level, else
    byte-level BPE (so BPE folders, and plain HF tokenizer.json files, load as before). Raises FileNotFoundError or
    ValueError naming the bad file."""
    meta = Path(directory) / "meta.json"
    try:
        level = json.loads(meta.read_bytes()).get("level") if meta.is_file() else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        level = None  # BPETokenizer.load names what is wrong with it
    return CharWordTokenizer.load(directory) if level is not None else BPETokenizer.load(directory)


def text_bytes_of_stream(tokenizer: CharWordTokenizer, rows: Iterator[tuple[int, np.ndarray, int]],
                         n_tokens: int) -> tuple[float, float]:
    """(bytes of original text, of them the bytes unknown tokens replaced) that the first `n_tokens` of a token
    stream stand for; `rows` are the stream's shard rows (doc_id, tokens, bytes of the text they encode), in order,
    a document's rows followed in the stream by one end-of-document token.

    A row's unknown tokens share the bytes its known tokens leave of its text: exact for every row scored whole, and
    for the one the `n_tokens` cut through, each of its unknown tokens counts their average."""
    lengths = np.asarray(tokenizer.token_bytes(), dtype=np.int64)
    position, total, unknown, previous = 0, 0.0, 0.0, None
    for doc_id, tokens, n_bytes in rows:
        position += previous is not None and doc_id != previous  # the previous document's end-of-document
        if position >= n_tokens:
            break
        previous, tokens = doc_id, np.asarray(tokens, dtype=np.int64)
        scored = tokens[:n_tokens - position]
        is_unknown = tokens == UNK_ID
        replaced = (n_bytes - int(lengths[tokens].sum())) if is_unknown.any() else 0
        share = replaced * int(is_unknown[:len(scored)].sum()) / max(1, int(is_unknown.sum()))
        total += int(lengths[scored].sum()) + share
        unknown += share
        position += len(tokens)
    return total, unknown
