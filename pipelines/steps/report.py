"""Step `report`: report.md with its plots, from the outputs of the fit, training and evaluation steps.

The report folder is self-contained (plots beside report.md, relative links), so it can be copied anywhere,
e.g. under reports/ in the repository.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from armodels.files import read_json
from pipelines.executor import STATUS, StepContext
from pipelines.progress import human

VERSION = "1"
FIT_PLOTS = ("frontier.png", "params.png", "backtest.png")


@dataclass(frozen=True)
class ReportStepConfig:
    study: str
    config: dict = field(default_factory=dict)  # the study config, shown in the report


def write_report(config: ReportStepConfig, ctx: StepContext) -> dict:
    from scaling.plots import plot_learning_curves

    runs = {name.removeprefix("eval-"): read_json(d / "eval.json") for name, d in ctx.inputs.items()
            if name.startswith("eval-")}
    curves = {name.removeprefix("train-"): read_json(d / "curve.json") for name, d in ctx.inputs.items()
              if name.startswith("train-")}
    samples = {name.removeprefix("eval-"): read_json(d / "samples.json") for name, d in ctx.inputs.items()
               if name.startswith("eval-") and (d / "samples.json").is_file()}
    fit_dir = ctx.inputs["fit"]
    fits = read_json(fit_dir / "fit.json")
    order = sorted(runs, key=lambda r: runs[r]["params_nonembedding"])

    plot_learning_curves({r: (np.array([p["tokens"] for p in curves[r]["val"]]),
                              np.array([p["loss"] for p in curves[r]["val"]]))
                          for r in order if curves[r]["val"]}, ctx.output / "learning_curves.png")
    for plot in FIT_PLOTS:
        if (fit_dir / plot).is_file():
            shutil.copy(fit_dir / plot, ctx.output / plot)
    provenance = {name: read_json(d / STATUS) for name, d in sorted(ctx.inputs.items())}
    text = render(config, runs, order, fits, samples, provenance, {p.name for p in ctx.output.glob("*.png")})
    (ctx.output / "report.md").write_text(text)
    ctx.log(f"wrote {ctx.output / 'report.md'}")
    logger = ctx.logger()
    if logger:
        logger.log_artifacts(ctx.output, "report")
    return {"runs": len(runs), "ok_runs": sum(r["status"] == "ok" for r in runs.values())}


def render(config: ReportStepConfig, runs: dict, order: list[str], fits: dict, samples: dict, provenance: dict,
           plots: set[str]) -> str:
    c = config.config
    compute = fits.get("compute", {})
    convention = compute.get("convention") or c.get("fit", {}).get("convention", "6ND")
    ok = [r for r in order if runs[r]["status"] == "ok"]
    out = [f"# Scaling study: {config.study}", ""]
    corpus = c.get("corpus", {})
    out.append(f"Generated {time.strftime('%Y-%m-%d %H:%M')} by arscale. Corpus: {corpus.get('source')} "
               f"(≤{human(corpus.get('max_bytes', 0))}B); tokenizer: byte-level BPE, vocab "
               f"{c.get('tokenizer', {}).get('vocab_size')}; {len(order)} decoder-only transformers "
               f"({len(ok)} finished), context {c.get('models', {}).get('seq_len')}; FLOPs counted as "
               f"`{convention}`.")
    out += ["", _headline(compute), ""]

    out += ["## Runs", "", "| run | layers | d_model | params (non-emb.) | params (total) | tokens | FLOPs (6ND) | "
            "FLOPs (per-layer) | val nats/token | val bits/byte | train s | status |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in order:
        x = runs[r]
        status = x["status"] if x["status"] == "ok" else f"**{x['status']}**: {x.get('reason')}"
        out.append(f"| {r} | {x['n_layer']} | {x['d_model']} | {human(x['params_nonembedding'])} | "
                   f"{human(x['params'])} | {human(x['tokens'])} | {x['flops_6ND']:.2e} | "
                   f"{x['flops_per_layer']:.2e} | {_num(x.get('loss'))} | {_num(x.get('bits_per_byte'))} | "
                   f"{x['train_seconds']:.0f} | {status} |")
    out += ["", "## Loss vs tokens", "", "Validation loss during training, per model size (a subset of the "
            "validation split; the table above scores the full held-out split).", ""]
    if "learning_curves.png" in plots:
        out += ["![loss vs tokens](learning_curves.png)", ""]

    out += ["## Loss vs compute", ""]
    out += _fit_section(compute, "frontier.png", plots, "C", f"training FLOPs ({convention})")
    if "backtest" in compute and compute.get("backtest"):
        out += ["### Backtest", "", "The fit is repeated without the largest-compute run(s), which it then "
                "predicts; this is how far its extrapolation can be trusted.", "",
                "| held-out run compute | actual loss | predicted | abs. relative error |", "|--:|--:|--:|--:|"]
        bt = compute["backtest"]
        for x, actual, predicted, err in zip(bt["x"], bt["actual"], bt["predicted"], bt["abs_rel_error"]):
            out.append(f"| {x:.3e} | {actual:.4f} | {predicted:.4f} | {err:.2%} |")
        out.append("")
        if "backtest.png" in plots:
            out += ["![backtest](backtest.png)", ""]
    if compute.get("predictions"):
        largest = max(runs[r]["flops_6ND" if convention == "6ND" else "flops_per_layer"] for r in ok)
        level = c.get("fit", {}).get("ci_level", 0.9)
        out += ["### Predictions", "", f"| compute | × largest run | predicted loss | {level:.0%} bootstrap "
                "interval |", "|--:|--:|--:|--:|"]
        for p in compute["predictions"]:
            out.append(f"| {p['compute']:.3e} | {p['compute'] / largest:,.0f}× | {p['loss']:.4f} | "
                       f"[{p['low']:.4f}, {p['high']:.4f}] |")
        out.append("")

    out += ["## Loss vs parameters", ""]
    out += _fit_section(fits.get("params", {}), "params.png", plots, "N", "non-embedding parameters")

    excluded = [r for r in order if runs[r]["status"] != "ok"]
    if excluded:
        out += ["## Runs left out of the fits", ""]
        out += [f"- **{r}**: {runs[r]['status']} — {runs[r].get('reason')}" for r in excluded]
        out.append("")

    if samples:
        out += ["## Samples", ""]
        for r in order:
            if r not in samples or not samples[r]["samples"]:
                continue
            s = samples[r]
            out += [f"### {r} (val {_num(runs[r].get('loss'))} nats/token; temperature {s['temperature']}, "
                    f"top-k {s['top_k']})", ""]
            for text in s["samples"]:
                fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
                out += [f"{fence}python", text.rstrip("\n"), fence, ""]

    out += ["## Provenance", "", "Each step's versioned output directory (`<step>-<hash>`; the hash covers the "
            "step's config, code version and inputs) and its MLflow run.", "",
            "| input | directory | MLflow run |", "|---|---|---|"]
    for name, status in provenance.items():
        out.append(f"| {name} | `{status.get('dir')}` | `{status.get('mlflow_run_id')}` |")
    out.append("")
    return "\n".join(out)


def _headline(compute: dict) -> str:
    if "error" in compute or not compute:
        return f"**Fit:** not possible — {compute.get('error', 'no compute fit')}"
    ci = compute.get("ci", {}).get("alpha")
    interval = f" (α interval [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else ""
    line = f"**Fit:** L(C) = {compute['E']:.3f} + {compute['A']:.3g}·C^−{compute['alpha']:.3f}{interval}"
    bt = compute.get("backtest")
    if bt:
        line += f"; backtest on the largest run: {bt['mean_abs_rel_error']:.2%} error"
    preds = compute.get("predictions") or []
    if preds:
        p = preds[-1]
        line += f"; predicted loss at {p['compute']:.2e} FLOPs: {p['loss']:.3f} [{p['low']:.3f}, {p['high']:.3f}]"
    return line + "."


def _fit_section(fit: dict, plot: str, plots: set[str], symbol: str, meaning: str) -> list[str]:
    if not fit or "error" in fit:
        return [f"Fit not possible: {fit.get('error', 'not run')}", ""]
    lines = [f"L({symbol}) = E + A·{symbol}^−α, {symbol} = {meaning}; fitted on {fit['n_points']} runs "
             "(Huber loss on log L, bootstrap over runs).", "",
             "| parameter | value | bootstrap interval |", "|---|--:|--:|"]
    for key in ("E", "A", "alpha"):
        low, high = fit.get("ci", {}).get(key, (None, None))
        interval = f"[{low:.4g}, {high:.4g}]" if low is not None else "—"
        lines.append(f"| {key} | {fit[key]:.4g} | {interval} |")
    lines.append("")
    if plot in plots:
        lines += [f"![{meaning}]({plot})", ""]
    for w in fit.get("warnings", []):
        lines += [f"> warning: {w}", ""]
    return lines


def _num(x) -> str:
    return "—" if x is None else f"{x:.4f}"
