"""A finished training run, loaded to sample from: its record, its model and its shards' tokenizer; text
continuations and image samples.

A run folder (a study's `train-<size>-<hash>/`) holds run.json (what was trained, on which shards), result.json
(how the run ended), model.json and model.safetensors (loaded as JSON and safetensors: nothing is unpickled). The
shards keep a copy of their tokenizer in `<shards>/train/tokenizer/`: byte-level BPE, char or word for text, a
VQ-VAE or FSQ for image codes. The pixel stream has none: its tokens are pixel levels.

Text samples continue a prompt as a new document: after the end-of-document token, as every document but the
first follows one in the token stream, and they end at the next end-of-document token or after `max_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from armodels.char_word import TextTokenizer, load_text_tokenizer
from armodels.files import read_json
from armodels.image_tokenizer import ImageTokenizer, is_image_tokenizer
from armodels.sampling import beam_continue, beam_search, continue_sequences
from armodels.shards import TOKENIZER_COPY, read_manifest
from armodels.train import TrainRun, load_model


class RunNotUsable(ValueError):
    """The folder is not a finished run with a model to sample from; the message says why, in one line."""


@dataclass(frozen=True)
class TrainedRun:
    directory: Path
    run: TrainRun
    result: dict

    @classmethod
    def open(cls, directory: Path) -> TrainedRun:
        """The run in `directory`, which must have finished with status ok (not diverged or interrupted)."""
        directory = Path(directory)
        if not (directory / "run.json").is_file():
            raise RunNotUsable(f"{directory} is not a training run folder (it has no run.json): give a study's "
                               "train-<size>-<hash> folder")
        run = TrainRun.load(directory / "run.json")
        if not (directory / "result.json").is_file():
            raise RunNotUsable(f"the run in {directory} has not finished (no result.json): wait for it, or resume it "
                               "by running its study again")
        result = read_json(directory / "result.json", "training result")
        if result.get("status") != "ok":
            raise RunNotUsable(f"the run in {directory} {result.get('status')} ({result.get('reason')}): it has no "
                               "model to sample from")
        return cls(directory, run, result)

    def model(self):
        """The trained model on the CPU, in eval mode."""
        return load_model(self.directory)


def shard_tokenizer(train_shards: Path) -> TextTokenizer | ImageTokenizer | None:
    """The tokenizer kept with a shard set (BPE, char or word, or an image tokenizer), checked against the
    manifest; None for a shard set without one (the pixel stream). FileNotFoundError or ValueError name what is
    missing or wrong."""
    train_shards = Path(train_shards)
    manifest = read_manifest(train_shards)
    directory = train_shards / TOKENIZER_COPY
    if not (directory / "tokenizer.json").is_file():
        return None
    tokenizer = ImageTokenizer.load(directory) if is_image_tokenizer(directory) else load_text_tokenizer(directory)
    sha256 = tokenizer.sha256 if isinstance(tokenizer, ImageTokenizer) else tokenizer.meta.sha256
    if sha256 != manifest.tokenizer_sha256:
        raise ValueError(f"{directory} is not the tokenizer that made {train_shards} (its sha256 differs from the "
                         "manifest's); restore it from the study's tokenizer folder")
    return tokenizer


def continue_text(model, tokenizer: TextTokenizer, prompt: str, *, n: int, max_tokens: int, temperature: float,
                  top_k: int | None, top_p: float | None, seed: int) -> list[tuple[str, bool]]:
    """`n` samples of a document that starts with `prompt`: (the text, prompt included; whether the model ended the
    document before `max_tokens`). Temperature 0 is greedy; the same seed gives the same samples."""
    context = _text_context(tokenizer, prompt).repeat(n, 1)
    generator = torch.Generator(device=model.ordering.device).manual_seed(seed)
    drawn = continue_sequences(model, context, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               generator=generator, stop_token=tokenizer.eod_id)
    return [_text_of(tokenizer, prompt, row.tolist()) for row in drawn]


def beam_text(model, tokenizer: TextTokenizer, prompt: str, *, n: int, max_tokens: int,
              beam: int) -> list[tuple[str, bool, float]]:
    """The `n` most likely continuations of `prompt` that beam search of width `beam` finds, best first: (text,
    whether it ends the document, log-probability of the continuation in nats)."""
    drawn, scores = beam_continue(model, _text_context(tokenizer, prompt)[0], max_tokens, beam,
                                  stop_token=tokenizer.eod_id)
    return [(*_text_of(tokenizer, prompt, row.tolist()), float(score)) for row, score in zip(drawn[:n], scores[:n])]


def _text_context(tokenizer: TextTokenizer, prompt: str) -> torch.Tensor:
    """[1, P]: end-of-document (a new document starts) and the prompt's tokens."""
    return torch.tensor([[tokenizer.eod_id, *tokenizer.encode_batch([prompt])[0]]], dtype=torch.long)


def _text_of(tokenizer: TextTokenizer, prompt: str, ids: list[int]) -> tuple[str, bool]:
    """The prompt and the drawn tokens up to the first end-of-document, and whether there was one. The bytes are
    decoded on their own, so a character the model left unfinished cannot change the prompt."""
    ended = tokenizer.eod_id in ids
    if ended:
        ids = ids[:ids.index(tokenizer.eod_id)]
    ids = [i for i in ids if i < tokenizer.vocab_size]  # a model may have more outputs than the tokenizer has tokens
    return prompt + tokenizer.decode_bytes(ids).decode("utf-8", "replace"), ended


def image_tokens(model, *, n: int, temperature: float, top_k: int | None, top_p: float | None, seed: int,
                 beam: int | None, cls: int | None = None) -> tuple[np.ndarray, list[float] | None]:
    """`n` token sequences [n, T] of whole images (of class `cls`, for a class-conditioned model): drawn (seeded),
    or with `beam` the n most likely of a beam search of that width, with their log-probabilities."""
    if beam:
        sequences, scores = beam_search(model, beam, cls=cls)
        return sequences[:n].cpu().numpy(), [float(s) for s in scores[:n]]
    tokens = model.sample(n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                          classes=None if cls is None else torch.full((n,), cls))
    return tokens.cpu().numpy(), None


def pixel_decoder(shape: tuple[int, int, int], levels: int) -> Callable[[np.ndarray], np.ndarray]:
    """Pixel-stream tokens [N, H·W·C] (levels 0..levels-1, raster order, channels innermost) → uint8 [N, H, W, C]."""
    scale = 255 // (levels - 1)
    return lambda tokens: (np.asarray(tokens) * scale).reshape(-1, *shape).astype(np.uint8)


def code_decoder(tokenizer: ImageTokenizer) -> Callable[[np.ndarray], np.ndarray]:
    """Code-stream tokens [N, h·w] (the code grid in raster order) → uint8 images [N, H, W, C]."""
    h, w = tokenizer.grid_shape
    return lambda tokens: tokenizer.decode(np.asarray(tokens).reshape(-1, h, w))
