"""Planning a study: its StudyConfig as the DAG of steps, built from the config alone and cheaply.

    corpus ─► tokenizer ─► shards ─► train-<run> ─► eval-<run> ─► fit ─► report
       └──────────────────────┘    (one pair per family and size)         ▲
                                                                          └── train/eval outputs

An image study has one shard set per token stream instead (see pipelines/steps/images.py): raw pixels, and the
codes of each image tokenizer; each grid models one stream, and the fits and the report compare them.

Planning builds no model and reads no data beyond one image's size (and, for class-conditioned models, the images'
labels): parameter counts and FLOPs come from the families' configs (their closed forms), image sizes from a
header or a single image (armodels.images.image_shape), code grids from the tokenizers' configs. So `arscale study
run --dry-run` answers in seconds even for models far larger than this machine's memory, and it checks what can be
checked before anything runs. Running the plan is pipelines/study.py's job.
"""

from __future__ import annotations

import glob
import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import armodels
from armodels.device import DeviceError, resolve_device
from armodels.image_tokenizer import code_stream_shape
from armodels.images import ImageDataError, image_shape, load_images
from armodels.train import ModelCosts, flops_per_token, model_costs
from pipelines.config import (
    TEXT_STREAM,
    TEXT_TOKENIZER_KINDS,
    TOKENIZER_KIND_NAMES,
    GridConfig,
    StudyConfig,
    model_fields,
)
from pipelines.errors import UserError
from pipelines.progress import human
from pipelines.step import Resources, Step
from pipelines.steps import corpus, evaluate, fit, images, report, text_shards, text_tokenizer, train
from pipelines.steps.images import pixel_levels


def token_budget(cfg: StudyConfig, grid: GridConfig, costs: ModelCosts, override: int | None,
                 ratio: float | None = None) -> int:
    """Tokens for one size of `grid`: its override, else training.tokens (the longest of a list), else `ratio`
    tokens per parameter (by default the grid's longest, see StudyConfig.training_for) × its parameters
    (non-embedding or all: training.tokens_per_param_of), clipped to [min_tokens, max_tokens] where those are set."""
    t = cfg.training_for(grid)
    if override or t.tokens:
        return override or t.token_counts[-1]
    params = costs.params if t.tokens_per_param_of == "total" else costs.params_nonembedding
    return int(min(max((ratio or t.trunk_ratio) * params, t.min_tokens or 0), t.max_tokens or float("inf")))


@dataclass(frozen=True)
class StreamShape:
    """What a grid's models see of its token stream: the vocabulary and one training window. Image streams also
    give the grid of one image (height × width) and its channels (3 for RGB pixels, 1 for grey pixels and for
    codes), which image families (PixelCNN, MADE) take instead of seq_len."""

    vocab_size: int
    seq_len: int
    grid: tuple[int, int] | None = None
    channels: int = 1
    factor: int | None = None  # the pyramid stream's: the low-resolution image's

    def fields_for(self, family: str, n_classes: int = 0) -> dict[str, int]:
        """The config fields the study sets on a `family` model of this stream (armodels.fields_set_by_study), with
        the `n_classes` of a class-conditioned model. Fields added later are left out at their defaults (an
        unconditioned model's n_classes 0, a grey one's channels_in 1), so such a model's config, and its steps'
        hashes, are what they were before those fields existed."""
        values = {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "channels_in": self.channels,
                  "n_classes": n_classes, "factor": self.factor}
        if self.grid:
            values.update(height=self.grid[0], width=self.grid[1])
        added_defaults = {"n_classes": 0, "channels_in": 1}
        return {name: values[name] for name in armodels.fields_set_by_study(family)
                if values[name] != added_defaults.get(name)}


