"""The `arscale fit` and `arscale advise` commands: their parsers and handlers (pipelines.cli imports this module
only when one of them runs; neither needs torch or Ray)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import scaling
from pipelines.errors import UserError
from pipelines.mlflow_runs import log_fit, runs_from_mlflow
from pipelines.tracking import redact_uri
from scaling.forms import ADVISED_FORMS, FORMS


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fit", parents=[common],
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

    p = sub.add_parser("advise", parents=[common],
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
