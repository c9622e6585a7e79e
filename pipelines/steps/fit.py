"""Step `fit`: for each model family, the scaling laws over its runs, with what a reader needs to trust them.

Per family (or image stream and family), from the evaluation records of its runs:

1. **Which runs enter.** With an lr sweep, each size's best learning rate (lowest mean loss over its seeds); all
   seeds of that lr enter. L(C) is fitted on the compute frontier: every budget's best size (a tokens-per-parameter
   design has one size per budget, so all of them; an isoFLOP grid its per-budget minima). L(N) is fitted on the
   runs at the design's tokens per parameter. runs.csv lists every run with `in_fit` and `on_frontier`.
2. **Noise.** Seed-to-seed spread per size (where a size has several seeds); the fits' intervals come from a
   residual bootstrap whose noise is estimated from all the runs, so they include it (scaling.bootstrap).
3. **Forms.** L(C) with and without an irreducible loss E (and Chinchilla's L(N, D) where the design identifies
   it), compared by out-of-sample error on held-out compute budgets (scaling.selection); the selected form makes
   the predictions. A fit whose parameters are not identified makes none (the report says why).
4. **FLOPs sensitivity.** The compute fit under every convention that counts the family (scaling.flops).
5. **Learning rate.** Loss vs lr per size, the best lr per size, and a power law lr*(N) through them; it sets the
   learning rate of the confirmation run.
6. **Confirmation run** (fit.confirm): the prediction, with an interval for one run, at the compute of the run
   planned at confirm × the family's largest compute; steps/train.py's train_confirmation then trains it.

Outputs: runs.csv (the input of `arscale fit --runs`), fit.json ({family: {...}}, see `fit_family`), the plots
frontier-, params-, backtest-, lr-<family>.png, families.png when there are several, and for isoFLOP grids
isoflops- and optimal-<family>.png.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import scaling
import scaling.annealing
import scaling.plots
from armodels.config_fields import added_field
from armodels.files import read_json, write_json_atomic
from pipelines.progress import human
from pipelines.step import StepContext
from pipelines.steps import series_of
from scaling.frontier import group_budgets
from scaling.results import jsonable

# 3: frontier, lr selection, seeds, forms, FLOPs sensitivity, confirmation runs; 4: steep exponents; 5: L(N, D) of
# sizes × token budgets, its predictions at multiples of 6ND compute, whole curves from mean losses; 6: families of
# different token streams compared per byte or per pixel (per_byte_scales); 7: whole-curve laws with the momentum
# and first step each trunk's curves choose (scaling.annealing.select_annealing), final losses over 5 points
VERSION = "7"
COMPUTE_FORMS = ("compute", "compute_pure")  # L(C) with and without E: the selection picks the predicting one
ISOFLOP_FORMS = ("isoflop", "envelope", "chinchilla")
SELECTION_FORMS = ("compute", "compute_pure", "chinchilla")
SENSITIVITY_BOOTSTRAP = 200  # resamples for the fits under other conventions (their intervals only)
BUDGET_RTOL = 0.25  # runs within this factor of compute share a budget (seeds and lrs of a size share one)
MATCHED_RATIO_RTOL = 0.1  # L(N) uses runs within 10% of the design's median tokens per parameter


@dataclass(frozen=True)
class FitStepConfig:
    convention: str
    bootstrap: int
    holdout_top: int
    predict_multipliers: tuple[float, ...]
    seed: int
    isoflop: bool = False  # the grid trains each size at several FLOPs budgets
    chinchilla: bool = added_field(False)  # the grid trains each size at several token budgets: fit L(N, D)
    confirm: dict = field(default_factory=dict)  # series -> planned_confirm(): the confirmation run to predict

    def __post_init__(self) -> None:
        object.__setattr__(self, "predict_multipliers", tuple(self.predict_multipliers))  # a list, from the YAML


def planned_confirm(tc, convention: str) -> dict:
    """What the fit needs of a planned confirmation run (a train.TrainStepConfig): its name, size and compute."""
    run = tc.run(".")
    costs = run.costs()
    return {"name": tc.name, "params": costs.params, "params_nonembedding": costs.params_nonembedding,
            "tokens": run.tokens_seen, "compute": run.flops(convention), "multiplier": None}


def fit_study(config: FitStepConfig, ctx: StepContext) -> dict:
    # inputs: each run's evaluation (by run name), and for a WSD design each cooldown branch's training (train-<run>)
    trained = {name.removeprefix("train-"): d for name, d in ctx.inputs.items() if name.startswith("train-")}
    records = [read_json(d / "eval.json", "evaluation record") for name, d in sorted(ctx.inputs.items())
               if not name.startswith("train-")]
    runs = run_table(records, config.convention)
    runs.to_csv(ctx.output / "runs.csv", index=False)

    fits, selected, summary = {}, {}, {}
    for series, table in runs.groupby("series", sort=False):  # a family, or an image stream's family
        fits[series], results = fit_family(series, table, config, ctx)
        selected[series] = results.get(fits[series]["selected"])
        summary.update(_summary(series, fits[series]))
    for series, trunks in annealing_fits(trained, {r["run_id"]: series_of(r) for r in records}).items():
        fits[series]["curves"] = trunks
        for t in trunks:
            ctx.log(f"{series} whole curves, {t['trunk']}: " + (t["error"] if "error" in t else (
                f"{len(t['backtest'])} branches' final losses predicted within {t['worst_error']:.1%}")))
    scales = per_byte_scales(runs)
    comparison = compare_families(selected, scales, "bits/dim" if "bits_per_dim" in runs else "bits/byte")
    if comparison:
        largest = max(r.law.axis.max() for r in selected.values() if r is not None)
        scaling.plots.plot_families({s: r for s, r in selected.items() if r is not None}, ctx.output / "families.png",
                                    extrapolate_to=max(config.predict_multipliers, default=1) * largest,
                                    scales=scales, unit=comparison["unit"])
    write_json_atomic(ctx.output / "fit.json", jsonable({"families": fits, "comparison": comparison}))

    ctx.tracker.log_metrics(summary, step=0)
    for name in ("fit.json", "runs.csv", *sorted(p.name for p in ctx.output.glob("*.png"))):
        ctx.tracker.log_artifact(ctx.output / name)
    ctx.tracker.flush()
    return summary


def run_table(records: list[dict], convention: str) -> pd.DataFrame:
    """One row per run, with `series`, `point` (runs of one size and token budget share it: they differ only in
    lr and seed), `flops` (in the fit's convention), and `in_fit` / `on_frontier` (which runs the laws use)."""
    runs = pd.DataFrame([{**r, "series": series_of(r)} for r in records])
    runs["point"] = [f"{s}|{json.dumps(c, sort_keys=True)}|{t}" for s, c, t in
                     zip(runs["series"], runs["config"], runs["tokens"])]
    runs = runs.drop(columns=["eval", "config"], errors="ignore")
    runs["flops"] = runs[f"flops_{convention}"]  # the default compute column of `arscale fit --runs`
    runs["tokens_per_param"] = runs["tokens"] / runs["params"]
    ok = runs["status"] == "ok"
    runs["in_fit"] = False
    for _, point in runs[ok].groupby("point", sort=False):
        best_lr = point.groupby("lr")["loss"].mean().idxmin()
        runs.loc[point.index[point["lr"] == best_lr], "in_fit"] = True
    runs["on_frontier"] = False
    for _, table in runs[runs["in_fit"]].groupby("series", sort=False):
        budgets = group_budgets(table["flops"].to_numpy(float), BUDGET_RTOL)
        for b in np.unique(budgets):
            members = table[budgets == b]
            best_point = members.groupby("point")["loss"].mean().idxmin()
            runs.loc[members.index[members["point"] == best_point], "on_frontier"] = True
    return runs


def fit_family(series: str, table: pd.DataFrame, config: FitStepConfig, ctx: StepContext) -> tuple[dict, dict]:
    """fit.json's entry of one family (design, noise, lr, the fitted forms, selection, sensitivity, confirmation),
    and its FitResults by form."""
    frontier = table[table["on_frontier"]]
    chosen = table[table["in_fit"]]
    largest = frontier["flops"].max()
    targets = [m * largest for m in config.predict_multipliers] if pd.notna(largest) else []
    confirm = dict(config.confirm.get(series) or {})
    out: dict = {"design": describe_design(table, frontier, config.convention), "noise": seed_noise(chosen),
                 "lr": lr_study(table)}
    results = {}
    forms = [*COMPUTE_FORMS, "params"] + (list(ISOFLOP_FORMS) if config.isoflop else
                                          ["chinchilla"] if config.chinchilla else [])
    unfinished = table[table["status"] != "ok"]  # given to every fit, which lists them as left out, and why
    for form in forms:
        rows = {"params": matched_ratio(chosen), **dict.fromkeys(ISOFLOP_FORMS, chosen)}.get(form, frontier)
        rows = pd.concat([rows, unfinished])
        predict = [*targets, *([confirm["compute"]] if confirm else [])] if form in COMPUTE_FORMS else []
        if form in ISOFLOP_FORMS:  # the same multiples of the largest run, in the compute this form counts
            column = f"flops_{_form_convention(form, config.convention) or config.convention}"
            largest_there = frontier[column].max() if column in frontier else None
            predict = [m * largest_there for m in config.predict_multipliers] if largest_there else targets
        try:
            result = scaling.fit_runs(rows, form, convention=_form_convention(form, config.convention),
                                      bootstrap=config.bootstrap, holdout_top=config.holdout_top,
                                      predict_compute=predict, seed=config.seed)
        except scaling.FitInputError as e:  # too few usable runs: the report says so instead of failing
            out[form] = {"form": form, "error": str(e)}
            ctx.log(f"{series} {form} fit not possible: {e}")
            continue
        results[form] = result
        out[form] = result.to_dict()
        out[form]["runs"] = rows.loc[rows["status"] == "ok", "run_id"].tolist()
        _plot(result, series, targets, ctx)
        ctx.log(f"{series} {form}: " + ", ".join(f"{k} = {v:.4g}" for k, v in result.params.items())
                + (f", backtest error {result.backtest.mean_abs_rel_error:.1%}" if result.backtest else "")
                + ("" if result.identified else f"; not identified ({'; '.join(result.unidentified)})"))
    out["selection"] = select_form(frontier, config)
    out["selected"] = out["selection"].get("selected")
    out["sensitivity"] = convention_sensitivity(frontier, config, out["selected"])
    if confirm:
        out["confirm"] = confirm_prediction(confirm, results.get(out["selected"]), out["lr"], largest)
    if out["lr"].get("sizes"):
        sizes = {f"{human(s['params_nonembedding'])} params": s for s in out["lr"]["sizes"]}
        scaling.plots.plot_lr_sweep({k: (s["lrs"], s["losses"]) for k, s in sizes.items()},
                                    {k: s["best_lr"] for k, s in sizes.items()}, ctx.output / f"lr-{series}.png",
                                    title=f"{series}: loss vs learning rate")
    return out, results


def describe_design(table: pd.DataFrame, frontier: pd.DataFrame, convention: str) -> dict:
    """The scale the fits were made at: sizes, tokens, compute, seeds, devices."""
    ok = table[table["status"] == "ok"]
    sizes = ok.drop_duplicates("point")
    return {"runs": len(table), "finished": len(ok), "sizes": int(sizes["params"].nunique()),
            "params": [float(ok["params"].min()), float(ok["params"].max())] if len(ok) else None,
            "params_nonembedding": ([float(ok["params_nonembedding"].min()), float(ok["params_nonembedding"].max())]
                                    if len(ok) else None),
            "tokens": [float(ok["tokens"].min()), float(ok["tokens"].max())] if len(ok) else None,
            "tokens_per_param": ([float(ok["tokens_per_param"].min()), float(ok["tokens_per_param"].max())]
                                 if len(ok) else None),
            "compute": [float(frontier["flops"].min()), float(frontier["flops"].max())] if len(frontier) else None,
            "convention": convention, "seeds_per_size": sorted({int(n) for n in ok.groupby(["point", "lr"]).size()}),
            "lrs_per_size": sorted({int(n) for n in ok.groupby("point")["lr"].nunique()}),
            "devices": sorted(ok["device"].dropna().unique().tolist()) if "device" in ok else []}


def seed_noise(chosen: pd.DataFrame) -> dict:
    """Seed-to-seed spread of the final loss, per size with several seeds, and pooled (relative to the loss)."""
    sizes = []
    for point, runs in chosen.groupby("point", sort=False):
        if len(runs) >= 2:
            loss = runs["loss"].to_numpy(float)
            sizes.append({"point": point, "run_ids": runs["run_id"].tolist(), "params": float(runs["params"].iloc[0]),
                          "params_nonembedding": float(runs["params_nonembedding"].iloc[0]),
                          "seeds": len(loss), "mean": float(loss.mean()), "sd": float(loss.std(ddof=1)),
                          "relative_sd": float(loss.std(ddof=1) / loss.mean())})
    if not sizes:
        return {"sizes": [], "pooled_relative_sd": None, "dof": 0}
    dof = sum(s["seeds"] - 1 for s in sizes)
    pooled = math.sqrt(sum((s["seeds"] - 1) * s["relative_sd"] ** 2 for s in sizes) / dof)
    return {"sizes": sizes, "pooled_relative_sd": pooled, "dof": dof}


def lr_study(table: pd.DataFrame) -> dict:
    """Per size, mean loss at each lr tried and the best lr (refined by a parabola in log lr when it is inside the
    sweep); which best lrs sit at a sweep's edge; and the power law lr*(N) = coef · N^exponent through them (N
    non-embedding). Without a sweep the law goes through the configured lrs (the confirmation run extrapolates it)."""
    ok = table[table["status"] == "ok"]
    sizes = []
    for point, runs in ok.groupby("point", sort=False):
        by_lr = runs.groupby("lr")["loss"].agg(["mean", "count"]).sort_index()
        lrs, losses = by_lr.index.to_numpy(float), by_lr["mean"].to_numpy(float)
        i = int(np.argmin(losses))
        best = float(lrs[i])
        if 0 < i < len(lrs) - 1:  # the vertex of the parabola through the best and its neighbours, in log lr
            x, y = np.log(lrs[i - 1:i + 2]), losses[i - 1:i + 2]
            c2, c1, _ = np.polyfit(x, y, 2)
            if c2 > 0:
                best = float(np.exp(np.clip(-c1 / (2 * c2), x[0], x[2])))
        sizes.append({"point": point, "params_nonembedding": float(runs["params_nonembedding"].iloc[0]),
                      "params": float(runs["params"].iloc[0]), "lrs": lrs.tolist(), "losses": losses.tolist(),
                      "seeds": by_lr["count"].astype(int).tolist(), "best_lr": best,
                      "at_edge": len(lrs) > 1 and i in (0, len(lrs) - 1)})
    swept = any(len(s["lrs"]) > 1 for s in sizes)
    out = {"swept": swept, "sizes": sizes if swept else [],
           "at_edge": [s["point"] for s in sizes if s["at_edge"]], "law": None}
    n = np.array([s["params_nonembedding"] for s in sizes])
    lr = np.array([s["best_lr"] for s in sizes])
    if len(np.unique(n)) >= 2:
        exponent, log_coef = np.polyfit(np.log(n), np.log(lr), 1)
        out["law"] = {"coef": float(np.exp(log_coef)), "exponent": float(exponent),
                      "source": "lr sweep" if swept else "configured learning rates"}
    elif len(lr):
        out["law"] = {"coef": float(lr[0]), "exponent": 0.0, "source": "configured learning rate"}
    return out


def matched_ratio(chosen: pd.DataFrame) -> pd.DataFrame:
    """The runs at the design's tokens per parameter (within 10%, by non-embedding or all parameters, whichever the
    design holds fixed: the ratio most sizes share, the longest of those), or all runs when they share one token
    budget: L(N) compares sizes at matched data, not at a data cap that binds some of them, nor at a short budget
    of cooldown branches when a longer one covers every size."""
    if len(chosen) and chosen["tokens"].max() <= (1 + MATCHED_RATIO_RTOL) * chosen["tokens"].min():
        return chosen
    groups = []  # (sizes it covers, its ratio, its runs) for each ratio some run has, by either parameter count
    for column in ("params_nonembedding", "params"):
        ratio = chosen["tokens"] / chosen[column]
        for reference in ratio.unique():
            matched = (ratio / reference - 1).abs() <= MATCHED_RATIO_RTOL
            if matched.all():
                return chosen
            groups.append((chosen.loc[matched, "params"].nunique(), reference, matched))
    # several ratios (capped runs; the budgets of cooldown branches): the one most sizes share, the longest of those
    return chosen[max(groups, key=lambda g: g[:2])[2]]


def select_form(frontier: pd.DataFrame, config: FitStepConfig) -> dict:
    """The forms side by side by out-of-sample error on held-out compute budgets; `selected` predicts."""
    try:
        comparison = scaling.compare_forms(frontier, SELECTION_FORMS, convention=config.convention, seed=config.seed)
    except scaling.FitInputError as e:
        return {"error": str(e), "selected": "compute"}
    result = comparison.to_dict()
    if result.get("selected") not in COMPUTE_FORMS:  # the predicting form must be one the step fitted as L(C)
        fitted = [f for f in result.get("forms", []) if f.get("form") in COMPUTE_FORMS and f.get("error") is None]
        result["selected"] = min(fitted, key=lambda f: f.get("mean_error", math.inf))["form"] if fitted else "compute"
    return result


def convention_sensitivity(frontier: pd.DataFrame, config: FitStepConfig, form: str) -> list[dict]:
    """The selected L(C) form under each FLOPs convention the runs were counted in: exponent, 10× prediction."""
    out = []
    for column in sorted(c for c in frontier.columns if c.startswith("flops_")):
        convention = column.removeprefix("flops_")
        table = frontier.assign(flops=frontier[column])
        if table["flops"].isna().any():
            continue
        largest = table["flops"].max()
        try:
            fit = scaling.fit_runs(table, form, bootstrap=min(config.bootstrap, SENSITIVITY_BOOTSTRAP),
                                   holdout_top=config.holdout_top, predict_compute=[10 * largest], seed=config.seed)
        except scaling.FitInputError as e:
            out.append({"convention": convention, "error": str(e)})
            continue
        p = fit.predictions[0]
        out.append({"convention": convention, "form": form, "alpha": fit.params["alpha"],
                    "alpha_ci": fit.ci.get("alpha"), "E": fit.params.get("E"), "loss_at_10x": p.loss,
                    "loss_at_10x_ci": (p.low, p.high),
                    "backtest_error": fit.backtest.mean_abs_rel_error if fit.backtest else None,
                    "identified": fit.identified, "compute_range": [float(table["flops"].min()), float(largest)]})
    return out


def confirm_prediction(confirm: dict, fit, lr: dict, largest: float) -> dict:
    """The selected fit's prediction for the confirmation run, and the run's learning rate from the lr law."""
    law = lr.get("law")
    out = {**confirm, "multiplier": confirm["compute"] / largest if largest else None,
           "lr": law["coef"] * confirm["params_nonembedding"] ** law["exponent"] if law else None,
           "lr_source": law["source"] if law else None}
    if fit is None:
        return {**out, "error": "no fit to predict it from"}
    p = next(p for p in fit.predictions if math.isclose(p.compute, confirm["compute"], rel_tol=1e-9))
    return {**out, "form": fit.form, "predicted": p.loss, "law_interval": (p.low, p.high),
            "run_interval": (p.run_low, p.run_high), "ci_level": fit.ci_level, "identified": fit.identified}


def compare_families(results: dict, scales: dict[str, float] | None = None, unit: str = "bits/byte") -> dict | None:
    """With several families: each one's selected L(C) at the largest compute that every family reached (so none
    extrapolates), with the law's interval, and each pair's difference, stated as one only when the two
    intervals do not overlap (else "within noise"). `scales`: each series' factor from nats/token to `unit`
    (bits/byte of text, bits/dim of images), where the series' tokens differ (per_byte_scales); the comparison is
    then in that unit."""
    results = {series: r for series, r in results.items() if r is not None}
    if len(results) < 2:
        return None
    common = min(float(r.law.axis.max()) for r in results.values())
    at = {}
    for series, r in results.items():
        low, high = r.predict_interval([common])
        scale = scales[series] if scales else 1.0
        at[series] = {"form": r.form, "loss": scale * float(r.predict([common])[0]), "low": scale * float(low[0]),
                      "high": scale * float(high[0]), "identified": r.identified}
    pairs = []
    names = sorted(at, key=lambda s: at[s]["loss"])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            separated = at[a]["high"] < at[b]["low"]  # NaN intervals compare False: not separated
            pairs.append({"better": a, "worse": b, "difference": at[b]["loss"] - at[a]["loss"],
                          "beyond_noise": bool(separated)})
    return {"compute": common, "series": at, "pairs": pairs, "unit": unit if scales else "nats/token"}


def per_byte_scales(runs: pd.DataFrame) -> dict[str, float] | None:
    """Where a study's series read different token streams (text tokenizers; image pixels, pyramids and codes), a
    token is worth a different number of bytes (pixels) in each, so losses per token do not compare: each series'
    factor from nats/token to bits/byte (an image study's bits/dim), the median over its finished runs of
    bits_per_byte / loss (one ratio per stream and held-out split). None otherwise."""
    if "stream" not in runs or runs["stream"].nunique() < 2:
        return None
    ok = runs[(runs["status"] == "ok") & runs["bits_per_byte"].notna()]
    return {series: float((t["bits_per_byte"] / t["loss"]).median()) for series, t in ok.groupby("series")}


def annealing_fits(trained: dict[str, Path], series: dict[str, str]) -> dict[str, list[dict]]:
    """The learning-rate annealing law (scaling.annealing) of each trunk of a WSD design, by series: fitted on its
    cooldown branches' training curves (each holds the trunk's part before its cooldown; the warmup left out) with
    the momentum and first step `select_annealing` picks, and each branch's final loss (the mean of its last logged
    points, each the mean training loss since the point before) predicted from the other branches' curves alone
    (the choice made again without it). `trained`: the branches' training folders by run name; trunks with fewer
    than 3 finished branches are left out (a backtest fits on at least 2)."""
    from armodels.train import TrainRun, lr_schedule  # torch: imported only for a WSD design

    groups: dict[tuple[str, str], list] = {}
    for name, folder in sorted(trained.items()):
        run = TrainRun.load(folder / "run.json")
        if not run.start_from or read_json(folder / "result.json", "training result")["status"] != "ok":
            continue
        points = read_json(folder / "curve.json", "training curve")["train"]
        trunk = json.dumps([run.family, run.model, run.train.lr, run.train.seed], sort_keys=True)
        lrs = [run.train.lr * m for m in map(lr_schedule(run), range(run.steps))]
        # each point's mean loss over the steps since the one before, at their middle step (the law is smooth
        # over so few steps); a single batch's loss where the run logged no means
        steps = [(p["mean_from"] + p["step"]) // 2 if "loss_mean" in p else p["step"] for p in points]
        curve = scaling.annealing.AnnealingCurve(lrs, steps, [p.get("loss_mean", p["loss"]) for p in points])
        groups.setdefault((series[name], trunk), []).append((name, run, curve))
    out: dict[str, list[dict]] = {}
    for (name_of_series, _), branches in groups.items():
        if len(branches) < 3:
            continue
        branches.sort(key=lambda b: b[1].steps)
        trunk_name = re.sub(r"-cd[^-]+", "", branches[0][0])  # the size, its lr and seed: what its branches share
        warmup = round(branches[0][1].warmup_fraction * branches[0][1].steps)
        curves = [c for _, _, c in branches]
        try:
            law = scaling.annealing.select_annealing(curves, min_step=warmup)
            backtest = scaling.annealing.backtest_annealing(curves, select=True, min_step=warmup)
        except ValueError as e:
            out.setdefault(name_of_series, []).append({"trunk": trunk_name, "error": str(e)})
            continue
        rows = [{"run": name, "tokens": run.tokens_seen, "predicted": float(predicted), "actual": float(actual),
                 "error": float(predicted / actual - 1), "momentum": fit.momentum, "min_step": fit.min_step}
                for (name, run, _), predicted, actual, fit in zip(branches, backtest.predicted, backtest.actual,
                                                                  backtest.fits)]
        out.setdefault(name_of_series, []).append({
            "trunk": trunk_name, "params_nonembedding": branches[0][1].costs().params_nonembedding,
            "law": law.to_dict(), "backtest": rows, "worst_error": max(abs(r["error"]) for r in rows)})
    return out


def _form_convention(form: str, convention: str) -> str | None:
    # chinchilla allocates compute as C = 6·N·D (non-embedding N); isoflop and envelope read the `flops` column
    return {"compute": convention, "compute_pure": convention, "chinchilla": "6ND"}.get(form)


def _summary(series: str, fit: dict) -> dict:
    out = {}
    for form in (*COMPUTE_FORMS, "params", *ISOFLOP_FORMS):
        result = fit.get(form) or {}
        for key in ("E", "A", "alpha", "a", "b"):
            if isinstance(result.get(key), (int, float)):
                out[f"{series}.{form}.{key}"] = result[key]
        if result.get("backtest"):
            out[f"{series}.{form}.backtest_abs_rel_error"] = result["backtest"]["mean_abs_rel_error"]
    return out


def _plot(result, family: str, targets: list[float], ctx: StepContext) -> None:
    if result.form == "compute":
        scaling.plots.plot_frontier(None, result, ctx.output / f"frontier-{family}.png",
                                    extrapolate_to=max(targets) if targets else None, title=f"{family}: L(C)")
        if result.backtest:
            scaling.plots.plot_backtest(result, ctx.output / f"backtest-{family}.png",
                                        title=f"{family}: backtest of L(C)")
    elif result.form == "params":
        scaling.plots.plot_frontier(None, result, ctx.output / f"params-{family}.png", title=f"{family}: L(N)")
    elif result.form == "isoflop":
        scaling.plots.plot_isoflops(result, ctx.output / f"isoflops-{family}.png",
                                    title=f"{family}: loss at fixed compute")
        scaling.plots.plot_optimal_allocation(result, ctx.output / f"optimal-{family}.png",
                                              extrapolate_to=max(targets) if targets else None,
                                              title=f"{family}: compute-optimal N and D (isoFLOP)")