def study_classes(cfg: StudyConfig) -> int:
    """The classes K of a study whose models are class-conditioned (0 when none is): its images' labels, which must
    be 0..K-1, each in the training images. Reads the labels of the images the study uses (UserError without)."""
    if not cfg.models.class_conditioned:
        return 0
    i = cfg.images
    try:
        labels = [load_images(i.data, split=split, limit=limit).labels
                  for split, limit in (("train", i.train_images), ("test", i.test_images))]
    except (ImageDataError, OSError) as e:
        raise UserError(f"images.data: {e}") from None
    if any(split is None for split in labels):
        raise UserError(f"models.condition: class needs labelled images; {i.data} has no labels")
    seen = np.unique(labels[0])
    if seen[0] != 0 or seen[-1] != len(seen) - 1 or not set(np.unique(labels[1])) <= set(seen):
        raise UserError(f"models.condition: class needs labels 0..K-1, each in the training images; {i.data}'s "
                        f"training images have {seen.tolist()}")
    return len(seen)


def stream_shapes(cfg: StudyConfig) -> dict[str, StreamShape]:
    """The shape of each token stream of the study, known before any step runs."""
    if not cfg.is_image_study:
        return {stream: StreamShape(cfg.text_tokenizer_for(stream).vocab_size, cfg.models.seq_len)
                for stream in (TEXT_STREAM, *cfg.text_tokenizers)}
    try:
        height, width, channels = image_shape(cfg.images.data, split="test")
    except (ImageDataError, OSError) as e:
        raise UserError(f"images.data: {e}") from None
    levels, f = pixel_levels(cfg.images.binarize), cfg.images.pyramid_factor
    shapes = {"pixels": StreamShape(levels, height * width * channels, (height, width), channels)}
    if any(grid.stream == "pyramid" for grid in cfg.models.grids):
        if height % f or width % f:
            raise UserError(f"images.pyramid_factor: {f} must divide the images' height and width ({height} × "
                            f"{width}); use one that does")
        low = (height // f) * (width // f)
        shapes["pyramid"] = StreamShape(levels, (low + height * width) * channels, (height, width), channels, f)
    for kind, tok in cfg.image_tokenizers.items():
        try:
            codes, (h, w) = code_stream_shape(kind, tok.model, (height, width, channels))
        except (TypeError, ValueError) as e:
            raise UserError(f"image_tokenizers.{kind}.model: {e}") from None
        pixels = cfg.images.train_images * height * width  # at most; the step checks the distinct colours
        if kind == "palette" and codes > pixels:
            raise UserError(f"image_tokenizers.palette.model.clusters: {codes:,} colours, but the "
                            f"{cfg.images.train_images:,} training images of {height}×{width} have at most "
                            f"{pixels:,} pixels; use fewer clusters")
        shapes[kind] = StreamShape(codes, h * w, (h, w))
    return shapes


def grid_runs(cfg: StudyConfig, gpus: float = 0.0) -> list[tuple[GridConfig, train.TrainStepConfig]]:
    """(grid, training-step config) for each model size of every grid, one per token budget of the size where it has
    several (size_budgets: an isoFLOP grid's FLOPs budgets, sizes × token budgets, WSD cooldown branches).
    Each of those is trained at every learning rate of its lr_sweep (names end in -lr<lr>) and with each of its
    seeds (the study's seed, then seed + 1, ... named -s1, -s2, ...). Each run's device (training.device or the
    size's) is resolved against `gpus`, the GPUs of the cluster."""
    shapes = stream_shapes(cfg)
    n_classes = study_classes(cfg)
    out = []
    for i, grid in enumerate(cfg.models.grids):
        t = cfg.training_for(grid)
        shape = shapes[grid.stream]
        if armodels.is_image_family(grid.family) and armodels.models_pyramids(grid.family) != (
                grid.stream == "pyramid"):
            pyramid = [f for f in armodels.families() if armodels.models_pyramids(f)]
            raise UserError(f"models.grids.{i}.family: {grid.family} "
                            + (f"models the pyramid stream only (stream: pyramid), not {grid.stream}"
                               if armodels.models_pyramids(grid.family) else
                               f"models one image, not the pyramid stream's two; use {', '.join(pyramid)} or a "
                               "sequence family such as transformer"))
        if armodels.is_image_family(grid.family) and shape.channels > 1 and "channels_in" not in shape.fields_for(
                grid.family):
            colour = [f for f in armodels.families() if "channels_in" in armodels.fields_set_by_study(f)]
            raise UserError(f"models.grids.{i}.family: {grid.family} models single-channel images; the "
                            f"{grid.stream} stream of {cfg.images.data} has {shape.channels} channels (use "
                            f"{', '.join(colour)} or a sequence family such as transformer)")
        for size in grid.sizes:
            model = {**model_fields(size), **shape.fields_for(
                grid.family, n_classes if cfg.models.condition_of(grid) == "class" else 0)}
            costs = model_costs(grid.family, model)
            name = size.get("name") or f"{grid.series}-{human(costs.params_nonembedding)}"
            suffixes = size_budgets(cfg, grid, model, costs, size.get("tokens"))
            budgets = {name + suffix: tokens for suffix, tokens in suffixes.items()}
            try:
                device = resolve_device(size.get("device") or t.device, gpus)
            except DeviceError as e:
                raise UserError(f"models: size {name}: {e}") from None
            on_gpu = device == "cuda"
            sweep = size.get("lr_sweep") or t.lr_sweep
            lrs = {f"-lr{lr:g}": lr for lr in sweep} if sweep else {"": size.get("lr")}
            seeds = {"" if i == 0 else f"-s{i}": cfg.seed + i for i in range(size.get("seeds") or t.seeds)}
            for (budget_name, tokens), (lr_suffix, lr), (seed_suffix, seed) in itertools.product(
                    budgets.items(), lrs.items(), seeds.items()):
                run_train = t.train_config(tokens=tokens, seed=seed, device=device, lr=lr,
                                           **{k: size.get(k) for k in ("batch_size", "beta2", "warmup_tokens")})
                tc = train.TrainStepConfig(
                    name=budget_name + lr_suffix + seed_suffix, family=grid.family, model=model, train=run_train,
                    num_workers=size.get("num_workers") or t.num_workers, cpus_per_worker=t.cpus_per_worker,
                    gpus_per_worker=(size.get("gpus_per_worker") or t.gpus_per_worker) if on_gpu else 0.0)
                if any(suffix.startswith("-cd") for suffix in suffixes):
                    tc = cooldown_branch(tc, f"{name}{lr_suffix}{seed_suffix}", min(budgets.values()))
                out.append((grid, tc))
    names = [c.name for _, c in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"models: several sizes are named {', '.join(repeated)}; give them distinct `name`s")
    return out


def size_budgets(cfg: StudyConfig, grid: GridConfig, model: dict, costs: ModelCosts,
                 override: int | None) -> dict[str, int]:
    """One size's token budgets by the suffix of its runs' names: "" for one budget; with training.flops_budgets
    "-c<FLOPs>" (the tokens that spend each); with several token budgets (a list of tokens or of tokens_per_param)
    "-d<tokens>" or "-tpp<ratio>", or with schedule wsd "-cd<tokens or ratio>": cooldown branches off one trunk of
    the longest (`cooldowns`, in tokens per parameter, scale the size's planned tokens: its override, if any)."""
    t = cfg.training_for(grid)
    if t.flops_budgets:
        per_token = flops_per_token(grid.family, model, cfg.fit.convention)
        return {f"-c{c:.0e}".replace("+", ""): max(1, round(c / per_token)) for c in t.flops_budgets}
    if t.branch_budgets:  # the trunk's planned tokens, scaled to each budget
        longest = token_budget(cfg, grid, costs, override)
        return {f"-cd{c:g}": max(1, round(longest * c / t.trunk_ratio)) for c in t.branch_budgets}
    if override or not t.several_budgets:
        return {"": token_budget(cfg, grid, costs, override)}
    prefix = "-cd" if t.schedule == "wsd" else "-d" if t.token_counts else "-tpp"
    if t.token_counts:
        return {f"{prefix}{exact_count(n)}": n for n in t.token_counts}
    return {f"{prefix}{r:g}": token_budget(cfg, grid, costs, None, r) for r in t.ratios}


def exact_count(n: int) -> str:
    """A token count for a run's name, short but exact (distinct budgets keep distinct names): 1_250_000 → '1.25M'."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.6g}{unit}"
    return str(n)


def cooldown_branch(tc: train.TrainStepConfig, trunk: str, shortest: int) -> train.TrainStepConfig:
    """Run `tc` (schedule wsd) as a cooldown branch of the trunk named `trunk`: it starts from the trunk's branch
    point where its own cooldown begins. Every run of one trunk warms up over the same tokens (the configured
    warmup_tokens, else warmup_fraction of the `shortest` budget), so a branch is exactly a straight WSD run."""
    warmup = tc.train.warmup_tokens
    if warmup is None:
        warmup = round(tc.train.warmup_fraction * shortest)
    tc = replace(tc, train=replace(tc.train, warmup_tokens=warmup), trunk=trunk)
    steps = tc.run(Path(".")).steps
    return replace(tc, start_step=steps - max(1, round(tc.train.decay_fraction * steps)))


def trunk_segments(branches: list[train.TrainStepConfig]) -> list[train.TrainStepConfig]:
    """The trunk that `branches` (of one trunk) branch off, as a chain of segments at the peak lr: one ending at
    each branch's start, each starting from the one before. A longer budget added later only adds segments at the
    end, so the trunk is extended, not trained again."""
    base = branches[0]
    tokens_per_step = base.train.batch_size * base.run(Path(".")).seq_len
    ends = sorted({b.start_step for b in branches})
    return [replace(base, name=f"{base.trunk}-trunk-{human(end * tokens_per_step)}", start_step=start,
                    train=replace(base.train, tokens=end * tokens_per_step, schedule="constant", branch_points=(end,)))
            for start, end in zip([0, *ends], ends)]


def confirm_run(cfg: StudyConfig, grid: GridConfig, runs: list[train.TrainStepConfig]) -> train.TrainStepConfig:
    """The confirmation run of a grid (fit.confirm = R): the grid's largest size made larger the way the grid grows,
    to spend R to 1.15 R × the grid's largest compute (in the fit's convention) with the grid's tokens-per-parameter
    rule. Its depth follows the grid's depth-vs-size trend (a grid of one depth keeps it; n_layer ∝ N^s fitted over
    the sizes otherwise) and its width, in steps that the heads divide, makes up the compute; of the shapes in the
    window, the one whose depth is nearest the trend (else the one closest to R×). One seed; its learning rate
    comes from the fit (the lr-vs-size law, see steps/fit.py)."""
    convention = cfg.fit.convention
    largest = max(runs, key=lambda tc: tc.run(Path(".")).flops(convention))
    target = cfg.fit.confirm * largest.run(Path(".")).flops(convention)
    base = largest.model
    sizes = {(tc.run(Path(".")).costs().params_nonembedding, tc.model["n_layer"]) for tc in runs}
    n, depth = np.log([s[0] for s in sizes]), np.log([s[1] for s in sizes])
    slope = np.polyfit(n, depth, 1)[0] if len(set(n)) > 1 and len(set(depth)) > 1 else 0.0
    base_n = largest.run(Path(".")).costs().params_nonembedding
    step = base.get("n_head", 1)  # head width must be whole
    candidates = []
    for n_layer in range(1, 4 * base["n_layer"] + 3):
        for n_embd in range(step, 4 * base["n_embd"] + step, step):
            model = {**base, "n_layer": n_layer, "n_embd": n_embd}
            costs = model_costs(grid.family, model)
            tc = replace(largest, model=model, train=replace(largest.train, tokens=token_budget(cfg, grid, costs, None),
                                                              seed=cfg.seed))
            over = tc.run(Path(".")).flops(convention) / target
            trend = base["n_layer"] * (costs.params_nonembedding / base_n) ** slope
            candidates.append((abs(math.log(n_layer / trend)), over, tc))
    window = [c for c in candidates if 1 <= c[1] < 1.15]
    chosen = (min(window, key=lambda c: (round(c[0], 6), c[1])) if window
              else min(candidates, key=lambda c: abs(math.log(c[1]))))[2]
    return replace(chosen, name=f"{grid.series}-confirm-{cfg.fit.confirm:g}x", trunk="", start_step=0)  # straight


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
    """corpus ─► tokenizer ─► shards, and for each text_tokenizers kind that a grid models
    corpus ─► tokenizer-<kind> ─► shards-<kind>: each text stream's (shard step, tokenizer step)."""
    c = cfg.corpus
    corpus_step = Step("corpus", corpus.build_corpus, corpus_config(cfg), version=corpus.VERSION,
                       describe=f"{c.source}, up to {human(c.max_bytes)}B, {c.val_fraction:.0%} held out")
    used = {grid.stream for grid in cfg.models.grids}
    out = {}
    for stream in (TEXT_STREAM, *(kind for kind in cfg.text_tokenizers if kind in used)):
        tok = cfg.text_tokenizer_for(stream)
        suffix = "" if stream == TEXT_STREAM else f"-{stream}"
        tok_step = Step(f"tokenizer{suffix}", text_tokenizer.train_text_tokenizer,
                        text_tokenizer.TextTokenizerStepConfig(**tok.model_dump()),
                        inputs={"corpus": corpus_step}, version=text_tokenizer.VERSION,
                        describe=f"{TOKENIZER_KIND_NAMES[tok.kind]}, vocab {tok.vocab_size}")
        out[stream] = (Step(f"shards{suffix}", text_shards.shard_corpus,
                            text_shards.TextShardStepConfig(**cfg.shards.model_dump()),
                            inputs={"corpus": corpus_step, "tokenizer": tok_step}, version=text_shards.VERSION,
                            describe=f"Parquet shards of {human(cfg.shards.shard_tokens)} tokens"
                                     + ("" if stream == TEXT_STREAM else f", {tok.kind} tokens")),
                       tok_step)
    return out


