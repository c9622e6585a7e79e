"""Planning a study: its StudyConfig as the DAG of steps, built from the config alone and cheaply.

    corpus ─► tokenizer ─► shards ─► train-<run> ─► eval-<run> ─► fit ─► report
       └──────────────────────┘    (one pair per family and size)         ▲
                                                                          └── train/eval outputs

An image study has one shard set per token stream instead (see pipelines/steps/images.py): raw pixels, and the
codes of each image tokenizer; each grid models one stream, and the fits and the report compare them.

Planning builds no model and reads no data beyond one image's size: parameter counts and FLOPs come from the
families' configs (their closed forms), image sizes from a header or a single image (armodels.images.image_shape),
code grids from the tokenizers' configs. So `arscale study run --dry-run` answers in seconds even for models far
larger than this machine's memory, and it checks what can be checked before anything runs. Running the plan is
pipelines/study.py's job.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, replace
from pathlib import Path

import armodels
from armodels.device import DeviceError, resolve_device
from armodels.image_tokenizer import code_stream_shape
from armodels.images import ImageDataError, image_shape
from armodels.train import model_costs
from pipelines.config import TEXT_STREAM, GridConfig, StudyConfig, model_fields
from pipelines.errors import UserError
from pipelines.executor import Executor
from pipelines.progress import human
from pipelines.step import Resources, Step
from pipelines.steps import corpus, evaluate, fit, images, report, text_shards, text_tokenizer, train
from pipelines.steps.images import pixel_levels


def token_budget(cfg: StudyConfig, params_nonembedding: int, override: int | None) -> int:
    """Tokens for one size: its override, else training.tokens, else tokens_per_param × N_nonemb, clipped."""
    t = cfg.training
    if override or t.tokens:
        return override or t.tokens
    return int(min(max(t.tokens_per_param * params_nonembedding, t.min_tokens), t.max_tokens))


@dataclass(frozen=True)
class StreamShape:
    """What a grid's models see of its token stream: the vocabulary and one training window. Image streams also
    give the grid of one image (height × width), which image families (PixelCNN, MADE) take instead of seq_len."""

    vocab_size: int
    seq_len: int
    grid: tuple[int, int] | None = None

    def fields_for(self, family: str) -> dict[str, int]:
        """The config fields the study sets on a `family` model of this stream (armodels.fields_set_by_study)."""
        values = {"vocab_size": self.vocab_size, "seq_len": self.seq_len}
        if self.grid:
            values.update(height=self.grid[0], width=self.grid[1])
        return {name: values[name] for name in armodels.fields_set_by_study(family)}


def stream_shapes(cfg: StudyConfig) -> dict[str, StreamShape]:
    """The shape of each token stream of the study, known before any step runs."""
    if not cfg.is_image_study:
        return {TEXT_STREAM: StreamShape(cfg.tokenizer.vocab_size, cfg.models.seq_len)}
    try:
        height, width, channels = image_shape(cfg.images.data, split="test")
    except (ImageDataError, OSError) as e:
        raise UserError(f"images.data: {e}") from None
    shapes = {"pixels": StreamShape(pixel_levels(cfg.images.binarize), height * width * channels,
                                    (height, width) if channels == 1 else None)}
    for kind, tok in cfg.image_tokenizers.items():
        try:
            codes, (h, w) = code_stream_shape(kind, tok.model, (height, width, channels))
        except (TypeError, ValueError) as e:
            raise UserError(f"image_tokenizers.{kind}.model: {e}") from None
        shapes[kind] = StreamShape(codes, h * w, (h, w))
    return shapes


def grid_runs(cfg: StudyConfig, gpus: float = 0.0) -> list[tuple[GridConfig, train.TrainStepConfig]]:
    """(grid, training-step config) for each model size of every grid; with training.flops_budgets, one per size
    and budget instead (an isoFLOP grid: each size gets the tokens that spend the budget, in the fit's convention).
    Each run's device (training.device or the size's) is resolved against `gpus`, the GPUs of the cluster."""
    t = cfg.training
    shapes = stream_shapes(cfg)
    out = []
    for grid in cfg.models.grids:
        shape = shapes[grid.stream]
        if armodels.is_image_family(grid.family) and shape.grid is None:
            raise UserError(f"models: {grid.family} models single-channel images; the {grid.stream} stream of "
                            f"{cfg.images.data} is not one (use a sequence family such as transformer)")
        for size in grid.sizes:
            model = {**model_fields(size), **shape.fields_for(grid.family)}
            costs = model_costs(grid.family, model)
            name = size.get("name") or f"{grid.series}-{human(costs.params_nonembedding)}"
            budgets = {name: token_budget(cfg, costs.params_nonembedding, size.get("tokens"))}
            if t.flops_budgets:
                per_layer = cfg.fit.convention == "per_layer"
                per_token = costs.flops_per_token if per_layer else 6 * costs.params_nonembedding
                budgets = {f"{name}-c{c:.0e}".replace("+", ""): max(1, round(c / per_token)) for c in t.flops_budgets}
            try:
                device = resolve_device(size.get("device") or t.device, gpus)
            except DeviceError as e:
                raise UserError(f"models: size {name}: {e}") from None
            on_gpu = device == "cuda"
            for run_name, tokens in budgets.items():
                out.append((grid, train.TrainStepConfig(
                    name=run_name, family=grid.family, model=model,
                    train=t.train_config(tokens=tokens, lr=size.get("lr"), seed=cfg.seed, device=device),
                    num_workers=size.get("num_workers") or t.num_workers, cpus_per_worker=t.cpus_per_worker,
                    gpus_per_worker=(size.get("gpus_per_worker") or t.gpus_per_worker) if on_gpu else 0.0)))
    names = [c.name for _, c in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"models: several sizes are named {', '.join(repeated)}; give them distinct `name`s")
    return out


def train_configs(cfg: StudyConfig, gpus: float = 0.0) -> list[train.TrainStepConfig]:
    """One training-step config per model size of every grid (and per FLOPs budget of an isoFLOP grid)."""
    return [tc for _, tc in grid_runs(cfg, gpus)]


def corpus_config(cfg: StudyConfig) -> corpus.CorpusStepConfig:
    c = cfg.corpus
    shared = c.model_dump(include={"max_bytes", "val_fraction", "max_file_bytes"})
    if c.source == "python-stdlib":
        return corpus.stdlib_config(**shared, seed=cfg.seed)
    # Absolute paths, so the step's hash and its reading do not depend on the directory the study runs from.
    paths = tuple(p if glob.has_magic(p) else str(Path(p).resolve()) for p in c.paths)
    return corpus.CorpusStepConfig(paths=paths, extensions=tuple(c.extensions), **shared, seed=cfg.seed)


def text_streams(cfg: StudyConfig) -> dict[str, tuple[Step, Step]]:
    """corpus ─► tokenizer ─► shards: the text stream's (shard step, tokenizer step)."""
    c = cfg.corpus
    corpus_step = Step("corpus", corpus.build_corpus, corpus_config(cfg), version=corpus.VERSION,
                       describe=f"{c.source}, up to {human(c.max_bytes)}B, {c.val_fraction:.0%} held out")
    tok_step = Step("tokenizer", text_tokenizer.train_text_tokenizer,
                    text_tokenizer.TextTokenizerStepConfig(**cfg.tokenizer.model_dump()),
                    inputs={"corpus": corpus_step}, version=text_tokenizer.VERSION,
                    describe=f"byte-level BPE, vocab {cfg.tokenizer.vocab_size}")
    shard_step = Step("shards", text_shards.shard_corpus, text_shards.TextShardStepConfig(**cfg.shards.model_dump()),
                      inputs={"corpus": corpus_step, "tokenizer": tok_step}, version=text_shards.VERSION,
                      describe=f"Parquet shards of {human(cfg.shards.shard_tokens)} tokens")
    return {TEXT_STREAM: (shard_step, tok_step)}


