"""Step `fit`: the power laws L(C) and L(N) over the study's runs, with bootstrap intervals, a backtest on the
largest-compute run(s), and predictions at multiples of the largest compute.

Outputs: runs.csv (one row per run, the input of `arscale fit --runs`) and fit.json.
"""

from __future__ import annotations

from dataclasses import dataclass

from armodels.files import read_json, write_json_atomic
from pipelines.executor import StepContext

VERSION = "1"
FORMS = ("compute", "params")


@dataclass(frozen=True)
class FitStepConfig:
    convention: str
    bootstrap: int
    holdout_top: int
    predict_multipliers: tuple[float, ...]
    seed: int


def fit_study(config: FitStepConfig, ctx: StepContext) -> dict:
    import pandas as pd

    import scaling
    import scaling.plots

    records = [read_json(d / "eval.json", "evaluation record") for _, d in sorted(ctx.inputs.items())]
    runs = pd.DataFrame(records).drop(columns=["eval"], errors="ignore")
    runs["flops"] = runs[f"flops_{config.convention}"]
    runs.to_csv(ctx.output / "runs.csv", index=False)

    largest = runs.loc[runs["status"] == "ok", "flops"].max()
    targets = [m * largest for m in config.predict_multipliers] if pd.notna(largest) else []
    fits, summary = {}, {}
    for form in FORMS:
        try:
            result = scaling.fit_runs(runs, form, convention=config.convention if form == "compute" else None,
                                      bootstrap=config.bootstrap, holdout_top=config.holdout_top,
                                      predict_compute=targets if form == "compute" else (), seed=config.seed)
        except scaling.FitInputError as e:  # too few usable runs: the report says so instead of failing
            fits[form] = {"form": form, "error": str(e)}
            ctx.log(f"{form} fit not possible: {e}")
            continue
        fits[form] = result.to_dict()
        plot = ctx.output / ("frontier.png" if form == "compute" else "params.png")
        scaling.plots.plot_frontier(runs, result, plot, extrapolate_to=max(targets) if targets else None)
        if form == "compute" and result.backtest:
            scaling.plots.plot_backtest(result, ctx.output / "backtest.png")
        p = result.params
        ctx.log(f"{form}: L = {p['E']:.3f} + {p['A']:.3g}·x^-{p['alpha']:.3f}"
                + (f", backtest error {result.backtest.mean_abs_rel_error:.1%}" if result.backtest else ""))
        summary.update({f"{form}_{k}": v for k, v in p.items()})
        if result.backtest:
            summary[f"{form}_backtest_abs_rel_error"] = result.backtest.mean_abs_rel_error
    write_json_atomic(ctx.output / "fit.json", fits)

    logger = ctx.logger()
    if logger:
        logger.log_metrics(summary, step=0)
        logger.log_artifact(ctx.output / "fit.json")
        logger.log_artifact(ctx.output / "runs.csv")
        logger.flush()
    return summary
