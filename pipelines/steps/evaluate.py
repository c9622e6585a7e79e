"""Step `eval-<size>`: validation loss (nats/token, bits/byte) and samples of one trained model.

Its eval.json is the run's record for the fit: size, tokens, FLOPs in each convention, losses and status.
In image studies (`evaluate_image_model`) the loss is also given in bits per dimension (pixel), which compares
streams, and for code streams beside the tokenizer's distortion (rate–distortion); samples are a PNG grid. A
class-conditioned model is scored given each test image's class (conditional bits/dim), and its grid has one row
of samples per class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from armodels.char_word import CharWordTokenizer, load_text_tokenizer, text_bytes_of_stream
from armodels.config_fields import added_field
from armodels.data import TokenWindows
from armodels.device import torch_device
from armodels.evaluate import EvalResult, evaluate_loss
from armodels.files import read_json, write_json_atomic
from armodels.image_tokenizer import ImageTokenizer
from armodels.shards import iter_rows_with_bytes, load_document_labels, load_token_stream
from armodels.train import TrainRun, flops_conventions, load_model
from pipelines.step import StepContext
from pipelines.steps import series_of
from pipelines.steps.images import load_split, save_image_grid

VERSION = "2"  # 2: records carry compute in every convention, lr, seed and batch size


@dataclass(frozen=True)
class EvalStepConfig:
    max_tokens: int
    samples: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int
    threads: int = 1
    device: str = added_field("cpu")  # the training run's: a GPU run is scored and sampled on a GPU
    series: str = added_field("")  # the grid's label (GridConfig.label), when it has one: what the fits group by
    ensemble: int = added_field(1)  # made: the masks whose mean probability is scored (armodels.evaluate_loss)
    text_stream: str = added_field("text")  # "text" (the study's tokenizer), or a text_tokenizers kind


def run_record(train_dir: Path) -> dict:
    """The fields of a training run that the fit and the report need, from its run.json and result.json."""
    run, result = TrainRun.load(train_dir / "run.json"), read_json(train_dir / "result.json")
    keep = ("status", "reason", "params", "params_nonembedding", "tokens", "initial_loss", "final_train_loss",
            "train_seconds", "tokens_per_s")
    # compute in every convention that applies to the family, so the fit can compare them (scaling.flops)
    flops = {f"flops_{c}": run.flops(c, result["tokens"]) for c in flops_conventions(run.family)}
    return {"run_id": run.name, "family": run.family, "seq_len": run.seq_len, "vocab_size": run.model["vocab_size"],
            **{k: result[k] for k in keep}, **flops, "lr": run.train.lr, "seed": run.train.seed,
            "batch_size": run.train.batch_size, "device": result.get("device", "cpu"), "config": run.model}


def _unfinished(ctx: StepContext, record: dict) -> dict | None:
    """A diverged run has no weights worth scoring: its record says why, and nothing else is done."""
    if record["status"] == "ok":
        return None
    record.update(loss=None, bits_per_byte=None)
    write_json_atomic(ctx.output / "eval.json", record)
    log_record(ctx, record)
    ctx.log(f"not evaluated: the run {record['status']} ({record['reason']})")
    return {"status": record["status"], "reason": record["reason"]}


def evaluate_model(config: EvalStepConfig, ctx: StepContext) -> dict:
    torch.set_num_threads(config.threads)
    train_dir = ctx.inputs["train"]
    record = run_record(train_dir)
    if config.series:
        record["series"] = config.series
    record["stream"] = config.text_stream
    if (unfinished := _unfinished(ctx, record)) is not None:
        return unfinished

    model = load_model(train_dir).to(torch_device(config.device))
    tokenizer = load_text_tokenizer(ctx.inputs["tokenizer"])
    val_dir = Path(ctx.inputs["shards"]) / "val"
    val = TokenWindows(load_token_stream(val_dir), model.seq_len)
    result = evaluate_loss(model, val, token_bytes=tokenizer.token_bytes(),
                           max_windows=max(1, config.max_tokens // model.seq_len))
    record["tokenizer"] = "bpe"
    if isinstance(tokenizer, CharWordTokenizer):
        result, unknown = _over_text_bytes(result, tokenizer, val_dir)
        record.update(tokenizer=tokenizer.level, tokenizer_coverage=tokenizer.meta.coverage, **unknown)
    record.update(loss=result.nats_per_token, bits_per_byte=result.bits_per_byte, eval=asdict(result))
    write_json_atomic(ctx.output / "eval.json", record)

    samples = []
    if config.samples:  # each starts right after an end-of-document token: the beginning of a new file
        prompt = torch.full((config.samples, 1), tokenizer.eod_id, dtype=torch.long)
        out = model.sample(config.samples, temperature=config.temperature, top_k=config.top_k,
                           top_p=config.top_p, seed=config.seed, prompt=prompt)
        samples = [tokenizer.decode(row[1:].tolist()) for row in out]
    write_json_atomic(ctx.output / "samples.json", {"temperature": config.temperature, "top_k": config.top_k,
                                                    "top_p": config.top_p, "samples": samples})
    ctx.log(f"val {result.nats_per_token:.4f} nats/token, {result.bits_per_byte:.4f} bits/byte "
            f"on {result.tokens:,} tokens")
    log_record(ctx, record, {"val_loss": result.nats_per_token, "val_bits_per_byte": result.bits_per_byte,
                             "val_perplexity": result.perplexity}, artifact=ctx.output / "samples.json")
    return {"loss": result.nats_per_token, "bits_per_byte": result.bits_per_byte}


def _over_text_bytes(result: EvalResult, tokenizer: CharWordTokenizer, val_dir: Path) -> tuple[EvalResult, dict]:
    """Bits per byte over the bytes of the original text, every unknown token counting the bytes it replaced (the
    shards record each document's bytes; armodels.char_word explains why this is a lower bound when tokens are
    unknown), and the share of those bytes that were unknown."""
    text_bytes, unknown = text_bytes_of_stream(tokenizer, iter_rows_with_bytes(val_dir), result.tokens)
    bits = result.bits_per_token * result.tokens
    return (replace(result, bits_per_byte=bits / text_bytes if text_bytes else None, bytes=round(text_bytes)),
            {"unknown_byte_share": unknown / text_bytes if text_bytes else 0.0})


@dataclass(frozen=True)
class ImageEvalStepConfig:
    stream: str  # "pixels", "pyramid", "vqvae", "fsq", "lfq" or "palette"
    common: EvalStepConfig


def evaluate_image_model(config: ImageEvalStepConfig, ctx: StepContext) -> dict:
    """Test-split loss in nats/token and bits/dim, bits per image, the stream's distortion, and a grid of samples."""
    c = config.common
    torch.set_num_threads(c.threads)
    train_dir = ctx.inputs["train"]
    record = run_record(train_dir)
    record.update(stream=config.stream, series=c.series or f"{config.stream}-{record['family']}")
    if (unfinished := _unfinished(ctx, record)) is not None:
        return unfinished

    model = load_model(train_dir).to(torch_device(c.device))
    decode, pixels_per_image, distortion = _image_decoder(config.stream, ctx.inputs["tokenizer"], record["vocab_size"])
    # every token of an image stands for the same number of pixels, so bits per byte (pixel) is bits per dim
    per_token = pixels_per_image / model.seq_len
    val_dir = Path(ctx.inputs["shards"]) / "val"
    val = TokenWindows(load_token_stream(val_dir), model.seq_len,
                       labels=load_document_labels(val_dir) if model.n_classes else None)
    result = evaluate_loss(model, val, max_windows=max(1, c.max_tokens // model.seq_len), ensemble=c.ensemble)
    if c.ensemble > 1:
        record["ensemble"] = c.ensemble
    bits_per_dim = result.bits_per_token / per_token
    record.update(loss=result.nats_per_token, bits_per_byte=bits_per_dim, bits_per_dim=bits_per_dim,
                  bits_per_image=result.bits_per_token * model.seq_len, **distortion, eval=asdict(result))
    write_json_atomic(ctx.output / "eval.json", record)
    if c.samples and model.n_classes:  # `samples` of each class, one row per class
        classes = torch.arange(model.n_classes).repeat_interleave(c.samples)
        tokens = model.sample(len(classes), temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, seed=c.seed,
                              classes=classes)
        save_image_grid(decode(tokens.cpu().numpy()), ctx.output / "samples.png", columns=c.samples)
    elif c.samples:
        tokens = model.sample(c.samples, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, seed=c.seed)
        save_image_grid(decode(tokens.cpu().numpy()), ctx.output / "samples.png", columns=min(8, c.samples))
    ctx.log(f"test {result.nats_per_token:.4f} nats/token, {bits_per_dim:.4f} bits/dim, "
            f"{record['bits_per_image']:.1f} bits/image on {result.tokens:,} tokens")
    log_record(ctx, record, {"val_loss": result.nats_per_token, "val_bits_per_dim": bits_per_dim,
                             "val_bits_per_image": record["bits_per_image"]},
               artifact=ctx.output / "samples.png" if c.samples else None)
    return {"loss": result.nats_per_token, "bits_per_dim": bits_per_dim}


def _image_decoder(stream: str, source: Path, vocab_size: int):
    """(tokens [N, T] → uint8 images [N, H, W, C], pixels per image, the stream's distortion on the test split)."""
    if stream in ("pixels", "pyramid"):  # the source is the images step; tokens are levels 0..vocab_size-1
        shape, scale = load_split(source, "test").shape[1:], 255 // (vocab_size - 1)
        size = int(np.prod(shape))  # a pyramid's sequence ends with the full image, after its low-resolution one
        return (lambda tokens: (tokens[:, -size:] * scale).reshape(-1, *shape).astype(np.uint8)), size, {
            "mse": 0.0}  # lossless

    tokenizer = ImageTokenizer.load(source)
    metrics = read_json(source / "metrics.json", "image tokenizer metrics")
    h, w = tokenizer.grid_shape
    return ((lambda tokens: tokenizer.decode(tokens.reshape(-1, h, w))), int(np.prod(tokenizer.image_shape)),
            {"mse": metrics["mse"], "psnr": metrics["psnr"], "codebook_usage": metrics["usage"]})


def log_record(ctx: StepContext, record: dict, metrics: dict | None = None, artifact: Path | None = None) -> None:
    """The whole run record into the step's MLflow run, so `arscale fit --mlflow` can rebuild the run table."""
    numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "eval" in record:  # how many validation tokens val_loss was measured on
        numbers["val_tokens"] = record["eval"]["tokens"]
    ctx.tracker.log_metrics({**numbers, **(metrics or {})}, step=record["tokens"])
    # the model's shape, as the training run has it, so eval runs can be filtered and compared by it
    ctx.tracker.log_params({"family": record["family"], **{f"model.{k}": v for k, v in record["config"].items()}})
    ctx.tracker.set_tags({"arscale.family": record["family"], "arscale.series": series_of(record),
                          "arscale.run": record["run_id"], "arscale.status": record["status"]})
    if artifact:
        ctx.tracker.log_artifact(artifact)
    ctx.tracker.flush()