def image_streams(cfg: StudyConfig) -> dict[str, tuple[Step, Step]]:
    """images ─► [tokenizer-<kind> ─►] shards-<stream>: each image stream's (shard step, decoder step); the
    decoder is the image tokenizer, or for pixels the images step itself."""
    i = cfg.images
    images_step = Step("images", images.gather_images, images.ImagesStepConfig(**i.model_dump()),
                       version=images.VERSION,
                       describe=f"{i.data}: {i.train_images:,} train, {i.test_images:,} test"
                                + (", binarized" if i.binarize else ""))
    used = {grid.stream for grid in cfg.models.grids}
    out = {}
    if "pixels" in used:
        levels = pixel_levels(i.binarize)
        out["pixels"] = (Step("shards-pixels", images.shard_pixels,
                              images.ImageShardStepConfig(**cfg.shards.model_dump(), levels=levels),
                              inputs={"images": images_step}, version=images.VERSION,
                              describe=f"pixels ({levels} levels) in raster order"),
                         images_step)
    for kind, t in cfg.image_tokenizers.items():
        if kind not in used:
            continue
        tok_step = Step(f"tokenizer-{kind}", images.train_study_image_tokenizer,
                        images.ImageTokenizerStepConfig(kind=kind, **t.model_dump(), seed=cfg.seed),
                        inputs={"images": images_step}, version=images.VERSION,
                        describe=f"{kind} autoencoder, {t.steps} steps")
        out[kind] = (Step(f"shards-{kind}", images.shard_codes, images.ImageShardStepConfig(**cfg.shards.model_dump()),
                          inputs={"images": images_step, "tokenizer": tok_step}, version=images.VERSION,
                          describe=f"{kind} code grids in raster order"), tok_step)
    return out


