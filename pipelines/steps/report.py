"""Step `report`: report.md with its plots, from the outputs of the fit, training and evaluation steps.

The report folder is self-contained (plots beside report.md, relative links), so it can be copied anywhere,
e.g. under reports/ in the repository.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from armodels.files import read_json
from pipelines.config import IMAGE_STREAMS, TEXT_STREAM
from pipelines.progress import human
from pipelines.step import StepContext
from pipelines.step_status import STATUS
from pipelines.steps.fit import series_of
from scaling.plots import plot_learning_curves, plot_rate_distortion

VERSION = "3"  # 3: image studies; runs grouped by series
STREAMS = (TEXT_STREAM, *IMAGE_STREAMS)  # the order in which the report lists runs


@dataclass(frozen=True)
class ReportStepConfig:
    study: str
    config: dict = field(default_factory=dict)  # the study config, shown in the report


def write_report(config: ReportStepConfig, ctx: StepContext) -> dict:

    runs = _by_run(ctx, "eval-", "eval.json")
    curves = _by_run(ctx, "train-", "curve.json")
    samples = _by_run(ctx, "eval-", "samples.json")
    fit_dir = ctx.inputs["fit"]
    fits = read_json(fit_dir / "fit.json")
    order = sorted(runs, key=lambda r: (STREAMS.index(runs[r].get("stream", "text")), series_of(runs[r]),
                                        runs[r]["params_nonembedding"]))

    plot_learning_curves({r: (np.array([p["tokens"] for p in curves[r]["val"]]),
                              np.array([p["loss"] for p in curves[r]["val"]]))
                          for r in order if curves[r]["val"]}, ctx.output / "learning_curves.png")
    for plot in fit_dir.glob("*.png"):
        shutil.copy(plot, ctx.output / plot.name)
    provenance = {name: read_json(d / STATUS) for name, d in sorted(ctx.inputs.items())}
    images = _image_figures(ctx, runs, order) if "images" in config.config and config.config["images"] else None
    plots = {p.name for p in ctx.output.glob("*.png")}
    text = render(config, runs, order, fits, samples, provenance, plots, images)
    (ctx.output / "report.md").write_text(text)
    # The output folder is still the step's .tmp folder here; the study prints the final path when it ends.
    ctx.log(f"wrote report.md: {len(order)} runs, {len(plots)} plots")
    ctx.tracker.log_artifacts(ctx.output, "report")
    return {"runs": len(runs), "ok_runs": sum(r["status"] == "ok" for r in runs.values())}


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
           plots: set[str], images: dict | None = None) -> str:
    """The report's Markdown. `images`: an image study's data source and tokenizer metrics (None for text)."""
    c = config.config
    convention = c.get("fit", {}).get("convention", "6ND")
    families = list(dict.fromkeys(series_of(runs[r]) for r in order))
    ok = [r for r in order if runs[r]["status"] == "ok"]
    corpus = c.get("corpus", {})
    if images is None:
        data = (f"Corpus: {corpus.get('source')} (≤{human(corpus.get('max_bytes', 0))}B); tokenizer: byte-level BPE, "
                f"vocab {c.get('tokenizer', {}).get('vocab_size')}; context {c.get('models', {}).get('seq_len')} "
                "tokens")
    else:
        data = (f"Images: {images['source'] or c['images']['data']} ({c['images']['train_images']:,} train, "
                f"{c['images']['test_images']:,} test); token streams: "
                f"{', '.join(dict.fromkeys(runs[r]['stream'] for r in order))}")
    out = [f"# Scaling study: {config.study}", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M')} by arscale. {data}; {len(order)} runs ({len(ok)} "
           f"finished) of {', '.join(families)}; FLOPs counted as `{convention}` (6·N·D, N = non-embedding "
           "parameters).", ""]
    out += [_headline(family, fits.get(family, {}).get("compute", {})) for family in families] + [""]
    if images is not None:
        out += _streams_section(runs, ok, images["tokenizers"], plots)

    unit = "val bits/byte" if images is None else "test bits/dim"
    out += ["## Runs", "", "| run | family | shape | params (non-emb.) | params (total) | tokens | FLOPs (6ND) | "
            f"FLOPs (per-layer) | val nats/token | {unit} | train s | status |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in order:
        x = runs[r]
        status = x["status"] if x["status"] == "ok" else f"**{x['status']}**: {x.get('reason')}"
        out.append(f"| {r} | {series_of(x)} | {_shape(x.get('config', {}))} | {human(x['params_nonembedding'])} | "
                   f"{human(x['params'])} | {human(x['tokens'])} | {x['flops_6ND']:.2e} | "
                   f"{x['flops_per_layer']:.2e} | {_num(x.get('loss'))} | {_num(x.get('bits_per_byte'))} | "
                   f"{x['train_seconds']:.0f} | {status} |")
    out += ["", "## Loss vs tokens", "", "Validation loss during training (on a subset of the validation split; the "
            "table above scores the full held-out split).", ""]
    if "learning_curves.png" in plots:
        out += ["![loss vs tokens](learning_curves.png)", ""]
    if "families.png" in plots:
        out += ["## Families at matched compute", ""]
        if images is not None:
            out += ["Each stream's loss is per token of that stream (a pixel, or a code standing for a patch): "
                    "compare streams with each other in bits/dim and bits/image (Token streams, above).", ""]
        out += ["![families](families.png)", ""]

    for family in families:
        family_fits = fits.get(family, {})
        title = "## Loss vs compute" if len(families) == 1 else f"## {family}: loss vs compute"
        out += [title, ""]
        out += _fit_section(family_fits.get("compute", {}), f"frontier-{family}.png", plots, "C",
                            f"training FLOPs ({convention})")
        out += _backtest_section(family_fits.get("compute", {}), f"backtest-{family}.png", plots)
        out += _predictions_section(family_fits.get("compute", {}),
                                    max((runs[r][f"flops_{convention}"] for r in ok), default=None))
        out += [title.replace("compute", "parameters"), ""]
        out += _fit_section(family_fits.get("params", {}), f"params-{family}.png", plots, "N",
                            "non-embedding parameters")
        if "isoflop" in family_fits:
            out += ["## Compute-optimal allocation" if len(families) == 1
                    else f"## {family}: compute-optimal allocation", ""]
            out += _allocation_section(family, family_fits, plots)

    excluded = [r for r in order if runs[r]["status"] != "ok"]
    if excluded:
        out += ["## Runs left out of the fits", ""]
        out += [f"- **{r}**: {runs[r]['status']} — {runs[r].get('reason')}" for r in excluded]
        out.append("")
    out += _samples_section(runs, order, samples) if images is None else _image_samples_section(runs, order, plots)
    out += ["## Provenance", "", "Each step's versioned output directory (`<step>-<hash>`; the hash covers the "
            "step's config, code version and inputs) and its MLflow run.", "",
            "| input | directory | MLflow run |", "|---|---|---|"]
    out += [f"| {name} | `{status.get('dir')}` | `{status.get('mlflow_run_id')}` |"
            for name, status in provenance.items()]
    return "\n".join(out) + "\n"


def _streams_section(runs: dict, ok: list[str], tokenizers: dict, plots: set[str]) -> list[str]:
    """An image study's streams side by side: what each costs in bits and loses in fidelity."""
    out = ["## Token streams", "", "Raw pixels are lossless; VQ-VAE and FSQ codes are shorter sequences that lose "
           "detail. Rate: bits per image under the stream's best model; distortion: the tokenizer's reconstruction "
           "error on the test split.", "",
           "| stream | tokens/image | vocabulary | best run | test bits/dim | bits/image | MSE | PSNR (dB) | "
           "codebook usage | code perplexity |", "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|"]
    for stream in dict.fromkeys(runs[r]["stream"] for r in runs):
        mine = [r for r in ok if runs[r]["stream"] == stream]
        best = min(mine, key=lambda r: runs[r]["bits_per_dim"], default=None)
        x = runs[best] if best else {}
        t = tokenizers.get(stream, {})
        out.append(f"| {stream} | {x.get('seq_len', '—')} | {x.get('vocab_size', '—')} | {best or '—'} | "
                   f"{_num(x.get('bits_per_dim'))} | {_num(x.get('bits_per_image'), 1)} | "
                   f"{_num(t.get('mse', 0.0 if stream == 'pixels' else None), 5)} | "
                   f"{'∞ (lossless)' if stream == 'pixels' else _num(t.get('psnr'), 2)} | "
                   f"{_percent(t.get('usage'))} | {_num(t.get('perplexity'), 1)} |")
    out.append("")
    if "rate_distortion.png" in plots:
        out += ["![rate and distortion](rate_distortion.png)", ""]
    for stream in tokenizers:
        if f"reconstructions-{stream}.png" in plots:
            out += [f"**{stream} reconstructions** (top: test images; bottom: decoded from their codes)", "",
                    f"![{stream} reconstructions](reconstructions-{stream}.png)", ""]
    return out