def image_streams(cfg: StudyConfig) -> dict[str, tuple[Step, Step]]:
    """images ─► [tokenizer-<kind> ─►] shards-<stream>: each image stream's (shard step, decoder step); the
    decoder is the image tokenizer, or for pixels the images step itself."""
    i = cfg.images
    labels = cfg.models.class_conditioned  # keep the labels beside the images and each stream's shards
    images_step = Step("images", images.gather_images,
                       images.ImagesStepConfig(**i.model_dump(exclude={"pyramid_factor"}), labels=labels),
                       version=images.VERSION,
                       describe=f"{i.data}: {i.train_images:,} train, {i.test_images:,} test"
                                + (", binarized" if i.binarize else ""))
    used = {grid.stream for grid in cfg.models.grids}
    out = {}
    if "pixels" in used:
        levels = pixel_levels(i.binarize)
        out["pixels"] = (Step("shards-pixels", images.shard_pixels,
                              images.ImageShardStepConfig(**cfg.shards.model_dump(), levels=levels, labels=labels),
                              inputs={"images": images_step}, version=images.VERSION,
                              describe=f"pixels ({levels} levels) in raster order"),
                         images_step)
    if "pyramid" in used:
        levels = pixel_levels(i.binarize)
        out["pyramid"] = (Step("shards-pyramid", images.shard_pixels,
                               images.ImageShardStepConfig(**cfg.shards.model_dump(), levels=levels, labels=labels,
                                                           pyramid_factor=i.pyramid_factor),
                               inputs={"images": images_step}, version=images.VERSION,
                               describe=f"each image at 1/{i.pyramid_factor} resolution, then in full ({levels} "
                                        "levels, raster order)"),
                         images_step)
    for kind, t in cfg.image_tokenizers.items():
        if kind not in used:
            continue
        tok_step = Step(f"tokenizer-{kind}", images.train_study_image_tokenizer,
                        images.ImageTokenizerStepConfig(kind=kind, **t.model_dump(), seed=cfg.seed),
                        inputs={"images": images_step}, version=images.VERSION,
                        describe="k-means colour palette" if kind == "palette"
                        else f"{kind} autoencoder, {t.steps} steps")
        out[kind] = (Step(f"shards-{kind}", images.shard_codes,
                          images.ImageShardStepConfig(**cfg.shards.model_dump(), labels=labels),
                          inputs={"images": images_step, "tokenizer": tok_step}, version=images.VERSION,
                          describe=f"{kind} code grids in raster order"), tok_step)
    return out