def build_steps(cfg: StudyConfig, gpus: float = 0.0) -> list[Step]:
    """The study's DAG, as the list of its final steps (just the report), which reach every other step. `gpus`:
    the GPUs of the cluster it will run on (training.device auto uses them when there are any)."""
    streams = image_streams(cfg) if cfg.is_image_study else text_streams(cfg)
    e, f = cfg.evaluation, cfg.fit
    eval_cfg = evaluate.EvalStepConfig(**e.model_dump(), seed=cfg.seed)
    trains, evals = {}, {}
    for grid, tc in grid_runs(cfg, gpus):
        shard_step, decoder_step = streams[grid.stream]
        run = tc.run(Path("."))
        flops = run.flops(f.convention)
        trains[tc.name] = Step(
            f"train-{tc.name}", train.train_model, tc, inputs={"shards": shard_step}, version=train.VERSION,
            resources=Resources(cpus=tc.num_workers * tc.cpus_per_worker, held_by_workers=True,
                                cpus_per_worker=tc.cpus_per_worker, gpus=tc.num_workers * tc.gpus_per_worker,
                                gpus_per_worker=tc.gpus_per_worker), priority=flops,
            describe=(f"{tc.family}, {human(run.costs().params_nonembedding)} params (non-emb), "
                      f"{human(run.tokens_seen)} tokens, {flops:.2e} FLOPs ({f.convention}); {tc.describe_workers()}"))
        # a GPU run is evaluated and sampled on a GPU too, with the share of one that a worker of its run had
        run_eval_cfg = replace(eval_cfg, device=tc.train.device)
        if grid.stream == TEXT_STREAM:
            step_fn, step_cfg = evaluate.evaluate_model, run_eval_cfg
        else:
            step_fn = evaluate.evaluate_image_model
            step_cfg = evaluate.ImageEvalStepConfig(stream=grid.stream, common=run_eval_cfg)
        eval_gpus = min(tc.gpus_per_worker, 1.0)
        evals[tc.name] = Step(f"eval-{tc.name}", step_fn, step_cfg, version=evaluate.VERSION,
                              resources=Resources(cpus=1, gpus=eval_gpus, gpus_per_worker=eval_gpus),
                              inputs={"train": trains[tc.name], "shards": shard_step, "tokenizer": decoder_step},
                              describe=f"val loss on ≤{human(e.max_tokens)} tokens, {e.samples} samples")
    fit_step = Step("fit", fit.fit_study,
                    fit.FitStepConfig(**f.model_dump(), seed=cfg.seed, isoflop=bool(cfg.training.flops_budgets)),
                    inputs=evals, version=fit.VERSION,
                    describe=f"L(C) and L(N) power laws, {f.bootstrap} bootstraps, hold out top {f.holdout_top}")
    # an image study's report also shows the data it used and each tokenizer's reconstructions
    decoders = {"images" if s.name == "images" else s.name: s for _, s in streams.values() if s.name != "tokenizer"}
    report_step = Step("report", report.write_report,
                       report.ReportStepConfig(study=cfg.name, config=cfg.stable_dump()),
                       inputs={"fit": fit_step, **{f"train-{k}": v for k, v in trains.items()},
                               **{f"eval-{k}": v for k, v in evals.items()}, **decoders},
                       version=report.VERSION, describe="report.md with plots")
    return [report_step]


def describe_plan(executor: Executor, targets: list[Step]) -> str:
    """The DAG as a table: each step, whether it will run or be skipped, and what it does."""
    rows = []
    for step, state in executor.plan(targets):
        action = "skip (done)" if state["state"] == "succeeded" else f"run ({state['state']})"
        rows.append((step.dirname, action, step.describe))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'step':<{width}}  {'action':<20}  what", f"{'-' * width}  {'-' * 20}  ----"]
    lines += [f"{d:<{width}}  {a:<20}  {w}" for d, a, w in rows]
    return "\n".join(lines)
