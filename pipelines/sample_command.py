"""`arscale sample RUN_DIR`: samples from a trained model of a study (its parser and handler, hooked into
pipelines/cli.py by `add_parsers`).

From the run folder to its tokenizer: run.json names the shards the run was trained on (`<shards>/train`), and the
shard set keeps a copy of its tokenizer (armodels.trained_run). The pixel stream has none: the image shape comes from
the images step that the shards step lists among its inputs in its STATUS.json. A study folder that was moved is
still found: a recorded path that is gone is looked for beside the run folder, under the same name.

Text samples are printed to stdout, each under a header line; image samples are written as PNG files, never over an
existing file.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from armodels.char_word import TEXT_TOKENIZERS, TextTokenizer
from armodels.files import read_json
from armodels.image_tokenizer import ImageTokenizer
from armodels.shards import read_manifest
from armodels.trained_run import (
    RunNotUsable,
    TrainedRun,
    beam_text,
    code_decoder,
    continue_text,
    image_tokens,
    pixel_decoder,
    shard_tokenizer,
)
from pipelines.errors import UserError
from pipelines.progress import plural
from pipelines.step_status import STATUS, SUCCEEDED, step_state
from pipelines.steps.images import PIXELS_SHA256

DEFAULT_MAX_TOKENS = 200


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("sample", parents=[common],
                       description="Sample from the model of a finished training run. Text models continue --prompt "
                                   "as a new document (after the end-of-document token) up to the next "
                                   "end-of-document or --max-tokens, and print each sample under a header line; "
                                   "image models (pixels or an image tokenizer's codes) write PNG files into --out.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a finished training step folder of a study (train-<size>-<hash>)")
    p.add_argument("--prompt", default="", help="text models: the text the samples start with (default: none)")
    p.add_argument("--max-tokens", type=int, help=f"text models: at most this many new tokens per sample "
                                                  f"(default {DEFAULT_MAX_TOKENS}); image models draw whole images")
    p.add_argument("--temperature", type=float, help="divides the logits; 0 is greedy (default 1)")
    p.add_argument("--top-k", type=int, help="draw only from the K most likely tokens")
    p.add_argument("--top-p", type=float, help="draw only from the most likely tokens whose mass reaches P, in (0, 1]")
    p.add_argument("--beam", type=int, help="beam search of this width instead of sampling: the --num most likely "
                                            "samples it finds, best first, with their log-probabilities")
    p.add_argument("--seed", type=int, help="the same seed gives the same samples (default: a random one, printed)")
    p.add_argument("--num", type=int, default=1, help="number of samples (default 1)")
    p.add_argument("--class", dest="cls", type=int, metavar="K",
                   help="class-conditioned image models (models.condition: class): draw images of class K")
    p.add_argument("--out", type=Path, help="image models: folder for the PNG files (default: the current folder)")
    p.set_defaults(handler=cmd_sample)


def cmd_sample(args) -> int:
    _check_values(args)
    run = _open_run(args.run_dir)
    shards = _recorded_path(Path(run.run.train_shards), args.run_dir)
    try:
        tokenizer = shard_tokenizer(shards)
        model = run.model()
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    _check_class(args.cls, model, args.run_dir)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    if isinstance(tokenizer, TEXT_TOKENIZERS):
        return _sample_text(args, model, tokenizer, seed)
    if args.prompt:
        raise UserError(f"--prompt is for text models; {args.run_dir} models images ({run.run.name})")
    if args.max_tokens is not None:
        raise UserError(f"--max-tokens is for text models; {args.run_dir} models images, and a sample is always one "
                        f"whole image ({model.seq_len} tokens)")
    decode = code_decoder(tokenizer) if isinstance(tokenizer, ImageTokenizer) else _pixels(shards, args.run_dir)
    return _sample_images(args, model, decode, run.run.name, seed)


def _check_values(args) -> None:
    """One line for the first nonsensical value."""
    checks = [
        (args.temperature is not None and args.temperature < 0, f"--temperature must be 0 (greedy) or more, got "
                                                                 f"{args.temperature}"),
        (args.top_k is not None and args.top_k < 1, f"--top-k must be at least 1, got {args.top_k}"),
        (args.top_p is not None and not 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
        (args.beam is not None and args.beam < 1, f"--beam must be at least 1, got {args.beam}"),
        (args.num < 1, f"--num must be at least 1, got {args.num}"),
        (args.max_tokens is not None and args.max_tokens < 1, f"--max-tokens must be at least 1, got "
                                                               f"{args.max_tokens}"),
        (args.beam is not None and any(v is not None for v in (args.temperature, args.top_k, args.top_p)),
         "--beam searches for the most likely samples: it takes no --temperature, --top-k or --top-p"),
        (args.beam is not None and args.num > args.beam, f"--num {args.num} is more than --beam {args.beam} keeps: "
                                                         "raise --beam"),
    ]
    for bad, message in checks:
        if bad:
            raise UserError(message)


def _check_class(cls: int | None, model, run_dir: Path) -> None:
    """One line unless --class fits the model: given exactly when it is class-conditioned, and one of its classes."""
    if cls is not None and not model.n_classes:
        raise UserError(f"--class: the model in {run_dir} is not class-conditioned (trained without models.condition: "
                        "class); leave --class out")
    if model.n_classes and (cls is None or not 0 <= cls < model.n_classes):
        given = "" if cls is None else f", got {cls}"
        raise UserError(f"--class: the model in {run_dir} is conditioned on {model.n_classes} classes: give --class K "
                        f"with K from 0 to {model.n_classes - 1}{given}")


def _open_run(run_dir: Path) -> TrainedRun:
    """The finished run in `run_dir`; UserError says why it cannot be sampled from."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder: give a training step folder of a study (train-<size>-<hash>)")
    if (run_dir / STATUS).is_file():  # a study's step folder: its record says what it is and how it ended
        try:
            record = read_json(run_dir / STATUS)
            step = str(record.get("step", ""))
        except (ValueError, AttributeError):
            raise UserError(f"{run_dir / STATUS} is not a step's record (not a JSON object): give a training step "
                            "folder of a study") from None
        if not step.startswith("train-"):
            raise UserError(f"{run_dir} is the folder of step {step or '?'}, not of a training step: give a "
                            "train-<size>-<hash> folder")
        state = step_state(run_dir.parent, run_dir.name.removesuffix(".tmp"))
        if state.get("state") != SUCCEEDED:
            why = f": {str(state['error']).splitlines()[0]}" if state.get("error") else ""
            raise UserError(f"the run in {run_dir} did not finish (its step is {state.get('state')}{why}); run its "
                            "study again to finish it")
    try:
        return TrainedRun.open(run_dir)
    except (RunNotUsable, ValueError, FileNotFoundError) as e:
        raise UserError(str(e).splitlines()[0]) from None