def build_steps(cfg: StudyConfig, gpus: float = 0.0) -> list[Step]:
    """The study's DAG, as the list of its final steps (just the report), which reach every other step. `gpus`:
    the GPUs of the cluster it will run on (training.device auto uses them when there are any)."""
    streams = image_streams(cfg) if cfg.is_image_study else text_streams(cfg)
    f = cfg.fit
    planned = grid_runs(cfg, gpus)
    trains, evals = {}, {}
    segments: dict[tuple[str, int], Step] = {}  # (trunk, the step it ends at) → its segment (WSD cooldowns)
    for trunk in sorted({tc.trunk for _, tc in planned if tc.trunk}):
        grid = next(g for g, tc in planned if tc.trunk == trunk)
        before = {}
        for segment in trunk_segments([tc for _, tc in planned if tc.trunk == trunk]):
            step = train_step(segment, train.train_model, {"shards": streams[grid.stream][0], **before}, f.convention,
                              "trunk: ")
            segments[trunk, segment.train.branch_points[0]] = step
            before = {"trunk": step}
    for grid, tc in planned:
        shard_step, decoder_step = streams[grid.stream]
        trunk = {"trunk": segments[tc.trunk, tc.start_step]} if tc.trunk else {}
        trains[tc.name] = train_step(tc, train.train_model, {"shards": shard_step, **trunk}, f.convention,
                                     "cooldown: " if tc.trunk else "")
        evals[tc.name] = eval_step(cfg, grid, tc, trains[tc.name], shard_step, decoder_step)
    # a WSD design's branches: the fit step also fits their whole training curves (fit.annealing_fits)
    branch_trains = {f"train-{tc.name}": trains[tc.name] for _, tc in planned if tc.trunk}
    # confirmation runs (fit.confirm): one per grid, trained after the fit, whose lr-vs-size law sets their lr
    confirms = {grid.series: confirm_run(cfg, grid, [tc for g, tc in planned if g is grid])
                 for grid in cfg.models.grids} if f.confirm is not None else {}
    fit_step = Step("fit", fit.fit_study,
                    fit.FitStepConfig(**f.model_dump(exclude={"confirm"}), seed=cfg.seed,
                                      isoflop=bool(cfg.training.flops_budgets),
                                      chinchilla=any(cfg.training_for(g).several_budgets for g in cfg.models.grids),
                                      confirm={series: fit.planned_confirm(tc, f.convention)
                                               for series, tc in confirms.items()}),
                    inputs={**evals, **branch_trains}, version=fit.VERSION,
                    describe=f"L(C) and L(N) power laws, {f.bootstrap} bootstraps, hold out top {f.holdout_top} "
                             "budget(s)")
    confirm_evals = {}
    for grid in cfg.models.grids:
        if grid.series in confirms:
            tc = confirms[grid.series]
            shard_step, decoder_step = streams[grid.stream]
            confirm_train = train_step(tc, train.train_confirmation, {"shards": shard_step, "fit": fit_step},
                                       f.convention, "confirmation run, lr from the fit's lr law; ")
            confirm_evals[tc.name] = eval_step(cfg, grid, tc, confirm_train, shard_step, decoder_step)
            trains[tc.name] = confirm_train
    # an image study's report also shows the data it used and each tokenizer's reconstructions
    decoders = {"images" if s.name == "images" else s.name: s for _, s in streams.values() if s.name != "tokenizer"}
    report_step = Step("report", report.write_report,
                       report.ReportStepConfig(study=cfg.name, config=cfg.stable_dump()),
                       inputs={"fit": fit_step, **{f"train-{k}": v for k, v in trains.items()},
                               **{f"eval-{k}": v for k, v in {**evals, **confirm_evals}.items()}, **decoders},
                       version=report.VERSION, describe="report.md with plots")
    return [report_step]


