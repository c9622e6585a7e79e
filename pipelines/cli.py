"""The `arscale` command line.

Every error a user can cause prints one line (`error: ...`) and exits 2 for bad arguments or input, 1 for a
failure while running; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

import scaling
from armodels.train import TrainRun, train_single_process
from cluster import commands as cluster_commands
from pipelines.config import PRESETS_DIR, json_schema, load_config, presets
from pipelines.errors import ManyProblems, RunFailure, UserError
from pipelines.mlflow_runs import log_fit, runs_from_mlflow
from pipelines.progress import TrainingProgress
from pipelines.sample_command import add_parser as add_sample_parser
from pipelines.status import report_summary, study_status
from pipelines.study import run_study
from pipelines.tokenization import commands as tokenization_commands
from pipelines.tracking import redact_uri
from scaling.forms import ADVISED_FORMS, FORMS


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its INFO lines about creating tables are noise
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except UserError as e:
        return _fail(args, e, 2)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        return _fail(args, e, 2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except Exception as e:  # RunFailure, and anything unexpected
        return _fail(args, e, 1)


def _fail(args, error: BaseException, code: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    else:
        message = str(error).strip() or type(error).__name__
        expected = isinstance(error, (UserError, RunFailure, OSError, ValueError))
        if not expected:
            message = f"{type(error).__name__}: {message}"
        hint = "" if expected else "  (--debug shows the traceback)"
        # One line, except for several problems of one input (a config's), listed one per line under it
        lines = message.splitlines() if isinstance(error, ManyProblems) else message.splitlines()[:1]
        print(f"error: {lines[0]}{hint}", *lines[1:], sep="\n", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not reset a --debug given before the subcommand.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser = argparse.ArgumentParser(prog="arscale", parents=[common],
                                     description="Scaling-law studies of autoregressive models on Ray.")
    parser.add_argument("--version", action="version", version=f"arscale {package_version()}")
    sub = parser.add_subparsers(metavar="COMMAND")

    study = sub.add_parser("study", help="run and inspect studies", parents=[common]).add_subparsers(
        metavar="ACTION")
    p = study.add_parser("run", parents=[common], help="run a study (skips finished steps)",
                         description="Run a study: tokenizer, shards, a grid of models, evaluation, fits, report.")
    p.add_argument("config", nargs="?", help="study YAML file or preset name (default: text-default)")
    p.add_argument("--out", help="study folder, or an object-store URI such as s3://bucket/studies/NAME "
                                 "(default: studies/<study name>)")
    p.add_argument("--dry-run", action="store_true", help="print the steps, what would run, sizes and FLOPs, "
                                                          "and a rough wall time; checks the inputs exist")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a setting of the config (repeatable): a dotted key, list entries by their index "
                        "from 0, the value read as YAML; e.g. --set training.lr=1e-3 --set models.seq_len=64 --set "
                        "models.grids.0.sizes.1.n_embd=48 --set 'training.lr_sweep=[0.002, 0.005]'. Recorded in "
                        "the study's study.json")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                          "else sqlite:///<study>/mlflow.db)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.set_defaults(handler=cmd_study_run)
    p = study.add_parser("status", parents=[common], help="show the state of every step of a study")
    p.add_argument("dir", help="study folder or object-store URI")
    p.set_defaults(handler=cmd_study_status)

    p = sub.add_parser("presets", parents=[common], help="list the built-in study configs",
                       description="The study configs that ship with arscale: give a name to `arscale study run`.")
    p.set_defaults(handler=cmd_presets)

    config = sub.add_parser("config", parents=[common], help="tools for writing study configs").add_subparsers(
        metavar="ACTION")
    p = config.add_parser("schema", parents=[common], help="write the JSON Schema of study configs (for editors)",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Write the JSON Schema of a study config: editors then complete keys, show "
                                      "their types and defaults, and\nunderline unknown keys as you type. With VS "
                                      "Code's YAML extension (or any editor using the YAML language\nserver), write "
                                      "it once and name it in the first line of your config:\n\n"
                                      "    arscale config schema --out arscale-study.schema.json\n\n"
                                      "    # yaml-language-server: $schema=arscale-study.schema.json\n"
                                      "    name: my-study\n    ...\n\n"
                                      "(the path is relative to the config file). The schema checks each key and "
                                      "type and each family's size\nfields; `arscale study run --dry-run` checks "
                                      "everything.")
    p.add_argument("--out", type=Path, help="write the schema to this file (default: print it)")
    p.set_defaults(handler=cmd_config_schema)

    p = sub.add_parser("report", parents=[common], help="show where a study's report is and its main numbers")
    p.add_argument("dir", type=Path)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("fit", parents=[common], help="fit a scaling law to a table of runs",
                       description="Fit a scaling law to runs from a CSV or from a study's MLflow store. With "
                                   "--tracking-uri (or $MLFLOW_TRACKING_URI) the fit is logged to MLflow.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", type=Path, help="CSV with columns params, tokens, loss[, flops, "
                                                  "params_nonembedding, run_id, ...]")
    source.add_argument("--mlflow", metavar="URI", help="read the runs of a study from this tracking store")
    p.add_argument("--experiment", help="MLflow experiment (the study's name); needed when the store has several")
    p.add_argument("--form", default="compute", choices=FORMS)
    p.add_argument("--convention", help="FLOPs convention (6ND, 6ND_total, kaplan, per_layer, chinchilla); "
                                        "default: the flops column, else 6ND")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the intervals (default 1000)")
    p.add_argument("--holdout-top", type=int, default=1, help="largest compute budgets held out by the backtest "
                                                              "(all their runs)")
    p.add_argument("--interval", choices=("residual", "runs"), default="residual",
                   help="bootstrap for the intervals: residual (noise estimated from the runs; default) or runs")
    p.add_argument("--predict-compute", type=float, nargs="*", default=[], metavar="C",
                   help="training FLOPs to predict the loss at")
    p.add_argument("--json", action="store_true", help="print only the fit as one JSON object")
    p.add_argument("--plot", type=Path, help="write the fitted frontier as a PNG")
    p.add_argument("--tracking-uri", help="log the fit to this MLflow store (default: $MLFLOW_TRACKING_URI, "
                                          "or the --mlflow store)")
    p.set_defaults(handler=cmd_fit)

    p = sub.add_parser("advise", parents=[common], help="which run to train next to sharpen a prediction",
                       description="Rank candidate runs that fit in a FLOPs budget by how much each is expected to "
                                   "narrow the bootstrap interval of the predicted loss at a target compute.")
    p.add_argument("--runs", type=Path, required=True, help="CSV of finished runs, as for `arscale fit`")
    p.add_argument("--target-compute", type=float, required=True, metavar="C", help="FLOPs of the prediction")
    p.add_argument("--budget", type=float, required=True, metavar="FLOPS", help="the most the next run may cost")
    p.add_argument("--form", default="chinchilla", choices=ADVISED_FORMS)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_advise)

    p = sub.add_parser("train", parents=[common], help="run one training run in this process, without Ray",
                       description="Train one model from a run.json (each study training step saves one) in a "
                                   "single process: for debugging and GPU checks.")
    p.add_argument("--config", type=Path, required=True, help="run.json of a training step")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=cmd_train)

    tokenization_commands.add_parsers(sub, common)  # tokenizer train bpe|char|word|vqvae|fsq|lfq, tokenize, detokenize
    add_sample_parser(sub, common)  # sample RUN_DIR
    cluster_commands.add_commands(sub, common)  # cluster up|down|status, submit, jobs
    return parser


def cmd_study_run(args) -> int:

    cfg, path = load_config(args.config, args.overrides)
    out = args.out or Path("studies") / cfg.name
    run_study(cfg, path, out, dry_run=args.dry_run, tracking_uri=args.tracking_uri, address=args.address,
              overrides=args.overrides)
    return 0


def cmd_study_status(args) -> int:

    print(study_status(args.dir))
    return 0


def cmd_config_schema(args) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if not args.out:
        print(text, end="")
        return 0
    try:
        args.out.write_text(text)
    except OSError as e:
        raise UserError(f"cannot write the schema to {args.out} ({e.strerror}); choose another --out") from None
    print(f"wrote {args.out}; put `# yaml-language-server: $schema={args.out.resolve()}` in a config's first line")
    return 0


def cmd_presets(args) -> int:
    found = presets()
    width = max(map(len, found), default=0)
    for name, what in found.items():
        print(f"{name:<{width}}  {what}")
    print(f"\n(in {PRESETS_DIR.resolve()}; run one with `arscale study run NAME`, or copy it and edit)")
    return 0


def package_version() -> str:
    """The installed distribution's version (a checkout without an install: pyproject's, unknown here)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arscale")
    except PackageNotFoundError:
        return "unknown (not installed)"