def _image_samples_section(runs: dict, order: list[str], plots: set[str]) -> list[str]:
    lines = []
    for r in order:
        if f"samples-{r}.png" in plots:
            lines += [f"### {r} ({_num(runs[r].get('bits_per_dim'))} bits/dim)", "", f"![samples of {r}](samples-{r}.png)",
                      ""]
    return ["## Samples", "", *lines] if lines else []


def _headline(family: str, compute: dict) -> str:
    if not compute or "error" in compute:
        return f"**Fit ({family}):** not possible — {compute.get('error', 'no compute fit')}.  "
    ci = compute.get("ci", {}).get("alpha")
    interval = f" (α interval [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else ""
    line = f"**Fit ({family}):** L(C) = {compute['E']:.3f} + {compute['A']:.3g}·C^−{compute['alpha']:.3f}{interval}"
    bt = compute.get("backtest")
    if bt:
        line += f"; backtest on the largest run: {bt['mean_abs_rel_error']:.2%} error"
    preds = compute.get("predictions") or []
    if preds:
        p = preds[-1]
        line += f"; predicted loss at {p['compute']:.2e} FLOPs: {p['loss']:.3f} [{p['low']:.3f}, {p['high']:.3f}]"
    return line + ".  "


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
    lines += [f"> warning: {w}\n" for w in fit.get("warnings", [])]
    return lines


