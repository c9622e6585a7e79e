"""A study: the DAG of steps built from a StudyConfig, and running it.

    corpus ─► tokenizer ─► shards ─► train-<run> ─► eval-<run> ─► fit ─► report
       └──────────────────────┘    (one pair per family and size)         ▲
                                                                          └── train/eval outputs

An image study has one shard set per token stream instead (see pipelines/steps/images.py): raw pixels, and the
codes of each image tokenizer; each grid models one stream, and the fits and the report compare them.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

import armodels

from armodels.files import read_json, write_json_atomic
from armodels.train import TrainConfig, model_costs
from pipelines.config import SIZE_OPTIONS, TEXT_STREAM, StudyConfig
from pipelines.errors import RunFailure, UserError
from pipelines.executor import Executor, Outcome, Resources, Step, topological_order
from pipelines.progress import duration, human
from pipelines.storage import StudyStore, is_uri
from pipelines.steps import corpus, evaluate, fit, images, report, shards, tokenizer, train
from pipelines.steps.images import pixel_levels

STUDY_FILE = "study.json"
LOCK_FILE = ".lock"


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


def stream_shapes(cfg: StudyConfig) -> dict[str, StreamShape]:
    """The shape of each token stream of the study, known before any step runs."""
    if not cfg.is_image_study:
        return {TEXT_STREAM: StreamShape(cfg.tokenizer.vocab_size, cfg.models.seq_len)}
    from armodels.image_tokenizer import code_stream_shape
    from armodels.images import ImageDataError, load_images

    try:
        height, width, channels = load_images(cfg.images.data, split="test", limit=1).images.shape[1:]
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


def _grid_runs(cfg: StudyConfig):
    """(grid, training-step config) for each model size of every grid; with training.flops_budgets, one per size
    and budget instead (an isoFLOP grid: each size gets the tokens that spend the budget, in the fit's convention)."""
    t = cfg.training
    shared = {f.name: getattr(t, f.name) for f in fields(TrainConfig)
              if f.name != "tokens" and getattr(t, f.name, None) is not None}
    shapes = stream_shapes(cfg)
    out = []
    for grid in cfg.models.grids:
        shape = shapes[grid.stream]
        image_family = "seq_len" not in {f.name for f in fields(armodels.family_classes(grid.family)[1])}
        if image_family and shape.grid is None:
            raise UserError(f"models: {grid.family} models single-channel images; the {grid.stream} stream of "
                            f"{cfg.images.data} is not one (use a sequence family such as transformer)")
        for size in grid.sizes:
            model = {k: v for k, v in size.items() if k not in SIZE_OPTIONS}
            model.update(vocab_size=shape.vocab_size)
            model.update(dict(zip(("height", "width"), shape.grid)) if image_family else {"seq_len": shape.seq_len})
            options = {**shared, "seed": cfg.seed, **({"lr": size["lr"]} if size.get("lr") else {})}
            costs = model_costs(grid.family, model)
            name = size.get("name") or f"{grid.series}-{human(costs.params_nonembedding)}"
            budgets = {name: token_budget(cfg, costs.params_nonembedding, size.get("tokens"))}
            if t.flops_budgets:
                per_token = costs.flops_per_token if cfg.fit.convention == "per_layer" else 6 * costs.params_nonembedding
                budgets = {f"{name}-c{c:.0e}".replace("+", ""): max(1, round(c / per_token)) for c in t.flops_budgets}
            for run_name, tokens in budgets.items():
                out.append((grid, train.TrainStepConfig(
                    run_name, grid.family, model, TrainConfig(tokens=tokens, **options),
                    num_workers=size.get("num_workers") or t.num_workers, cpus_per_worker=t.cpus_per_worker)))
    names = [c.name for _, c in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"models: several sizes are named {', '.join(repeated)}; give them distinct `name`s")
    return out


def train_configs(cfg: StudyConfig) -> list[train.TrainStepConfig]:
    """One training-step config per model size of every grid (and per FLOPs budget of an isoFLOP grid)."""
    return [tc for _, tc in _grid_runs(cfg)]


def corpus_config(cfg: StudyConfig) -> corpus.CorpusStepConfig:
    c = cfg.corpus
    if c.source == "python-stdlib":
        return corpus.stdlib_config(c.max_bytes, c.val_fraction, cfg.seed, c.max_file_bytes)
    # Absolute paths, so the step's hash and its reading do not depend on the directory the study runs from.
    paths = tuple(p if glob.has_magic(p) else str(Path(p).resolve()) for p in c.paths)
    return corpus.CorpusStepConfig(paths, tuple(c.extensions), c.max_bytes, c.val_fraction, cfg.seed,
                                   c.max_file_bytes)


def text_streams(cfg: StudyConfig) -> dict[str, tuple[Step, Step]]:
    """corpus ─► tokenizer ─► shards: the text stream's (shard step, tokenizer step)."""
    c = cfg.corpus
    corpus_step = Step("corpus", corpus.build_corpus, corpus_config(cfg), version=corpus.VERSION,
                       describe=f"{c.source}, up to {human(c.max_bytes)}B, {c.val_fraction:.0%} held out")
    tok_step = Step("tokenizer", tokenizer.train_tokenizer,
                    tokenizer.TokenizerStepConfig(cfg.tokenizer.vocab_size, cfg.tokenizer.train_bytes),
                    inputs={"corpus": corpus_step}, version=tokenizer.VERSION,
                    describe=f"byte-level BPE, vocab {cfg.tokenizer.vocab_size}")
    shard_step = Step("shards", shards.shard_corpus, shards.ShardStepConfig(cfg.shards.shard_tokens),
                      inputs={"corpus": corpus_step, "tokenizer": tok_step}, version=shards.VERSION,
                      describe=f"Parquet shards of {human(cfg.shards.shard_tokens)} tokens")
    return {TEXT_STREAM: (shard_step, tok_step)}


def image_streams(cfg: StudyConfig) -> dict[str, tuple[Step, Step]]:
    """images ─► [tokenizer-<kind> ─►] shards-<stream>: each image stream's (shard step, decoder step); the
    decoder is the image tokenizer, or for pixels the images step itself."""
    i = cfg.images
    images_step = Step("images", images.gather_images,
                       images.ImagesStepConfig(i.data, i.train_images, i.test_images, i.binarize), version=images.VERSION,
                       describe=f"{i.data}: {i.train_images:,} train, {i.test_images:,} test"
                                + (", binarized" if i.binarize else ""))
    shard_config = images.ShardStepConfig(cfg.shards.shard_tokens)
    used = {grid.stream for grid in cfg.models.grids}
    out = {}
    if "pixels" in used:
        levels = pixel_levels(i.binarize)
        out["pixels"] = (Step("shards-pixels", images.shard_pixels,
                              images.ShardStepConfig(cfg.shards.shard_tokens, levels), inputs={"images": images_step},
                              version=images.VERSION, describe=f"pixels ({levels} levels) in raster order"),
                         images_step)
    for kind, t in cfg.image_tokenizers.items():
        if kind not in used:
            continue
        tok_step = Step(f"tokenizer-{kind}", images.train_image_tokenizer,
                        images.ImageTokenizerStepConfig(kind, t.steps, t.batch_size, t.lr, cfg.seed, t.model),
                        inputs={"images": images_step}, version=images.VERSION,
                        describe=f"{kind} autoencoder, {t.steps} steps")
        out[kind] = (Step(f"shards-{kind}", images.shard_codes, shard_config,
                          inputs={"images": images_step, "tokenizer": tok_step}, version=images.VERSION,
                          describe=f"{kind} code grids in raster order"), tok_step)
    return out


def build_steps(cfg: StudyConfig) -> list[Step]:
    """The study's DAG, as the list of its final steps (just the report), which reach every other step."""
    streams = image_streams(cfg) if cfg.is_image_study else text_streams(cfg)
    e = cfg.evaluation
    eval_cfg = evaluate.EvalStepConfig(e.max_tokens, e.samples, e.temperature, e.top_k, e.top_p, cfg.seed)
    trains, evals = {}, {}
    for grid, tc in _grid_runs(cfg):
        shard_step, decoder_step = streams[grid.stream]
        run = tc.run(Path("."))
        flops = run.flops(cfg.fit.convention)
        trains[tc.name] = Step(
            f"train-{tc.name}", train.train_model, tc, inputs={"shards": shard_step}, version=train.VERSION,
            resources=Resources(cpus=tc.num_workers * tc.cpus_per_worker, held_by_workers=True,
                                cpus_per_worker=tc.cpus_per_worker), priority=flops,
            describe=(f"{tc.family}, {human(run.costs().params_nonembedding)} params (non-emb), "
                      f"{human(run.tokens_seen)} tokens, {flops:.2e} FLOPs ({cfg.fit.convention})"
                      + (f", {tc.num_workers} workers" if tc.num_workers > 1 else "")))
        if grid.stream == TEXT_STREAM:
            step_fn, step_cfg = evaluate.evaluate_model, eval_cfg
        else:
            step_fn, step_cfg = evaluate.evaluate_image_model, evaluate.ImageEvalStepConfig(grid.stream, eval_cfg)
        evals[tc.name] = Step(f"eval-{tc.name}", step_fn, step_cfg, version=evaluate.VERSION,
                              inputs={"train": trains[tc.name], "shards": shard_step, "tokenizer": decoder_step},
                              describe=f"val loss on ≤{human(e.max_tokens)} tokens, {e.samples} samples")
    f = cfg.fit
    fit_step = Step("fit", fit.fit_study,
                    fit.FitStepConfig(f.convention, f.bootstrap, f.holdout_top, tuple(f.predict_multipliers),
                                      cfg.seed, isoflop=bool(cfg.training.flops_budgets)),
                    inputs=evals, version=fit.VERSION,
                    describe=f"L(C) and L(N) power laws, {f.bootstrap} bootstraps, hold out top {f.holdout_top}")
    # an image study's report also shows the data it used and each tokenizer's reconstructions
    decoders = {"images" if s.name == "images" else s.name: s for _, s in streams.values() if s.name != "tokenizer"}
    report_step = Step("report", report.write_report, report.ReportStepConfig(cfg.name, cfg.model_dump(mode="json")),
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


def check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror}); choose another with --out") from None