def cmd_report(args) -> int:
    markdown, *headline = report_summary(args.dir).splitlines()  # report.md's path, then its headline
    page = Path(markdown).with_name("report.html")
    print(markdown)
    print(page if page.is_file() else f"no report.html (the report predates it): make one with "
          f"`python -m pipelines.report_html {page.parent}`")
    for line in headline:
        print(line)
    return 0


def cmd_fit(args) -> int:
    if args.bootstrap < 0 or args.holdout_top < 0:
        raise UserError("--bootstrap and --holdout-top must be 0 or more")
    bad = [c for c in args.predict_compute if not (math.isfinite(c) and c > 0)]
    if bad:
        raise UserError(f"--predict-compute takes training FLOPs, which are positive numbers (got {bad[0]:g}), "
                        "e.g. 1e18")
    try:
        if args.runs:
            runs, experiment = scaling.load_runs_csv(args.runs), args.experiment or "arscale-fits"
        else:  # a fit of a study's runs is logged beside them, in the study's experiment
            runs, experiment = runs_from_mlflow(args.mlflow, args.experiment)
        result = scaling.fit_runs(runs, args.form, convention=args.convention, bootstrap=args.bootstrap,
                                  holdout_top=args.holdout_top, predict_compute=args.predict_compute,
                                  interval=args.interval)
    except scaling.FitInputError as e:
        raise UserError(str(e)) from None
    if args.plot:
        scaling.plots.plot_frontier(runs, result, args.plot)
    print(json.dumps(result.to_dict()) if args.json else describe_fit(result.to_dict()))
    tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or args.mlflow
    if tracking:
        run_id = log_fit(tracking, experiment, result, source=str(args.runs or args.mlflow), plot=args.plot)
        print(f"logged to MLflow {redact_uri(tracking)}, run {run_id}", file=sys.stderr)
    return 0


