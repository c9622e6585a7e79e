"""`arscale tokenizer train bpe|char|word`: byte-level BPE (armodels.bpe), or a character-level or word-level
vocabulary (armodels.char_word), trained on a corpus, or on an even sample of it (no Ray).

It plans and reads the corpus with the same code as `arscale tokenize` (pipelines.tokenization.corpus_to_shards).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from armodels import char_word
from armodels.bpe import END_OF_DOCUMENT, BPETokenizer, train_bpe, vocab_size_problem
from armodels.corpus_readers import CorpusPlan, iter_docs
from pipelines.errors import UserError
from pipelines.tokenization.corpus_to_shards import TokenizeSettings, plan_inputs, shown_inputs
from pipelines.tokenization.outputs import check_new_output, new_output

SAMPLE_PIECE_BYTES = 1 << 20  # a training sample is made of pieces this large, spread evenly over the corpus


def train_bpe_on_corpus(settings: TokenizeSettings, vocab_size: int, out: Path, *, special_tokens: list[str],
                        sample_bytes: int) -> BPETokenizer:
    """Train byte-level BPE on the inputs, or on an even sample of about `sample_bytes` when they are larger, into
    `out` (new or empty; it appears only when the tokenizer is saved)."""
    specials = (END_OF_DOCUMENT, *[t for t in special_tokens if t != END_OF_DOCUMENT])
    problem = vocab_size_problem(vocab_size, len(specials))  # before reading: the trainer aborts on huge ones
    return _train_on_sample(settings, out, sample_bytes, problem, lambda texts, training: train_bpe(
        texts, vocab_size, special_tokens=specials, training_info=training))


def train_char_word_on_corpus(level: str, settings: TokenizeSettings, vocab_size: int, out: Path, *,
                              sample_bytes: int) -> char_word.CharWordTokenizer:
    """Train a character-level or word-level tokenizer (`level`: char or word) on the inputs, or on an even sample
    of about `sample_bytes` when they are larger, into `out` (as train_bpe_on_corpus)."""
    problem = char_word.vocab_size_problem(level, vocab_size)
    return _train_on_sample(settings, out, sample_bytes, problem, lambda texts, training: char_word.train_char_word(
        level, texts, vocab_size, training_info=training))


def _train_on_sample(settings: TokenizeSettings, out: Path, sample_bytes: int, vocab_problem: str | None, train):
    """`train(texts, training_info)` on the inputs or an even sample of them, saved into `out`, after checking the
    arguments (`vocab_problem`: what is wrong with --vocab-size, if anything) and before reading anything."""
    if sample_bytes < 1:
        raise UserError(f"--sample-bytes must be positive, got {sample_bytes}")
    if vocab_problem:
        raise UserError(f"--vocab-size {vocab_problem}")
    check_new_output(out)
    plan = plan_inputs(None, settings, piece_bytes=SAMPLE_PIECE_BYTES)
    used = {"documents": 0, "bytes": 0}

    def texts() -> Iterator[str]:
        for piece in _spread(plan, sample_bytes):
            for segment in piece.segments:
                for doc in iter_docs(segment, settings.read):
                    data = doc.data.encode("utf-8") if isinstance(doc.data, str) else doc.data
                    used["documents"] += doc.end
                    used["bytes"] += len(data)
                    yield data.decode("utf-8", "replace")  # training only counts: a stray byte may be replaced

    training = {"inputs": shown_inputs(settings), "files": len(plan.files), "input_bytes": plan.bytes,
                "sampled": plan.bytes > sample_bytes, "sample": used, "skipped": plan.skipped}
    try:
        tokenizer = train(texts(), training)
    except ValueError as e:
        raise UserError(str(e)) from None
    with new_output(Path(out)) as tmp:
        tokenizer.save(tmp)
    return tokenizer


def _spread(plan: CorpusPlan, sample_bytes: int) -> list:
    """Pieces spread evenly over the corpus that add up to about `sample_bytes` (all of them if it is smaller)."""
    n = len(plan.pieces)
    if plan.bytes <= sample_bytes:
        return plan.pieces
    k = max(1, min(n, math.ceil(n * sample_bytes / plan.bytes)))
    return [plan.pieces[i * n // k] for i in range(k)]