def check_corpus(cfg: StudyConfig) -> None:
    """Fail before starting Ray when the corpus is missing or empty (image data is read by `stream_shapes`)."""
    if cfg.is_image_study:
        return
    try:
        c = corpus_config(cfg)
        files = corpus.find_files(c.paths, c.extensions)
    except FileNotFoundError as e:
        raise UserError(f"{e}; fix corpus.paths in the config") from None
    if not any(f.stat().st_size for f in files):
        raise UserError(f"the corpus is empty: no non-empty files with extensions {list(cfg.corpus.extensions)} "
                        f"under {', '.join(cfg.corpus.paths) or 'the standard library'}")


class StudyLock:
    """One running study per folder: a lock file with the owner's host and pid (stale locks are taken over)."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE

    def __enter__(self):
        if self.path.is_file():
            try:
                owner = read_json(self.path)
            except ValueError:
                owner = {}
            if owner.get("host") == socket.gethostname() and _pid_alive(owner.get("pid")):
                raise UserError(f"study {self.path.parent} is already running (pid {owner['pid']}); "
                                "wait for it or stop it first")
        write_json_atomic(self.path, {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def run_study(cfg: StudyConfig, config_path: Path, out: Path | str, *, dry_run: bool = False,
              tracking_uri: str | None = None, address: str | None = None, log=print) -> dict[str, Outcome]:
    """Run (or with dry_run, only show) the study in the folder `out` (a path, or an object-store URI: see
    pipelines.storage); returns each step's outcome.

    Raises RunFailure if a step failed, after every step that does not depend on it has run.
    """
    store = StudyStore(str(out)) if is_uri(out) else None
    where = store.shown if store else Path(out).resolve()  # what the user named
    out = store.scratch if store else Path(out).resolve()
    targets = build_steps(cfg)
    if dry_run:
        log(describe_plan(Executor(out, store=store), targets))
        return {}
    check_output_dir(out)
    check_corpus(cfg)
    if store:
        store.check()
    with StudyLock(out):
        if store:
            store.pull_study_files(out)
        try:
            return _run(cfg, config_path, out, where, targets, store, tracking_uri, address, log)
        finally:
            if store:
                try:
                    store.push_study_files(out)
                except Exception as e:
                    log(f"warning: could not save study.json and the MLflow store to {store.shown} ({e})")


def _run(cfg: StudyConfig, config_path: Path, out: Path, where: Path | str, targets: list[Step],
         store: StudyStore | None, tracking_uri: str | None, address: str | None, log) -> dict[str, Outcome]:
    from cluster.local import connect
    from pipelines.tracking import StudyTracking, redact_uri, resolve_tracking_uri

    started = time.time()
    previous = read_json(out / STUDY_FILE) if (out / STUDY_FILE).is_file() else {}
    uri = resolve_tracking_uri(tracking_uri, out)
    tracking = StudyTracking(uri, cfg.name, out, previous.get("mlflow", {}).get("parent_run_id"))
    dashboard = connect(address)
    _stop_on_sigterm()  # after connecting: ray.init installs a SIGTERM handler of its own
    executor = Executor(out, tracking, log=log, store=store)
    steps = topological_order(targets)
    write_json_atomic(out / STUDY_FILE, {
        "name": cfg.name, "config_path": str(config_path), "config": cfg.model_dump(mode="json"),
        "steps": [{"name": s.name, "dir": s.dirname, "inputs": {k: d.dirname for k, d in s.inputs.items()},
                   "describe": s.describe} for s in steps],
        "report": f"{targets[0].dirname}/report.md",
        "mlflow": {"tracking_uri": redact_uri(uri), "experiment_id": tracking.experiment_id,
                   "parent_run_id": tracking.parent_run_id},
        **({"storage": store.shown} if store else {}),
    })
    log(f"study {cfg.name} → {where}" + (f" (working in {out})" if store else ""))
    log(f"MLflow: {redact_uri(uri)}" + (f"   Ray dashboard: {dashboard}" if dashboard else ""))
    try:
        outcomes = executor.run(targets)
    except KeyboardInterrupt:
        tracking.finish_study(ok=False)
        raise RunFailure(f"interrupted; finished steps and checkpoints are kept — to resume, run: arscale study "
                         f"run {config_path} --out {where}") from None
    failed = {n: o for n, o in outcomes.items() if o.state == "failed"}
    tracking.finish_study(ok=not failed)
    ran = sum(o.state == "succeeded" for o in outcomes.values())
    log(f"{ran} steps ran, {sum(o.state == 'skipped' for o in outcomes.values())} skipped "
        f"in {duration(time.time() - started)}")
    if failed:
        blocked = sum(o.state == "blocked" for o in outcomes.values())
        names = ", ".join(f"{n} ({o.error})" for n, o in failed.items())
        raise RunFailure(f"{len(failed)} step(s) failed: {names}; {blocked} step(s) waiting on them. "
                         f"Finished steps are kept: fix the cause and run the same command again")
    if (out / targets[0].dirname).is_dir():  # in an object store, a skipped report may not be in scratch
        _link_latest(out / "report", targets[0].dirname)
    log(f"report: {where}/{targets[0].dirname}/report.md")
    return outcomes


def _stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a scheduler's preemption, `ray job stop`) stops the study the way Ctrl-C does: running
    training runs save a checkpoint first. (Ray's own handler would abort the driver without a word.)"""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _link_latest(link: Path, target: str) -> None:
    """`<study>/report` always points at the newest report directory."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