def _recorded_path(path: Path, run_dir: Path) -> Path:
    """A folder a record names (`<study>/<step>/<sub>` or `<study>/<step>`), or, when the study was moved, the folder
    of the same name beside the run."""
    if path.exists():
        return path
    for moved in (run_dir.parent / path.parent.name / path.name, run_dir.parent / path.name):
        if moved.exists():
            return moved
    raise UserError(f"{path}, which the run in {run_dir} was trained on, is gone: its tokenizer is kept there")


def _pixels(shards: Path, run_dir: Path):
    """The decoder of the pixel stream: its image shape from the images step the shards step was made from."""
    manifest = read_manifest(shards)
    if manifest.tokenizer_sha256 != PIXELS_SHA256:
        raise UserError(f"the tokenizer of {shards} is missing (no tokenizer/tokenizer.json): restore it from the "
                        "study's tokenizer folder")
    try:
        inputs = read_json(shards.parent / STATUS, "the shards step's record").get("inputs", {})
        images = _recorded_path(Path(inputs["images"]), run_dir)
        shape = tuple(read_json(images / "data.json", "the images step's description")["shape"])
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot find the image shape of the pixel stream {shards} ({str(e).splitlines()[0]})") \
            from None
    return pixel_decoder(shape, manifest.vocab_size)


def _sample_text(args, model, tokenizer: TextTokenizer, seed: int) -> int:
    if args.out is not None:
        raise UserError("--out is for image models; text samples are printed")
    max_tokens = args.max_tokens or DEFAULT_MAX_TOKENS
    if args.beam:
        found = beam_text(model, tokenizer, args.prompt, n=args.num, max_tokens=max_tokens, beam=args.beam)
        samples = [(f"beam {i + 1} of {len(found)}, log-prob {score:.3f}", text, ended)
                   for i, (text, ended, score) in enumerate(found)]
    else:
        print(f"seed {seed}", file=sys.stderr)
        drawn = continue_text(model, tokenizer, args.prompt, n=args.num, max_tokens=max_tokens,
                              temperature=1.0 if args.temperature is None else args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=seed)
        samples = [(f"sample {i + 1} of {len(drawn)}", text, ended) for i, (text, ended) in enumerate(drawn)]
    for header, text, ended in samples:
        print(f"=== {header}{', end of document' if ended else ''} ===")
        print(text)
    return 0


def _sample_images(args, model, decode, run_name: str, seed: int) -> int:
    out = args.out if args.out is not None else Path(".")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the PNG files")
    if not args.beam:
        print(f"seed {seed}", file=sys.stderr)
    tokens, scores = image_tokens(model, n=args.num, temperature=1.0 if args.temperature is None else args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, seed=seed, beam=args.beam, cls=args.cls)
    out.mkdir(parents=True, exist_ok=True)
    stem = (f"{run_name}-beam{args.beam}" if args.beam else f"{run_name}-seed{seed}") \
        + ("" if args.cls is None else f"-class{args.cls}")
    paths = [_write_new_png(out, f"{stem}-{i + 1}", image) for i, image in enumerate(decode(tokens))]
    for i, path in enumerate(paths):
        print(path if scores is None else f"{path}  log-prob {scores[i]:.3f}")
    print(f"{plural(len(paths), 'image')} → {out}", file=sys.stderr)
    return 0


def _write_new_png(folder: Path, stem: str, image: np.ndarray) -> Path:
    """Write `image` (uint8 [H, W, C]) as `<stem>.png`, or `<stem>-2.png`, ... if that exists: never over a file."""
    from PIL import Image

    for k in range(1, 10_000):
        path = folder / (f"{stem}.png" if k == 1 else f"{stem}-{k}.png")
        try:
            with open(path, "xb") as f:  # created here, or FileExistsError: no race with another writer
                Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(f, format="PNG")
            return path
        except FileExistsError:
            continue
    raise UserError(f"{folder} already holds {stem}.png and 9,999 more like it: give another --out")