def _backtest_section(fit: dict, plot: str, plots: set[str]) -> list[str]:
    bt = fit.get("backtest")
    if not bt:
        return []
    lines = ["### Backtest", "", "The fit repeated without the largest-compute run(s), which it then predicts: how "
             "far its extrapolation can be trusted.", "",
             "| held-out run compute | actual loss | predicted | abs. relative error |", "|--:|--:|--:|--:|"]
    for x, actual, predicted, err in zip(bt["x"], bt["actual"], bt["predicted"], bt["abs_rel_error"]):
        lines.append(f"| {x:.3e} | {actual:.4f} | {predicted:.4f} | {err:.2%} |")
    lines.append("")
    if plot in plots:
        lines += [f"![backtest]({plot})", ""]
    return lines


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
                   f"{_count(first.get('n_opt'))} | {_count(first.get('d_opt'))} | {_num(first.get('tokens_per_param'))} | "
                   f"{_num(first.get('loss'))} |")
    out.append("")
    for name, alt in ((f"isoflops-{family}.png", "isoFLOP curves"), (f"optimal-{family}.png", "N* and D*")):
        if name in plots:
            out += [f"![{alt}]({name})", ""]
    return out


def _predictions_section(fit: dict, largest: float | None) -> list[str]:
    if not fit.get("predictions") or not largest:
        return []
    level = fit.get("ci_level", 0.9)
    lines = ["### Predictions", "", f"| compute | × largest run | predicted loss | {level:.0%} bootstrap interval |",
             "|--:|--:|--:|--:|"]
    for p in fit["predictions"]:
        lines.append(f"| {p['compute']:.3e} | {p['compute'] / largest:,.0f}× | {p['loss']:.4f} | "
                     f"[{p['low']:.4f}, {p['high']:.4f}] |")
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


def _percent(x) -> str:
    return "—" if x is None else f"{x:.1%}"


def _count(x) -> str:
    return "—" if x is None or x != x else human(x)  # x != x: NaN
