"""Step `report`: report.md with its plots, from the outputs of the fit, training and evaluation steps, and
report.html, the same report as one web page with the plots inlined.

The report folder is self-contained (plots beside report.md, relative links), so it can be copied anywhere,
e.g. under reports/ in the repository.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from armodels.files import read_json
from armodels.train import TrainRun, branch_step
from pipelines.config import IMAGE_STREAMS, TEXT_STREAMS, TOKENIZER_KIND_NAMES
from pipelines.progress import human
from pipelines.report_html import write_report_html
from pipelines.step import StepContext
from pipelines.step_status import STATUS
from pipelines.steps import series_of
from scaling.plots import plot_learning_curves, plot_rate_distortion

# 3: image studies; runs grouped by series. 4: report.html beside report.md. 5: Approach 3 side by side. 6: text
# studies of several tokenizers (their section, comparisons in bits/byte). 7: each whole-curve law's λ and first step
VERSION = "7"
BACKTEST_MISS = 0.10  # a law that misses its held-out budget by more: the headline says it does not predict
VAL_ROSE = 0.05  # a run whose validation loss ends this far above its lowest: the report names it
STREAMS = (*TEXT_STREAMS, *IMAGE_STREAMS)  # the order in which the report lists runs
LOSSLESS = ("pixels", "pyramid")  # image streams that hold every pixel's value


@dataclass(frozen=True)
class ReportStepConfig:
    study: str
    config: dict = field(default_factory=dict)  # the study config, shown in the report


def write_report(config: ReportStepConfig, ctx: StepContext) -> dict:

    runs = _by_run(ctx, "eval-", "eval.json")
    curves = _by_run(ctx, "train-", "curve.json")
    samples = _by_run(ctx, "eval-", "samples.json")
    fit_dir = ctx.inputs["fit"]
    saved = read_json(fit_dir / "fit.json")
    fits, comparison = saved["families"], saved.get("comparison")
    order = sorted(runs, key=lambda r: (STREAMS.index(runs[r].get("stream", "text")), series_of(runs[r]),
                                        runs[r]["params_nonembedding"], r))

    plot_learning_curves({r: (np.array([p["tokens"] for p in curves[r]["val"]]),
                              np.array([p["loss"] for p in curves[r]["val"]]))
                          for r in order if curves[r]["val"]}, ctx.output / "learning_curves.png")
    for plot in fit_dir.glob("*.png"):
        shutil.copy(plot, ctx.output / plot.name)
    # the fit data beside the report, so a reader can re-derive every number (`arscale fit --runs runs.csv`)
    for name in ("fit.json", "runs.csv"):
        shutil.copy(fit_dir / name, ctx.output / name)
    provenance = {name: read_json(d / STATUS) for name, d in sorted(ctx.inputs.items())}
    images = _image_figures(ctx, runs, order) if "images" in config.config and config.config["images"] else None
    plots = {p.name for p in ctx.output.glob("*.png")}
    convention = config.config.get("fit", {}).get("convention", "per_layer")
    spent, design = _training_compute(ctx, runs, convention)
    text = render(config, runs, order, fits, samples, provenance, plots, images, curves, comparison, design, spent)
    (ctx.output / "report.md").write_text(text)
    write_report_html(ctx.output)  # converted from report.md, so the two never disagree
    # The output folder is still the step's .tmp folder here; the study prints the final path when it ends.
    ctx.log(f"wrote report.md and report.html: {len(order)} runs, {len(plots)} plots")
    ctx.tracker.log_artifacts(ctx.output, "report")
    return {"runs": len(runs), "ok_runs": sum(r["status"] == "ok" for r in runs.values())}


def _training_compute(ctx: StepContext, runs: dict, convention: str) -> tuple[dict[str, float], list[str]]:
    """The training FLOPs each series spent, from its runs' run.json (a WSD design's trunks counted once, up to its
    last branch point; confirmation runs left out), and for a design with cooldown branches, the report's lines on
    what its trunks and cooldowns spent against the same (N, D) points trained as one run each (a cosine grid)."""
    spent: dict[str, float] = {}
    trunks: dict[str, tuple[str, TrainRun, int]] = {}  # (family, shape, lr, seed) → series, a branch, trunk steps
    branches, on_branches = [], 0.0  # the cooldown branches, and what they and their trunks spent
    for name, folder in sorted(ctx.inputs.items()):
        run_name = name.removeprefix("train-")
        if not name.startswith("train-") or run_name not in runs or "-confirm-" in run_name:
            continue
        run, series = TrainRun.load(folder / "run.json"), series_of(runs[run_name])
        if not run.start_from:
            spent[series] = spent.get(series, 0.0) + run.flops(convention)
            continue
        branches.append(run)
        start = branch_step(run.start_from)
        key = json.dumps([run.family, run.model, run.train.lr, run.train.seed], sort_keys=True)
        trunks[key] = (series, run, max(start, trunks.get(key, ("", run, 0))[2]))
        own = run.flops(convention, (run.steps - start) * run.train.batch_size * run.seq_len)
        spent[series] = spent.get(series, 0.0) + own
        on_branches += own
    for series, run, steps in trunks.values():
        trunk = run.flops(convention, steps * run.train.batch_size * run.seq_len)
        spent[series] += trunk
        on_branches += trunk
    if not branches:
        return spent, []
    separate = sum(run.flops(convention) for run in branches)
    t = branches[0].train
    return spent, ["## Cooldown branches", "",
                   f"Each size trained one trunk at the peak learning rate, and each (N, D) point is a cooldown "
                   f"branched off it (WSD: the last {t.decay_fraction:.0%} of the run's steps, {t.decay_shape} down "
                   f"to {t.min_lr_ratio:g}× the peak), which ends exactly as a straight WSD run of its length would. "
                   f"Training compute: {on_branches:.3g} FLOPs ({convention}) for {len(branches)} points off "
                   f"{len(trunks)} trunks, {on_branches / separate:.0%} of the {separate:.3g} FLOPs that one run per "
                   "point (a cosine grid) would take.", ""]


def _image_figures(ctx: StepContext, runs: dict, order: list[str]) -> dict:
    """Copies each image tokenizer's reconstructions and each run's samples into the report, draws the
    rate–distortion plot; returns {"source": the data used, "tokenizers": their test metrics by stream}."""
    streams = {}
    source = None
    if "images" in ctx.inputs:  # "<data> test split (<where>), first N" → "<data> (<where>)"
        test = read_json(ctx.inputs["images"] / "data.json")["sources"]["test"]
        source = re.sub(r", first \d+$", "", test.replace(" test split", ""))
    for name, d in ctx.inputs.items():
        if name.startswith("tokenizer-"):
            stream = name.removeprefix("tokenizer-")
            streams[stream] = read_json(d / "metrics.json")
            shutil.copy(d / "reconstructions.png", ctx.output / f"reconstructions-{stream}.png")
    for r in order:
        samples = ctx.inputs[f"eval-{r}"] / "samples.png"
        if samples.is_file():
            shutil.copy(samples, ctx.output / f"samples-{r}.png")
    points: dict[str, tuple[list[float], list[float]]] = {}
    for r in order:
        x = runs[r]
        if x["status"] == "ok":
            bits, mse = points.setdefault(series_of(x), ([], []))
            bits.append(x["bits_per_image"])
            mse.append(x["mse"])
    plot_rate_distortion(points, ctx.output / "rate_distortion.png")
    return {"source": source, "tokenizers": streams}


def _by_run(ctx: StepContext, prefix: str, filename: str) -> dict[str, dict]:
    """`filename` of every input step named `<prefix><run>`, by run name."""
    return {name.removeprefix(prefix): read_json(d / filename) for name, d in ctx.inputs.items()
            if name.startswith(prefix) and (d / filename).is_file()}


def render(config: ReportStepConfig, runs: dict, order: list[str], fits: dict, samples: dict, provenance: dict,
           plots: set[str], images: dict | None = None, curves: dict | None = None,
           comparison: dict | None = None, design: list[str] | None = None,
           spent: dict[str, float] | None = None) -> str:
    """The report's Markdown. `images`: an image study's data source and tokenizer metrics (None for text);
    `design`: lines on how the runs were trained (a WSD design's cooldown branches); `spent`: each series'
    training FLOPs."""
    c = config.config
    convention = c.get("fit", {}).get("convention", "per_layer")
    confirm_runs = [r for r in order if "-confirm-" in r]
    grid = [r for r in order if r not in confirm_runs]
    families = list(dict.fromkeys(series_of(runs[r]) for r in grid))
    ok = [r for r in grid if runs[r]["status"] == "ok"]
    corpus = c.get("corpus", {})
    if images is None:
        data = (f"Corpus: {corpus.get('source')} (≤{human(corpus.get('max_bytes', 0))}B); tokenizer: "
                f"{_tokenizer_names(c)}; context {c.get('models', {}).get('seq_len')} tokens")
    else:
        data = (f"Images: {images['source'] or c['images']['data']} ({c['images']['train_images']:,} train, "
                f"{c['images']['test_images']:,} test); token streams: "
                f"{', '.join(dict.fromkeys(runs[r]['stream'] for r in order))}")
    out = [f"# Scaling study: {config.study}", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M')} by arscale. {data}; {len(grid)} runs ({len(ok)} finished) "
           f"of {', '.join(families)}{f' and {len(confirm_runs)} confirmation run(s)' if confirm_runs else ''}; "
           f"FLOPs counted as `{convention}` ({CONVENTION_MEANING.get(convention, convention)}).", ""]
    out += [_headline(family, fits.get(family, {}), runs) for family in families] + [""]
    out += _scale_section(families, fits, convention)
    out += design or []
    out += _whole_curves_section(families, fits)
    out += _side_by_side_section(families, fits, spent or {}, convention)
    if confirm_runs:
        out += _confirm_section(families, fits, runs)
    if images is not None:
        out += _streams_section(runs, ok, images["tokenizers"], plots)
        out += _conditioning_section(runs, ok)
    elif c.get("text_tokenizers") or c.get("tokenizer", {}).get("kind", "bpe") != "bpe":
        out += _tokenizers_section(runs, ok)

    unit = "val bits/byte" if images is None else "test bits/dim"
    out += ["## Runs", "", "Runs marked † are on the compute frontier and enter L(C); ‡ enter only the fits that "
            "use every size (L(N), isoFLOP approaches); unmarked finished runs lost their size's learning-rate sweep "
            "or are confirmation runs, fitted by nothing.", "",
            f"| run | family | shape | params (non-emb.) | params (total) | tokens | tokens/param | lr | seed | "
            f"FLOPs ({convention}) | FLOPs (6ND) | val nats/token | {unit} | train s | status |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    fitted = _fit_membership(fits)
    for r in order:
        x = runs[r]
        status = x["status"] if x["status"] == "ok" else f"**{x['status']}**: {x.get('reason')}"
        mark = fitted.get(r, "")
        out.append(f"| {r}{mark} | {series_of(x)} | {_shape(x.get('config', {}))} | "
                   f"{human(x['params_nonembedding'])} | {human(x['params'])} | {human(x['tokens'])} | "
                   f"{x['tokens'] / x['params']:.1f} | "
                   f"{_general(x.get('lr'))} | {x.get('seed', '—')} | {_sci(x.get(f'flops_{convention}'))} | "
                   f"{_sci(x.get('flops_6ND'))} | {_num(x.get('loss'))} | {_num(x.get('bits_per_byte'))} | "
                   f"{x['train_seconds']:.0f} | {status} |")
    out += [""]
    out += _noise_section(families, fits)
    out += _lr_section(families, fits, plots)
    out += _curves_section(runs, order, curves or {}, c, plots)
    if comparison:
        out += _families_section(comparison, plots, images is not None, _unknown_shares(runs, ok))

    for family in families:
        family_fits = fits.get(family, {})
        title = "## Loss vs compute" if len(families) == 1 else f"## {family}: loss vs compute"
        largest = (family_fits.get("design", {}).get("compute") or [None, None])[1]
        out += [title, ""]
        selected = family_fits.get("selected", "compute")
        for form in ("compute", "compute_pure"):
            fit = family_fits.get(form, {})
            name = FORM_TITLES[form] + (" — **selected** (lowest out-of-sample error)" if form == selected else "")
            out += [f"### {name}", ""]
            out += _fit_section(fit, f"frontier-{family}.png" if form == "compute" else None, plots, "C",
                                f"training FLOPs ({convention})")
            out += _backtest_section(fit, f"backtest-{family}.png" if form == "compute" else None, plots)
            out += _predictions_section(fit, largest)
        out += _selection_section(family_fits.get("selection", {}))
        out += _sensitivity_section(family_fits.get("sensitivity", []), convention)
        out += [title.replace("compute", "parameters"), ""]
        out += _fit_section(family_fits.get("params", {}), f"params-{family}.png", plots, "N",
                            "non-embedding parameters, at the design's tokens per parameter")
        if "isoflop" in family_fits or "chinchilla" in family_fits:
            out += ["## Compute-optimal allocation" if len(families) == 1
                    else f"## {family}: compute-optimal allocation", ""]
            out += _allocation_section(family, family_fits, plots)

    excluded = [r for r in order if runs[r]["status"] != "ok"]
    if excluded:
        out += ["## Runs left out of the fits", ""]
        out += [f"- **{r}**: {runs[r]['status']} — {runs[r].get('reason')}" for r in excluded]
        out.append("")
    out += _samples_section(runs, order, samples) if images is None else _image_samples_section(runs, order, plots)
    out += ["## Fit data", "", "`runs.csv` (every run, with `in_fit` and `on_frontier`) and `fit.json` (every fit, "
            "its intervals, backtests, form comparison, sensitivity, learning-rate study and confirmation) sit beside "
            "this report; `arscale fit --runs runs.csv` refits from them.", ""]
    out += ["## Provenance", "", "Each step's versioned output directory (`<step>-<hash>`; the hash covers the "
            "step's config, code version and inputs) and its MLflow run.", "",
            "| input | directory | MLflow run |", "|---|---|---|"]
    out += [f"| {name} | `{status.get('dir')}` | `{status.get('mlflow_run_id')}` |"
            for name, status in provenance.items()]
    return "\n".join(out) + "\n"


CONVENTION_MEANING = {
    "per_layer": "each family's own count of a forward and backward pass, logits included",
    "6ND": "6·N·D, N = non-embedding parameters", "6ND_total": "6·N·D, N = all parameters",
    "kaplan": "Kaplan et al. 2020: 6·N·D plus attention", "chinchilla": "Hoffmann et al. 2022, appendix F"}
FORM_TITLES = {"compute": "L(C) = E + A·C^−α", "compute_pure": "L(C) = A·C^−α (no irreducible loss)"}


def _fit_membership(fits: dict) -> dict[str, str]:
    """run → † (on the compute frontier: in L(C)) or ‡ (in the other fits only)."""
    out = {}
    for fit in fits.values():
        for form in ("params", "isoflop", "envelope", "chinchilla"):
            for r in (fit.get(form) or {}).get("runs", []):
                out[r] = "‡"
        for r in (fit.get("compute") or {}).get("runs", []):
            out[r] = "†"
    return out


def _identified(fit: dict) -> bool:
    return not fit.get("unidentified")


def _headline(family: str, fit: dict, runs: dict) -> str:
    selected = fit.get("selected", "compute")
    compute = fit.get(selected) or {}
    if not compute or "error" in compute:
        return f"**Fit ({family}):** not possible — {compute.get('error', 'no compute fit')}.  "
    law = (f"L(C) = {compute['E']:.3f} + {compute['A']:.3g}·C^−{compute['alpha']:.3f}" if selected == "compute"
           else f"L(C) = {compute['A']:.3g}·C^−{compute['alpha']:.3f}")
    ci = compute.get("ci", {}).get("alpha")
    line = f"**Fit ({family}, {FORM_TITLES.get(selected, selected)} selected):** {law}"
    line += f" (α {compute.get('ci_level', 0.9):.0%} interval [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else ""
    bt = compute.get("backtest")
    if bt:
        line += f"; the largest budget held out and predicted: {bt['mean_abs_rel_error']:.2%} error"
        if bt["mean_abs_rel_error"] > BACKTEST_MISS and _identified(compute):
            line += f" (**more than {BACKTEST_MISS:.0%}**: its predictions beyond these runs are not borne out)"
    if not _identified(compute):
        return line + f". **Not identified** ({'; '.join(compute['unidentified'])}): no point prediction.  "
    confirm = fit.get("confirm") or {}
    actual = runs.get(confirm.get("name"), {}).get("loss")
    if confirm.get("predicted") is not None and actual is not None:
        low, high = confirm["run_interval"]
        inside = "inside" if low is not None and low <= actual <= high else "**outside**"
        line += (f"; confirmation run at {confirm['multiplier']:.1f}× its largest compute: predicted "
                 f"{confirm['predicted']:.3f} [{_num(low, 3)}, {_num(high, 3)}], actual {actual:.3f} "
                 f"({(actual - confirm['predicted']) / actual:+.2%}, {inside} the interval)")
    return line + ".  "


def _scale_section(families: list[str], fits: dict, convention: str) -> list[str]:
    """The scale the numbers were made at, and how far the predictions reach beyond it."""
    out = ["## What these numbers rest on", "",
           "| family | sizes | params (non-emb.) | params (total) | tokens | tokens/param | compute | seeds per size | "
           "lrs per size | device | predictions reach |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
    for family in families:
        d = fits.get(family, {}).get("design", {})
        if not d.get("params"):
            continue
        reach = max([p["compute"] for p in (fits[family].get("compute") or {}).get("predictions", [])] or [0])
        compute = d.get("compute") or [None, None]
        out.append(f"| {family} | {d['sizes']} | {_span(d['params_nonembedding'])} | {_span(d['params'])} | "
                   f"{_span(d['tokens'])} | {d['tokens_per_param'][0]:.1f}–{d['tokens_per_param'][1]:.1f} | "
                   f"{_sci(compute[0])}–{_sci(compute[1])} ({convention}) | "
                   f"{', '.join(map(str, d['seeds_per_size']))} | {', '.join(map(str, d['lrs_per_size']))} | "
                   f"{', '.join(d.get('devices') or ['cpu'])} | "
                   f"{f'{reach / compute[1]:,.0f}× its largest run' if reach and compute[1] else '—'} |")
    out += ["", "These are small models trained briefly; a law fitted here describes this range. Its extrapolation "
            "is tested below by holding out the largest compute budget, by rolling-origin backtests at growing "
            "extrapolation ratios, and by a confirmation run where the study trains one; beyond those ratios it is "
            "an assumption, and intervals there only account for the noise and fit uncertainty seen in this range.",
            ""]
    return out


def _confirm_section(families: list[str], fits: dict, runs: dict) -> list[str]:
    out = ["## Confirmation run", "", "After the fit, one model planned at the grid's tokens-per-parameter rule and "
           "confirm × the family's largest compute, trained at the learning rate of the fitted lr-vs-size law; the "
           "prediction (made before it trained, recorded in fit.json) beside what it reached. The run interval "
           "includes the seed noise of one run; the law interval is the fit's uncertainty of the mean.", "",
           "| family | run | params (non-emb.) | tokens | × largest compute | lr | predicted | run interval | "
           "law interval | actual | error | inside |", "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for family in families:
        conf = fits.get(family, {}).get("confirm")
        if not conf:
            continue
        actual = runs.get(conf["name"], {}).get("loss")
        predicted = conf.get("predicted") if conf.get("identified", True) else None
        run_low, run_high = conf.get("run_interval") or (None, None)
        law_low, law_high = conf.get("law_interval") or (None, None)
        error = (actual - predicted) / actual if actual is not None and predicted is not None else None
        inside = "—" if actual is None or run_low is None else ("yes" if run_low <= actual <= run_high else "**no**")
        out.append(f"| {family} | {conf['name']} | {human(conf['params_nonembedding'])} | {human(conf['tokens'])} | "
                   f"{conf['multiplier']:.2f}× | {_general(conf.get('lr'))} | {_num(predicted)} | "
                   f"[{_num(run_low)}, {_num(run_high)}] | [{_num(law_low)}, {_num(law_high)}] | {_num(actual)} | "
                   f"{'—' if error is None else f'{error:+.2%}'} | {inside} |")
        if conf.get("identified") is False:
            out.append("| | the fit is not identified: no point prediction | | | | | | | | | | |")
    return out + [""]


def _whole_curves_section(families: list[str], fits: dict) -> list[str]:
    """A WSD design's lr-annealing fits (fit.annealing_fits): each trunk's law and its branches' backtest."""
    rows = [(family, t) for family in families for t in fits.get(family, {}).get("curves", [])]
    if not rows:
        return []
    out = ["## Whole training curves", "",
           "Each trunk's training curves (its cooldown branches, each with the trunk's part before it) fitted by the "
           "learning-rate annealing law of Tissue et al. (2024), L(s) = L0 + A·S1^−α − C·S2 (S1: the summed learning "
           "rate so far; S2: its summed fall, with momentum λ). λ and the first fitted step (the start of training, "
           "where the loss falls faster than the law, left out) are chosen per trunk among a few candidates by how "
           "well each predicts one branch's final loss from the others. Each branch's final loss (the mean training "
           "loss of its last 5 logged points) is then predicted from the other branches' curves, with λ and the "
           "first step chosen again without it. These are training losses (each point the mean over the steps since "
           "the one before), one model size per law: the law says nothing about other sizes, and a parameter marked "
           "at its bound is not identified by these curves.", "",
           "| family | trunk | L0 | A | α | C | λ | from step | points | branches: predicted vs actual final loss "
           "| worst |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
    for family, t in rows:
        if "error" in t:
            out.append(f"| {family} | {t['trunk']} | | | | | | | | not fitted: {t['error']} | |")
            continue
        law, stuck = t["law"]["params"], set(t["law"].get("at_bound", ()))
        shown = {k: (f"{law[k]:{spec}}" + (" (at bound: not identified)" if k in stuck else ""))
                 for k, spec in (("L0", ".3g"), ("A", ".3g"), ("alpha", ".3f"), ("C", ".3g"))}
        branches = ", ".join(f"{human(b['tokens'])} tokens {b['predicted']:.4f} vs {b['actual']:.4f} "
                             f"({b['error']:+.1%})" for b in t["backtest"])
        out.append(f"| {family} | {t['trunk']} | {shown['L0']} | {shown['A']} | {shown['alpha']} | "
                   f"{shown['C']} | {t['law'].get('momentum', 0.999):g} | {t['law'].get('min_step', 0)} | "
                   f"{t['law']['points']} | {branches} | {t['worst_error']:.1%} |")
    return out + [""]


def _side_by_side_section(families: list[str], fits: dict, spent: dict[str, float], convention: str) -> list[str]:
    """With several series fitted by Approach 3 (sizes × token budgets, e.g. a cosine grid and a WSD grid of the same
    sizes): each one's training compute, L(N, D) with intervals, compute-optimal allocation and prediction at the
    first multiple of its largest run, and whether each prediction lies inside the other series' interval."""
    fitted = [f for f in families if "E" in (fits.get(f, {}).get("chinchilla") or {})]
    if len(fitted) < 2:
        return []
    most = max(spent.get(f, 0.0) for f in fitted)
    level = fits[fitted[0]]["chinchilla"].get("ci_level", 0.9)
    out = ["## Side by side: compute, L(N, D) and allocation", "",
           f"Each series fitted by Chinchilla's Approach 3, L(N, D) = E + A/N^α + B/D^β (N non-embedding parameters, "
           f"C = 6ND), with {level:.0%} intervals from the fit's bootstrap. Its prediction is the loss of the "
           "compute-optimal (N, D) at the first prediction multiple of the series' largest run.", "",
           f"| series | training FLOPs ({convention}) | share of the most | E | A | α | B | β | a (N* ∝ C^a) | "
           "b (D* ∝ C^b) | at | N* | D* | predicted loss | interval |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    predictions = {}
    for f in fitted:
        fit = fits[f]["chinchilla"]
        ci = fit.get("ci", {})
        cells = [f"{_general(fit.get(k))} [{_general((ci.get(k) or [None, None])[0])}, "
                 f"{_general((ci.get(k) or [None, None])[1])}]" for k in ("E", "A", "alpha", "B", "beta")]
        p = (fit.get("predictions") or [{}])[0]
        predictions[f] = p
        loss = _num(p.get("loss")) if _identified(fit) else "not identified"
        out.append(f"| {f} | {_sci(spent.get(f))} | {_percent(spent.get(f, 0) / most if most else None)} | "
                   f"{' | '.join(cells)} | {_num(fit.get('a'))} | {_num(fit.get('b'))} | {_sci(p.get('compute'))} | "
                   f"{_count(p.get('n_opt'))} | {_count(p.get('d_opt'))} | {loss} | "
                   f"[{_num(p.get('low'))}, {_num(p.get('high'))}] |")
    out.append("")
    identified = [f for f in fitted if _identified(fits[f]["chinchilla"]) and predictions[f].get("loss") is not None]
    for f in identified:  # a point prediction only where the law is identified
        for other in fitted:
            q = predictions[other]
            if other == f or q.get("low") is None or q.get("high") is None:
                continue
            inside = "inside" if q["low"] <= predictions[f]["loss"] <= q["high"] else "**outside**"
            out.append(f"- {f}'s prediction ({_num(predictions[f]['loss'])}) lies {inside} {other}'s {level:.0%} "
                       f"interval [{_num(q['low'])}, {_num(q['high'])}].")
    unidentified = [f"{f} ({'; '.join(fits[f]['chinchilla'].get('unidentified') or [])})" for f in fitted
                    if f not in identified]
    if unidentified:
        out.append(f"- Not identified, so no point prediction and no comparison of predictions: "
                   f"{', '.join(unidentified)}.")
    return out + [""]


def _noise_section(families: list[str], fits: dict) -> list[str]:
    rows = [(family, s) for family in families for s in fits.get(family, {}).get("noise", {}).get("sizes", [])]
    if not rows:
        return ["## Noise", "", "Every size has one seed, so seed-to-seed noise is not measured here; the fits' "
                "intervals estimate noise from their residuals only.", ""]
    out = ["## Noise", "", "Final validation loss across seeds (same size and hyperparameters; the initialisation and "
           "the order of the training data differ).", "",
           "| family | size (non-emb. params) | seeds | mean loss | sd | relative sd |", "|---|--:|--:|--:|--:|--:|"]
    rows.sort(key=lambda fs: (fs[0], fs[1]["params"]))
    out += [f"| {family} | {human(s['params_nonembedding'])} | {s['seeds']} | {s['mean']:.4f} | {s['sd']:.4f} | "
            f"{s['relative_sd']:.2%} |" for family, s in rows]
    for family in families:
        noise = fits.get(family, {}).get("noise", {})
        if noise.get("pooled_relative_sd") is not None:
            out.append(f"\n{family}: pooled seed noise {noise['pooled_relative_sd']:.2%} of the loss "
                       f"({noise['dof']} degrees of freedom). Differences below about twice this are noise.")
    return out + [""]


def _lr_section(families: list[str], fits: dict, plots: set[str]) -> list[str]:
    out = []
    for family in families:
        lr = fits.get(family, {}).get("lr", {})
        law = lr.get("law")
        if lr.get("swept"):
            out += [f"**{family}**: best learning rate per size (lowest mean loss over seeds; refined by a parabola "
                    "in log lr when inside the sweep).", "", "| size (non-emb. params) | lrs tried | best lr | "
                    "loss at best | at the sweep's edge |", "|--:|---|--:|--:|---|"]
            out += [f"| {human(s['params_nonembedding'])} | {', '.join(_general(v) for v in s['lrs'])} | "
                    f"{_general(s['best_lr'])} | {min(s['losses']):.4f} | "
                    f"{'**yes**: widen the sweep' if s['at_edge'] else 'no'} |"
                    for s in lr["sizes"]]
            out.append("")
            if f"lr-{family}.png" in plots:
                out += [f"![loss vs lr](lr-{family}.png)", ""]
        if law:
            out += [f"{family}: lr*(N) = {law['coef']:.3g}·N^{law['exponent']:+.3f} (N non-embedding), through the "
                    f"{law['source']}; it sets the confirmation run's learning rate.", ""]
    return ["## Learning rate", "", *out] if out else []


def _curves_section(runs: dict, order: list[str], curves: dict, config: dict, plots: set[str]) -> list[str]:
    training = config.get("training", {})
    windows = training.get("eval_windows") or 64
    seq_len = config.get("models", {}).get("seq_len")
    gaps = [curves[r]["val"][-1]["loss"] - runs[r]["loss"] for r in order
            if runs[r].get("loss") is not None and curves.get(r, {}).get("val")]
    out = ["## Loss vs tokens", "", f"Validation loss during training, each point on the same {windows} windows "
           f"({windows * seq_len:,} tokens) of the validation split" if seq_len else
           f"Validation loss during training, on {windows} windows of the validation split"]
    if gaps:
        sample = ("a harder-than-average sample" if min(gaps) > 0 else "an easier-than-average sample"
                  if max(gaps) < 0 else "harder than the scored tokens for some runs, easier for others")
        out[-1] += (f"; the table above scores up to {human(config.get('evaluation', {}).get('max_tokens', 0))} "
                    f"tokens of it, and the curves' last points sit {min(gaps):+.3f} to {max(gaps):+.3f} nats from "
                    f"those scores (the windows are {sample}).")
    out.append("")
    rose = [r for r in order if len(curves.get(r, {}).get("val", [])) > 1
            and curves[r]["val"][-1]["loss"] > (1 + VAL_ROSE) * min(p["loss"] for p in curves[r]["val"])]
    if rose:
        out += [f"In {len(rose)} of {len(order)} runs the validation loss ended more than {VAL_ROSE:.0%} above its "
                f"lowest point ({', '.join(rose)}): they learned what does not carry over to the validation split "
                "(overfitting, or a shift between the splits), so their final losses, and fits through them, say "
                "where training stopped, not what their compute could reach.", ""]
    if "learning_curves.png" in plots:
        out += ["![loss vs tokens](learning_curves.png)", ""]
    return out


def _families_section(comparison: dict, plots: set[str], image_study: bool,
                      unknown: dict[str, float] | None = None) -> list[str]:
    """`unknown`: the series whose bits/byte leave out the bytes of unknown tokens (UNKNOWN_NOTED or more), by
    their share: no difference is stated against them."""
    unknown = unknown or {}
    out = ["## Families at matched compute", ""]
    unit = comparison.get("unit", "nats/token")
    if image_study:
        out += ["Each stream's token stands for a different part of an image (a pixel's value, a code standing for a "
                "pixel or a patch, a pyramid's low-resolution pixel), so each law's loss is given in bits/dim: "
                "nats/token × that stream's measured bits/dim per nat/token. Code streams lose what their tokenizer "
                "does not reconstruct: compare them beside their distortion (Token streams, above).", ""
                ] if unit == "bits/dim" else [
                "Each stream's loss is per token of that stream (a pixel's value, or a code standing for a pixel or "
                "a patch), and code streams lose what their tokenizer does not reconstruct: compare streams with each "
                "other in bits/dim and bits/image beside their distortion (Token streams, above).", ""]
    if unit == "bits/byte":
        out += ["The families read different tokens, so each law's loss is given in bits per byte of the validation "
                "text: nats/token × that stream's measured bits/byte per nat/token (Tokenizers, above).", ""]
    out += [f"Each family's selected L(C) at {comparison['compute']:.3e} FLOPs, the largest compute every family "
            "reached (no extrapolation), with the law's interval. A difference is stated only where the intervals "
            "do not overlap.", "", f"| family | loss ({unit}) | interval |", "|---|--:|--:|"]
    out += [f"| {s} | {v['loss']:.4f} | [{_num(v['low'])}, {_num(v['high'])}] |"
            for s, v in sorted(comparison["series"].items(), key=lambda kv: kv[1]["loss"])]
    out.append("")
    for p in comparison.get("pairs", []):
        partial = [s for s in (p["better"], p["worse"]) if s in unknown]
        if unit == "bits/byte" and partial:
            out.append(f"- {p['better']} and {p['worse']}: not compared; " + "; ".join(
                f"{s}'s bits/byte leave out the {unknown[s]:.1%} of the bytes its vocabulary maps to the unknown token "
                "(a lower bound)" for s in partial))
            continue
        verdict = (f"{p['better']} is lower than {p['worse']} by {p['difference']:.3f} {unit}" if p["beyond_noise"]
                   else f"{p['better']} and {p['worse']}: within noise ({p['difference']:.3f} {unit} apart)")
        out.append(f"- {verdict}")
    out.append("")
    if "families.png" in plots:
        out += ["![families](families.png)", ""]
    return out


def _fit_section(fit: dict, plot: str | None, plots: set[str], symbol: str, meaning: str) -> list[str]:
    if not fit or "error" in fit:
        return [f"Fit not possible: {fit.get('error', 'not run')}", ""]
    method = {"residual": "residual bootstrap (noise estimated from the runs, seeds included)",
              "runs": "bootstrap over runs"}.get(fit.get("interval_method"), "bootstrap")
    noise = f"; residual noise {fit['noise_sd']:.2%} of the loss" if fit.get("noise_sd") is not None else ""
    law = f"E + A·{symbol}^−α" if "E" in fit and fit.get("E") is not None else f"A·{symbol}^−α"
    lines = [f"L({symbol}) = {law}, {symbol} = {meaning}; fitted on {fit['n_points']} runs (Huber loss on log L; "
             f"{fit.get('ci_level', 0.9):.0%} intervals by {method}{noise}).", "",
             "| parameter | value | interval |", "|---|--:|--:|"]
    for key in ("E", "A", "alpha"):
        if fit.get(key) is None:
            continue
        low, high = fit.get("ci", {}).get(key) or (None, None)
        interval = f"[{low:.4g}, {high:.4g}]" if low is not None and high is not None else "unbounded"
        lines.append(f"| {key} | {fit[key]:.4g} | {interval} |")
    lines.append("")
    if fit.get("runs"):
        lines += [f"Runs: {', '.join(fit['runs'])}.", ""]
    if fit.get("unidentified"):
        lines += [f"**Not identified**: {'; '.join(fit['unidentified'])}. Its point predictions are not shown.", ""]
    if plot and plot in plots:
        lines += [f"![{meaning}]({plot})", ""]
    lines += [f"> warning: {w}\n" for w in fit.get("warnings", [])]
    return lines


def _backtest_section(fit: dict, plot: str | None, plots: set[str]) -> list[str]:
    bt, rolling = fit.get("backtest"), fit.get("rolling") or []
    if not bt and not rolling:
        return [f"No backtest: {fit['backtest_note']}", ""] if fit.get("backtest_note") else []
    lines = ["#### Backtests", "", "The fit repeated without the largest compute budget (all its runs), which it then "
             "predicts; and rolling-origin: fitted only on runs up to 1/r of the largest compute, predicting the "
             "largest budget.", ""]
    if bt:
        lines += ["| held-out run compute | actual loss | predicted | abs. relative error |", "|--:|--:|--:|--:|"]
        for x, actual, predicted, err in zip(bt["x"], bt["actual"], bt["predicted"], bt["abs_rel_error"]):
            lines.append(f"| {x:.3e} | {actual:.4f} | {predicted:.4f} | {err:.2%} |")
        lines.append("")
    if rolling:
        lines += ["| extrapolation asked | actual ratio | runs fitted | abs. relative error |", "|--:|--:|--:|--:|"]
        for r in rolling:
            err = r.get("abs_rel_error", r.get("mean_abs_rel_error"))
            if err is None:
                lines.append(f"| {r.get('ratio')}× | — | — | {r.get('note') or r.get('reason') or 'not possible'} |")
            else:
                lines.append(f"| {r.get('ratio')}× | {_num(r.get('ratio_actual'), 1)}× | {r.get('n_runs', '—')} | "
                             f"{err:.2%} |")
        lines.append("")
    if plot and plot in plots:
        lines += [f"![backtest]({plot})", ""]
    return lines


def _selection_section(selection: dict) -> list[str]:
    forms = selection.get("forms") or []
    if not forms:
        return [f"Form comparison not possible: {selection['error']}", ""] if selection.get("error") else []
    out = ["### Which form extrapolates best", "", "Each form refitted without the largest budget and at each "
           "rolling-origin cut, on the same budgets; the mean is over the cuts every fitted form could be refitted "
           "at, and among the identified forms the lowest mean predicts.", "",
           "| form | parameters | held-out largest budget | rolling-origin errors | mean | identified |",
           "|---|--:|--:|---|--:|---|"]
    for f in forms:
        if f.get("error"):
            out.append(f"| {f['form']} | — | — | {f['error']} | — | — |")
            continue
        rolling = ", ".join(f"{r.get('ratio')}×: {r['abs_rel_error']:.2%}" for r in f.get("rolling", [])
                            if r.get("abs_rel_error") is not None) or "—"
        out.append(f"| {f['form']}{' (selected)' if f['form'] == selection.get('selected') else ''} | "
                   f"{f.get('n_params', '—')} | {_percent2(f.get('backtest_error'))} | {rolling} | "
                   f"{_percent2(f.get('mean_error'))} | {'yes' if f.get('identified') else 'no'} |")
    return out + [""]


def _sensitivity_section(rows: list[dict], convention: str) -> list[str]:
    if not rows:
        return []
    form = FORM_TITLES.get(rows[0].get("form", "compute"), "L(C)")
    out = ["### FLOPs convention", "", f"The selected fit, {form}, with compute counted each way "
           "(scaling/flops.py): the exponent depends on what is counted, most for small models whose logits "
           "dominate.", "",
           "| convention | α | α interval | loss at 10× the largest run | interval | held-out budget error |",
           "|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        name = f"{r['convention']}{' (used)' if r['convention'] == convention else ''}"
        if r.get("error"):
            out.append(f"| {name} | — | — | — | — | {r['error']} |")
            continue
        ci = r.get("alpha_ci") or (None, None)
        low, high = r.get("loss_at_10x_ci") or (None, None)
        loss = _num(r["loss_at_10x"]) if r.get("identified") else "not identified"
        out.append(f"| {name} | {r['alpha']:.3f} | [{_num(ci[0], 3)}, {_num(ci[1], 3)}] | {loss} | "
                   f"[{_num(low)}, {_num(high)}] | {_percent2(r.get('backtest_error'))} |")
    return out + [""]


def _streams_section(runs: dict, ok: list[str], tokenizers: dict, plots: set[str]) -> list[str]:
    """An image study's streams side by side: what each costs in bits and loses in fidelity."""
    out = ["## Token streams", "", "Raw pixels are lossless (so is the pyramid: each image at low resolution, then "
           "in full); VQ-VAE, FSQ and LFQ codes, and a colour palette's (one per pixel), are shorter sequences that "
           "lose detail. Rate: bits per image under the stream's best model; distortion: the tokenizer's "
           "reconstruction error on the test split.", "",
           "| stream | tokens/image | vocabulary | best run | test bits/dim | bits/image | MSE | PSNR (dB) | "
           "codebook usage | code perplexity |", "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|"]
    for stream in dict.fromkeys(runs[r]["stream"] for r in runs):
        mine = [r for r in ok if runs[r]["stream"] == stream]
        best = min(mine, key=lambda r: runs[r]["bits_per_dim"], default=None)
        x = runs[best] if best else {}
        t = tokenizers.get(stream, {})
        out.append(f"| {stream} | {x.get('seq_len', '—')} | {x.get('vocab_size', '—')} | {best or '—'} | "
                   f"{_num(x.get('bits_per_dim'))} | {_num(x.get('bits_per_image'), 1)} | "
                   f"{_num(t.get('mse', 0.0 if stream in LOSSLESS else None), 5)} | "
                   f"{'∞ (lossless)' if stream in LOSSLESS else _num(t.get('psnr'), 2)} | "
                   f"{_percent(t.get('usage'))} | {_num(t.get('perplexity'), 1)} |")
    out.append("")
    if "rate_distortion.png" in plots:
        out += ["![rate and distortion](rate_distortion.png)", ""]
    for stream in tokenizers:
        if f"reconstructions-{stream}.png" in plots:
            out += [f"**{stream} reconstructions** (top: test images; bottom: decoded from their codes)", "",
                    f"![{stream} reconstructions](reconstructions-{stream}.png)", ""]
    return out


UNKNOWN_NOTED = 0.01  # a stream whose unknown tokens stand for this share of the bytes or more is not compared


def _unknown_shares(runs: dict, ok: list[str]) -> dict[str, float]:
    """The series whose validation text is UNKNOWN_NOTED or more unknown bytes, by their largest share."""
    shares: dict[str, float] = {}
    for r in ok:
        share = runs[r].get("unknown_byte_share") or 0.0
        if share >= UNKNOWN_NOTED:
            shares[series_of(runs[r])] = max(share, shares.get(series_of(runs[r]), 0.0))
    return shares


def _tokenizer_names(config: dict) -> str:
    """The study's text tokenizers: "byte-level BPE, vocab 1024", then each further stream's."""
    tokenizers = {"text": config.get("tokenizer", {}), **config.get("text_tokenizers", {})}
    names = [f"{TOKENIZER_KIND_NAMES[t.get('kind', 'bpe')]}, vocab {t.get('vocab_size', 1024)}"
             for t in tokenizers.values()]
    return names[0] if len(names) == 1 else "; ".join(f"{s}: {n}" for s, n in zip(tokenizers, names))


def _tokenizers_section(runs: dict, ok: list[str]) -> list[str]:
    """A text study's tokenizers side by side: what a token holds, what the vocabulary misses, and the bits per
    byte of the text under each stream's best run (bits/byte is the one loss that compares across tokenizers)."""
    out = ["## Tokenizers", "", "Losses per token do not compare across tokenizers (a word holds more bytes than a "
           "character); bits per byte of the validation text do. A character or word vocabulary maps what it lacks "
           "to an unknown token: its bits/byte count each unknown token's bytes as covered, a lower bound where "
           "unknown bytes are many (armodels.char_word).", "",
           "The last column prices each unknown byte at 8 bits (spelled out as a raw byte, the spans' lengths not "
           "counted): a plain fallback code, showing what a vocabulary's gaps cost a code that must reproduce the "
           "text.", "",
           "| stream | tokenizer | vocabulary | bytes/token (val) | coverage (training sample) | unknown bytes (val) | "
           "best run | val bits/byte | with unknown bytes at 8 bits |", "|---|---|--:|--:|--:|--:|---|--:|--:|"]
    for stream in dict.fromkeys(runs[r].get("stream", "text") for r in runs):
        mine = [r for r in ok if runs[r].get("stream", "text") == stream and runs[r].get("bits_per_byte")]
        best = min(mine, key=lambda r: runs[r]["bits_per_byte"], default=None)
        x = runs[best] if best else {}
        scored = x.get("eval", {})
        per_token = scored["bytes"] / scored["tokens"] if scored.get("tokens") and scored.get("bytes") else None
        out.append(f"| {stream} | {TOKENIZER_KIND_NAMES.get(x.get('tokenizer'), '—')} | {x.get('vocab_size', '—')} | "
                   f"{_num(per_token, 2)} | {_percent(x.get('tokenizer_coverage'))} | "
                   f"{_percent(x.get('unknown_byte_share'))} | {best or '—'} | {_num(x.get('bits_per_byte'))} | "
                   f"{_num(x.get('bits_per_byte') + 8 * x.get('unknown_byte_share', 0.0)) if x else '—'} |")
    return out + [""]


def _image_samples_section(runs: dict, order: list[str], plots: set[str]) -> list[str]:
    lines = []
    for r in order:
        if f"samples-{r}.png" in plots:
            n_classes = runs[r].get("config", {}).get("n_classes")
            given = f" given the class; one row per class, 0 to {n_classes - 1} from the top" if n_classes else ""
            lines += [f"### {r} ({_num(runs[r].get('bits_per_dim'))} bits/dim{given})", "",
                      f"![samples of {r}](samples-{r}.png)", ""]
    return ["## Samples", "", *lines] if lines else []


def _conditioning_section(runs: dict, ok: list[str]) -> list[str]:
    """What the class buys: each class-conditioned run beside the unconditioned run of the same family, stream,
    shape, tokens, lr and seed, in test bits/dim (the conditioned one's given each image's class)."""
    def twin(r: str) -> tuple:
        x = runs[r]
        shape = json.dumps({k: v for k, v in x.get("config", {}).items() if k != "n_classes"}, sort_keys=True)
        return x["family"], x.get("stream"), shape, x["tokens"], x.get("lr"), x.get("seed")

    plain = {twin(r): r for r in ok if not runs[r].get("config", {}).get("n_classes")}
    pairs = [(plain[twin(r)], r) for r in ok if runs[r].get("config", {}).get("n_classes") and twin(r) in plain]
    if not pairs:
        return []
    k = runs[pairs[0][1]]["config"]["n_classes"]
    out = ["## Class conditioning", "",
           f"Each class-conditioned run beside its unconditioned twin (same family, shape, tokens, lr and seed); the "
           f"conditioned run is scored given each test image's class. For the true distributions the class can save "
           f"at most log2 {k} = {np.log2(k):.2f} bits per image (its entropy); a larger gain means the class makes "
           "the images easier to learn at this size, not that it carries more information.", "",
           "| unconditioned | conditioned | params (non-emb.) | tokens | bits/dim | given the class | difference | "
           "bits/image saved |", "|---|---|--:|--:|--:|--:|--:|--:|"]
    for u, c in pairs:
        a, b = runs[u], runs[c]
        out.append(f"| {u} | {c} | {human(b['params_nonembedding'])} | {human(b['tokens'])} | "
                   f"{_num(a['bits_per_dim'])} | {_num(b['bits_per_dim'])} | "
                   f"{b['bits_per_dim'] - a['bits_per_dim']:+.4f} | {a['bits_per_image'] - b['bits_per_image']:.1f} |")
    return out + [""]


def _allocation_section(family: str, fits: dict, plots: set[str]) -> list[str]:
    """Chinchilla's three approaches side by side: N*(C) ∝ C^a, D*(C) ∝ C^b, and what each predicts."""
    out = ["How to split a compute budget between parameters and tokens, by Chinchilla's three approaches "
           "(Hoffmann et al. 2022): 1 = lower envelope of all runs, 2 = minima of isoFLOP parabolas, "
           "3 = the parametric fit L(N, D) = E + A/N^α + B/D^β.", "",
           "| approach | a (N* ∝ C^a) | b (D* ∝ C^b) | at the first prediction: N* | D* | tokens/param | loss |",
           "|---|--:|--:|--:|--:|--:|--:|"]
    for number, form in ((1, "envelope"), (2, "isoflop"), (3, "chinchilla")):
        fit = fits.get(form, {})
        if "error" in fit or not fit:
            out.append(f"| {number} ({form}) | — | — | — | — | — | {fit.get('error', 'not fitted')} |")
            continue
        first = (fit.get("predictions") or [{}])[0]
        out.append(f"| {number} ({form}) | {_num(fit.get('a'))} | {_num(fit.get('b'))} | "
                   f"{_count(first.get('n_opt'))} | {_count(first.get('d_opt'))} | "
                   f"{_num(first.get('tokens_per_param'))} | {_num(first.get('loss'))} |")
    out.append("")
    for name, alt in ((f"isoflops-{family}.png", "isoFLOP curves"), (f"optimal-{family}.png", "N* and D*")):
        if name in plots:
            out += [f"![{alt}]({name})", ""]
    return out


def _predictions_section(fit: dict, largest: float | None) -> list[str]:
    if not fit.get("predictions") or not largest or "error" in fit:
        return []
    level = fit.get("ci_level", 0.9)
    lines = ["#### Predictions", "", f"| compute | × this family's largest run | predicted loss | {level:.0%} interval "
             "(law) | for one run |", "|--:|--:|--:|--:|--:|"]
    for p in fit["predictions"]:
        loss = _num(p["loss"]) if _identified(fit) else "not identified"
        lines.append(f"| {p['compute']:.3e} | {p['compute'] / largest:,.1f}× | {loss} | "
                     f"[{_num(p.get('low'))}, {_num(p.get('high'))}] | [{_num(p.get('run_low'))}, "
                     f"{_num(p.get('run_high'))}] |")
    return lines + [""]


def _samples_section(runs: dict, order: list[str], samples: dict) -> list[str]:
    lines = []
    for r in order:
        if not samples.get(r, {}).get("samples"):
            continue
        s = samples[r]
        lines += [f"### {r} (val {_num(runs[r].get('loss'))} nats/token; temperature {s['temperature']}, "
                  f"top-k {s['top_k']})", ""]
        for text in s["samples"]:
            # a fence longer than any run of backticks in the sample, so code in it cannot end the block
            fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
            lines += [f"{fence}python", text.rstrip("\n"), fence, ""]
    return ["## Samples", "", *lines] if lines else []


def _shape(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("vocab_size", "seq_len"))


def _num(x, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _percent2(x) -> str:
    return "—" if x is None else f"{x:.2%}"


def _general(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def _sci(x) -> str:
    return "—" if x is None else f"{x:.2e}"


def _span(pair) -> str:
    return "—" if not pair else f"{human(pair[0])}–{human(pair[1])}"


def _percent(x) -> str:
    return "—" if x is None else f"{x:.1%}"


def _count(x) -> str:
    return "—" if x is None or x != x else human(x)  # x != x: NaN