def cmd_advise(args) -> int:
    try:
        advice = scaling.advise(scaling.load_runs_csv(args.runs), args.target_compute, args.budget, form=args.form,
                                top=args.top, bootstrap=args.bootstrap)
    except (scaling.FitInputError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps([vars(a) for a in advice]))
        return 0
    if not advice:
        print("no candidate run fits in the budget")
        return 0
    print(f"interval width of the predicted loss at C={args.target_compute:.3g} today: {advice[0].width_now:.4f}")
    print(f"{'rank':>4}  {'params':>10}  {'tokens':>10}  {'FLOPs':>10}  {'expected width':>14}  {'narrower by':>11}")
    for i, a in enumerate(advice, 1):
        params = f"{a.params:.3g}" if a.params else "—"
        tokens = f"{a.tokens:.3g}" if a.tokens else "—"
        print(f"{i:>4}  {params:>10}  {tokens:>10}  {a.compute:>10.3g}  {a.expected_width:>14.4f}  "
              f"{a.relative_reduction:>11.1%}")
    return 0


def describe_fit(fit: dict) -> str:
    """A fit as a few readable lines: the law with intervals, its noise, the backtests, whether the runs determine
    it, and the predictions (intervals only, when they do not)."""
    ci = fit.get("ci", {})
    bound = lambda x: "unbounded" if x is None else f"{x:.4g}"  # noqa: E731 (None: an infinite end, in JSON)

    def value(key: str) -> str:
        interval = ci.get(key)
        return f"{key} = {fit[key]:.4g}" + (f" [{bound(interval[0])}, {bound(interval[1])}]" if interval else "")

    keys = [k for k in ("E", "A", "alpha", "B", "beta") if fit.get(k) is not None]
    lines = [f"{fit['form']} fit on {fit['n_points']} runs" + (f" (FLOPs: {fit['convention']})"
                                                                 if fit.get("convention") else "")]
    lines += [f"  {value(k)}" for k in keys]
    boot = fit.get("bootstrap") or {}
    if fit.get("noise_sd") is not None:
        lines.append(f"  intervals: {fit.get('ci_level', 0.9):.0%}, {fit.get('interval_method')} bootstrap; noise "
                     f"{fit['noise_sd']:.2%} of the loss ({fit.get('noise_dof')} dof)"
                     + (f"; {boot['failed']} of {boot['requested']} resamples failed" if boot.get("failed") else ""))
    for row in fit.get("excluded", []):
        lines.append(f"  excluded: {row}")
    backtest = fit.get("backtest")
    if backtest:
        lines.append(f"  backtest (largest budget held out): mean abs. relative error "
                     f"{backtest['mean_abs_rel_error']:.2%}")
    rolling = [r for r in fit.get("rolling", []) if r.get("abs_rel_error") is not None]
    if rolling:
        lines.append("  rolling-origin: " + ", ".join(f"{r['ratio']:g}× → {r['abs_rel_error']:.2%}" for r in rolling))
    if fit.get("unidentified"):
        lines.append(f"  not identified: {'; '.join(fit['unidentified'])} (no point predictions)")
    for p in fit.get("predictions", []):
        point = f"{p['loss']:.4f} " if not fit.get("unidentified") else ""
        lines.append(f"  predicted loss at C={p['compute']:.3g}: {point}[{bound(p['low'])}, {bound(p['high'])}]")
    return "\n".join(lines)


def cmd_train(args) -> int:

    try:
        run = TrainRun.load(args.config)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    stop = threading.Event()  # Ctrl-C or SIGTERM: finish the step, save a checkpoint, stop
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds only the result (DeepSpeed prints too)
        result = train_single_process(run, args.out, should_stop=stop.is_set,
                                      on_metrics=TrainingProgress(run.name, run.tokens_seen, every=5))
    print(json.dumps(result, indent=2))
    if result["status"] == "interrupted":
        print(f"stopped with a checkpoint in {args.out}; run the same command again to resume", file=sys.stderr)
        return 130
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
