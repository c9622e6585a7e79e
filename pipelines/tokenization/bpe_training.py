"""`arscale tokenizer train bpe`: byte-level BPE trained on a corpus, or on an even sample of it (no Ray).

It plans and reads the corpus with the same code as `arscale tokenize` (pipelines.tokenization.corpus_to_shards).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

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
    if sample_bytes < 1:
        raise UserError(f"--sample-bytes must be positive, got {sample_bytes}")
    specials = (END_OF_DOCUMENT, *[t for t in special_tokens if t != END_OF_DOCUMENT])
    if problem := vocab_size_problem(vocab_size, len(specials)):  # before reading: the trainer aborts on huge ones
        raise UserError(f"--vocab-size {problem}")
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
                    yield data.decode("utf-8", "replace")  # training only counts pairs: a stray byte may be replaced

    training = {"inputs": shown_inputs(settings), "files": len(plan.files), "input_bytes": plan.bytes,
                "sampled": plan.bytes > sample_bytes, "sample": used, "skipped": plan.skipped}
    try:
        tokenizer = train_bpe(texts(), vocab_size, special_tokens=specials, training_info=training)
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