def train_step(tc: train.TrainStepConfig, function, inputs: dict[str, Step], convention: str,
               what: str = "") -> Step:
    """The step that trains run `tc` with `function` (train_model, or train_confirmation for a confirmation run)."""
    run = tc.run(Path("."))
    tokens = tc.own_tokens()  # a cooldown branch or trunk segment trains from where its trunk left off
    flops = run.flops(convention, tokens)
    start = f" from {human(run.tokens_seen - tokens)}" if tokens < run.tokens_seen else ""
    return Step(f"train-{tc.name}", function, tc, inputs=inputs, version=train.VERSION,
                resources=Resources(cpus=tc.num_workers * tc.cpus_per_worker, held_by_workers=True,
                                    cpus_per_worker=tc.cpus_per_worker, gpus=tc.num_workers * tc.gpus_per_worker,
                                    gpus_per_worker=tc.gpus_per_worker), priority=flops,
                work_tokens=tokens, work_flops=flops, nested_under="trunk" if "trunk" in inputs else None,
                trains_on=train.lane_spec(tc),
                describe=(f"{what}{tc.family}, {human(run.costs().params_nonembedding)} params (non-emb), "
                          f"{human(run.tokens_seen)} tokens{start}, {flops:.2e} FLOPs ({convention}); "
                          f"{tc.describe_workers()}"))


