"""Step `fit`: for each model family, the power laws L(C) and L(N) over its runs, with bootstrap intervals, a
backtest on the largest-compute run(s), and predictions at multiples of the study's largest compute. An isoFLOP
grid (training.flops_budgets) adds Chinchilla's three approaches: isoflop (2), envelope (1) and chinchilla (3).

Outputs: runs.csv (one row per run, the input of `arscale fit --runs`), fit.json ({family: {form: fit}}) and the
plots frontier-<family>.png, params-<family>.png, backtest-<family>.png, families.png when there are several,
and for isoFLOP grids isoflops-<family>.png and optimal-<family>.png (N*(C), D*(C)).
"""

from __future__ import annotations

from dataclasses import dataclass

import scaling.plots
from armodels.files import read_json, write_json_atomic
from pipelines.step import StepContext

VERSION = "2"
POWER_LAW_FORMS = ("compute", "params")  # fitted for every family: L(C) and L(N)
ISOFLOP_FORMS = ("isoflop", "envelope", "chinchilla")


@dataclass(frozen=True)
class FitStepConfig:
    convention: str
    bootstrap: int
    holdout_top: int
    predict_multipliers: tuple[float, ...]
    seed: int
    isoflop: bool = False  # the grid trains each size at several FLOPs budgets

    def __post_init__(self) -> None:
        object.__setattr__(self, "predict_multipliers", tuple(self.predict_multipliers))  # a list, from the YAML


def fit_study(config: FitStepConfig, ctx: StepContext) -> dict:
    import pandas as pd

    records = [read_json(d / "eval.json", "evaluation record") for _, d in sorted(ctx.inputs.items())]
    runs = pd.DataFrame([{**r, "series": series_of(r)} for r in records]).drop(columns=["eval", "config"],
                                                                                 errors="ignore")
    runs["flops"] = runs[f"flops_{config.convention}"]  # the default compute column of `arscale fit --runs`
    runs.to_csv(ctx.output / "runs.csv", index=False)

    largest = runs.loc[runs["status"] == "ok", "flops"].max()
    targets = [m * largest for m in config.predict_multipliers] if pd.notna(largest) else []
    fits, compute_fits, summary = {}, {}, {}
    for family, table in runs.groupby("series", sort=False):  # a family, or an image stream's family
        fits[family] = {}
        for form in POWER_LAW_FORMS + (ISOFLOP_FORMS if config.isoflop else ()):
            # chinchilla counts C = 6·N·D with non-embedding N; isoflop and envelope read the `flops` column
            convention = {"compute": config.convention, "chinchilla": "6ND"}.get(form)
            try:
                result = scaling.fit_runs(table, form, convention=convention, bootstrap=config.bootstrap,
                                          holdout_top=config.holdout_top if form in POWER_LAW_FORMS else 0,
                                          predict_compute=targets if form != "params" else (), seed=config.seed)
            except scaling.FitInputError as e:  # too few usable runs: the report says so instead of failing
                fits[family][form] = {"form": form, "error": str(e)}
                ctx.log(f"{family} {form} fit not possible: {e}")
                continue
            fits[family][form] = result.to_dict()
            _plot(result, table, family, targets, ctx)
            p = result.params
            ctx.log(f"{family} {form}: " + ", ".join(f"{k} = {v:.4g}" for k, v in p.items())
                    + (f", backtest error {result.backtest.mean_abs_rel_error:.1%}" if result.backtest else ""))
            summary.update({f"{family}.{form}.{k}": v for k, v in p.items()})
            if result.backtest:
                summary[f"{family}.{form}.backtest_abs_rel_error"] = result.backtest.mean_abs_rel_error
            if form == "compute":
                compute_fits[family] = result
    if len(compute_fits) > 1:
        scaling.plots.plot_families(compute_fits, ctx.output / "families.png",
                                    extrapolate_to=max(targets) if targets else None)
    write_json_atomic(ctx.output / "fit.json", fits)

    ctx.tracker.log_metrics(summary, step=0)
    for name in ("fit.json", "runs.csv", *sorted(p.name for p in ctx.output.glob("*.png"))):
        ctx.tracker.log_artifact(ctx.output / name)
    ctx.tracker.flush()
    return summary


def series_of(record: dict) -> str:
    """What fits and reports group runs by: the family, or in image studies `<stream>-<family>`."""
    return record.get("series") or record["family"]


def _plot(result, runs, family: str, targets: list[float], ctx: StepContext) -> None:

    if result.form == "compute":
        scaling.plots.plot_frontier(runs, result, ctx.output / f"frontier-{family}.png",
                                    extrapolate_to=max(targets) if targets else None, title=f"{family}: L(C)")
        if result.backtest:
            scaling.plots.plot_backtest(result, ctx.output / f"backtest-{family}.png",
                                        title=f"{family}: backtest of L(C)")
    elif result.form == "params":
        scaling.plots.plot_frontier(runs, result, ctx.output / f"params-{family}.png", title=f"{family}: L(N)")
    elif result.form == "isoflop":
        scaling.plots.plot_isoflops(result, ctx.output / f"isoflops-{family}.png",
                                    title=f"{family}: loss at fixed compute")
        scaling.plots.plot_optimal_allocation(result, ctx.output / f"optimal-{family}.png",
                                              extrapolate_to=max(targets) if targets else None,
                                              title=f"{family}: compute-optimal N and D (isoFLOP)")
