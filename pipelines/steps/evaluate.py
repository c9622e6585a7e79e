"""Step `eval-<size>`: validation loss (nats/token, bits/byte) and samples of one trained model.

Its eval.json is the run's record for the fit: size, tokens, FLOPs in each convention, losses and status.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from armodels.bpe import BPETokenizer
from armodels.data import TokenWindows
from armodels.evaluate import evaluate_loss
from armodels.files import read_json, write_json_atomic
from armodels.sampling import generate
from armodels.shards import load_token_stream
from armodels.train import load_model
from pipelines.executor import StepContext

VERSION = "1"


@dataclass(frozen=True)
class EvalStepConfig:
    max_tokens: int
    samples: int
    sample_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int
    threads: int = 1


def run_record(train_dir: Path) -> dict:
    """The fields of a training run that the fit and the report need, from its run.json and result.json."""
    run, result = read_json(train_dir / "run.json"), read_json(train_dir / "result.json")
    model = run["model"]
    return {
        "run_id": result["name"], "family": "transformer", "status": result["status"], "reason": result["reason"],
        "n_layer": model["n_layer"], "d_model": model["n_embd"], "n_head": model["n_head"],
        "seq_len": model["seq_len"], "vocab_size": model["vocab_size"],
        "params": result["params"], "params_nonembedding": result["params_nonembedding"],
        "tokens": result["tokens"], "flops_6ND": result["flops_6ND"], "flops_per_layer": result["flops_per_layer"],
        "initial_loss": result["initial_loss"], "final_train_loss": result["final_train_loss"],
        "train_seconds": result["train_seconds"], "tokens_per_s": result["tokens_per_s"],
    }


def evaluate_model(config: EvalStepConfig, ctx: StepContext) -> dict:
    torch.set_num_threads(config.threads)
    train_dir = ctx.inputs["train"]
    record = run_record(train_dir)
    if record["status"] != "ok":  # a diverged run has no weights worth scoring; the record says why
        record.update(loss=None, bits_per_byte=None)
        write_json_atomic(ctx.output / "eval.json", record)
        ctx.log(f"not evaluated: the run {record['status']} ({record['reason']})")
        return {"status": record["status"], "reason": record["reason"]}

    model = load_model(train_dir)
    tokenizer = BPETokenizer.load(ctx.inputs["tokenizer"])
    seq_len = model.config.seq_len
    val = TokenWindows(load_token_stream(Path(ctx.inputs["shards"]) / "val"), seq_len)
    result = evaluate_loss(model, val, token_bytes=tokenizer.token_bytes(), max_windows=config.max_tokens // seq_len)
    record.update(loss=result.nats_per_token, bits_per_byte=result.bits_per_byte, eval=asdict(result))
    write_json_atomic(ctx.output / "eval.json", record)

    samples = []
    if config.samples:
        prompt = torch.full((config.samples, 1), tokenizer.eod_id, dtype=torch.long)
        length = min(config.sample_tokens, seq_len - 1)
        out = generate(model, prompt, length, temperature=config.temperature, top_k=config.top_k,
                       top_p=config.top_p, seed=config.seed)
        samples = [tokenizer.decode(row[1:].tolist()) for row in out]
    write_json_atomic(ctx.output / "samples.json", {"temperature": config.temperature, "top_k": config.top_k,
                                                    "top_p": config.top_p, "samples": samples})
    ctx.log(f"val {result.nats_per_token:.4f} nats/token, {result.bits_per_byte:.4f} bits/byte "
            f"on {result.tokens:,} tokens")
    logger = ctx.logger()
    if logger:
        logger.log_metrics({"val_loss": result.nats_per_token, "val_bits_per_byte": result.bits_per_byte,
                            "val_perplexity": result.perplexity}, step=record["tokens"])
        logger.log_artifact(ctx.output / "samples.json")
        logger.flush()
    return {"loss": result.nats_per_token, "bits_per_byte": result.bits_per_byte}