def eval_step(cfg: StudyConfig, grid: GridConfig, tc: train.TrainStepConfig, train_run: Step, shard_step: Step,
              decoder_step: Step) -> Step:
    """The step that scores run `tc` on the held-out split and samples from it."""
    e = cfg.evaluation
    # a GPU run is evaluated and sampled on a GPU too, with the share of one that a worker of its run had
    run_eval_cfg = evaluate.EvalStepConfig(**e.model_dump(exclude={"ensemble"}), seed=cfg.seed, device=tc.train.device,
                                           ensemble=e.ensemble if grid.family == "made" else 1,
                                           series=grid.label or "", text_stream=grid.stream
                                           if grid.stream in TEXT_TOKENIZER_KINDS else TEXT_STREAM)
    if grid.stream in TEXT_TOKENIZER_KINDS:  # "char-transformer" beside the study tokenizer's "transformer"
        run_eval_cfg = replace(run_eval_cfg, series=grid.series)
    if not cfg.is_image_study:
        step_fn, step_cfg = evaluate.evaluate_model, run_eval_cfg
    else:
        step_fn = evaluate.evaluate_image_model
        step_cfg = evaluate.ImageEvalStepConfig(stream=grid.stream, common=run_eval_cfg)
    # on one warm worker of the training run's shape (the lane that trained it, when it is idle): no fresh process
    lane = replace(train.lane_spec(tc), num_workers=1)
    return Step(f"eval-{tc.name}", step_fn, step_cfg, version=evaluate.VERSION,
                resources=Resources(cpus=tc.cpus_per_worker, held_by_workers=True, cpus_per_worker=tc.cpus_per_worker,
                                    gpus=tc.gpus_per_worker, gpus_per_worker=tc.gpus_per_worker),
                inputs={"train": train_run, "shards": shard_step, "tokenizer": decoder_step},
                describe=f"val loss on ≤{human(e.max_tokens)} tokens, {e.samples} samples", warm_lane=lane)


def describe_plan(plan: list[tuple[Step, dict]]) -> str:
    """The DAG as a table (`plan`: Executor.plan's steps and states): each step, whether it will run or be skipped,
    and what it does."""
    rows = []
    for step, state in plan:
        action = "skip (done)" if state["state"] == "succeeded" else f"run ({state['state']})"
        rows.append((step.dirname, action, step.describe))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'step':<{width}}  {'action':<20}  what", f"{'-' * width}  {'-' * 20}  ----"]
    lines += [f"{d:<{width}}  {a:<20}  {w}" for d, a, w in rows]
    return "\n".join(lines)
