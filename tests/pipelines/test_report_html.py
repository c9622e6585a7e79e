"""report.html: report.md as one self-contained page, checked as written and as a real headless Chromium shows it."""

import base64
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from pipelines.errors import UserError
from pipelines.report_html import write_report_html
from pipelines.step_status import STATUS
from pipelines.study import STUDY_FILE
from tests.support.chromium import Chromium, chromium_or_skip
from tests.support.cli import ROOT, arscale, one_line_error

MARKDOWN = """\
# Scaling study: tiny_text_study

**Fit (transformer, L(C) = A·C^−α selected):** L(C) = 108·C^−0.119; lr*(N) = 0.006·N^+0.000 for run_a_b.

| run | FLOPs (`per_layer`) | status |
|---|--:|---|
| transformer-6.3k-s1† | 9.14e+10 | **diverged**: loss became nan |

Each step's folder (`<step>-<hash>`); the data: [runs.csv](runs.csv) and [fit.json](fit.json#families).

![loss vs tokens](learning_curves.png)

```python
if a < b and c > d: print("<b>not bold</b>")\x00
```
"""


def _png(path: Path) -> bytes:
    """A small real PNG with some structure (a gradient), so it decodes to something."""
    image = Image.new("RGB", (40, 30))
    image.putdata([(x * 6, y * 8, 128) for y in range(30) for x in range(40)])
    image.save(path)
    return path.read_bytes()


def _report_folder(folder: Path, markdown: str = MARKDOWN) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "report.md").write_text(markdown)
    for name in ("runs.csv", "fit.json"):
        (folder / name).write_text("{}\n")
    return folder


class _References(HTMLParser):
    """Everything a page could load or link: attributes that take URLs, and the tags that load things."""

    URL_ATTRIBUTES = {"src", "href", "srcset", "action", "data", "poster", "background", "formaction", "xlink:href"}

    def __init__(self):
        super().__init__()
        self.urls, self.tags, self.styles = [], [], []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        self.urls += [(tag, name, value) for name, value in attrs if name in self.URL_ATTRIBUTES]
        self.styles += [value for name, value in attrs if name == "style"]

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def _references(page: Path) -> _References:
    parser = _References()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _assert_self_contained(page: Path) -> dict[str, bytes]:
    """Fails unless `page` loads nothing but data: images and links only files beside it; returns the images."""
    found = _references(page)
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(found.tags)
    assert not any("url(" in s or "@import" in s for s in found.styles)
    images = {}
    for tag, name, value in found.urls:
        if tag == "img" and name == "src":
            assert value.startswith("data:image/png;base64,"), value[:80]
            images[value] = base64.b64decode(value.split(",", 1)[1])
        else:
            assert (tag, name) == ("a", "href"), (tag, name, value[:80])
            target = value.split("#")[0]
            assert target == "" or (":" not in target and not target.startswith("/") and ".." not in target
                                    and (page.parent / target).is_file()), value
    return images


def test_the_page_has_the_report_its_plot_inlined_and_other_files_linked(tmp_path):
    folder = _report_folder(tmp_path / "report")
    png = _png(folder / "learning_curves.png")
    page = write_report_html(folder)
    assert page == folder / "report.html"
    html = page.read_text(encoding="utf-8")
    assert list(_assert_self_contained(page).values()) == [png]  # the very bytes of the plot
    assert '<meta charset="utf-8">' in html and "<title>Scaling study: tiny_text_study</title>" in html
    # Markdown's own syntax is rendered, the report's math-like text and names are left as they are
    assert "<strong>Fit (transformer, L(C) = A·C^−α selected):</strong> L(C) = 108·C^−0.119; lr*(N) = 0.006·N^+0.000" \
           " for run_a_b." in html
    assert "<em>" not in html and "tiny_text_study" in html
    assert '<td style="text-align: right;">9.14e+10</td>' in html and "<code>per_layer</code>" in html
    assert "<td>transformer-6.3k-s1†</td>" in html and "<strong>diverged</strong>: loss became nan" in html
    assert '<a href="runs.csv">runs.csv</a>' in html and '<a href="fit.json#families">' in html
    # text that looks like HTML stays text; a control character from a model's sample becomes visible
    assert "<code>&lt;step&gt;-&lt;hash&gt;</code>" in html
    assert ('<pre><code class="language-python">if a &lt; b and c &gt; d: '
            'print(&quot;&lt;b&gt;not bold&lt;/b&gt;&quot;)␀') in html
    assert "learning_curves.png" not in html


@pytest.mark.parametrize("link, says", [
    ("gone.png", "which is not in"),  # a missing plot: the page would have a hole
    ("../outside.png", "outside its folder"),  # the page would not be self-contained once copied
    ("https://example.com/plot.png", "outside its folder"),
    ("runs.csv", "not an image file"),
])
def test_a_broken_image_link_fails_loudly_and_writes_no_page(tmp_path, link, says):
    """The decision: a report whose image cannot be inlined is an error naming the link, not a page with a hole."""
    _png(tmp_path / "outside.png")
    folder = _report_folder(tmp_path / "report", f"# Report\n\n![a plot]({link})\n")
    with pytest.raises(UserError, match=says) as error:
        write_report_html(folder)
    assert link in str(error.value)
    assert not (folder / "report.html").exists()


def test_the_module_rewrites_pages_of_existing_folders_and_refuses_a_folder_without_report(tmp_path):
    folder = _report_folder(tmp_path / "report")
    _png(folder / "learning_curves.png")
    command = [sys.executable, "-m", "pipelines.report_html"]
    done = subprocess.run([*command, folder], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folder / "report.html") and (folder / "report.html").is_file()
    one_line_error(subprocess.run([*command, tmp_path], capture_output=True, text=True, cwd=ROOT, timeout=60), 2,
                   "report.md not found")


def test_the_browser_check_sees_a_broken_page(tmp_path):
    """The checks below can fail: a missing image and a script error are both seen."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><p>text</p><img src="missing.png">'
                    '<script>console.error("boom"); undefined_function();</script></body></html>')
    with Chromium(chromium_or_skip(), tmp_path) as browser:
        tab = browser.open(page.as_uri())
        images = tab.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth])")
        errors = tab.console_errors()
    assert images == [[True, 0]]
    assert any("boom" in e for e in errors) and any("undefined_function" in e for e in errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors


def _colours(png: bytes) -> tuple[int, float]:
    """(distinct colours, fraction of pixels that are not white) of a screenshot."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    counts = image.getcolors(maxcolors=1 << 24)
    white = sum(n for n, colour in counts if colour == (255, 255, 255))
    return len(counts), 1 - white / (image.width * image.height)


@pytest.mark.slow
def test_the_study_report_renders_in_chromium(tiny_study, tmp_path, monkeypatch):
    """The report step's own page of a real study, opened in headless Chromium from a copy of the report folder."""
    study, _, _ = tiny_study
    folder = tmp_path / "report"
    shutil.copytree((study / "report").resolve(), folder)
    page = folder / "report.html"
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) >= 3 and page.is_file()
    # written by the report step, it is exactly what converting its report.md gives (up to nothing)
    written = page.read_bytes()
    assert write_report_html(folder).read_bytes() == written
    inlined = _assert_self_contained(page)
    assert set(inlined.values()) == {p.read_bytes() for p in pngs}  # every plot, each inlined

    with Chromium(chromium_or_skip(), tmp_path) as browser:
        tab = browser.open(page.as_uri())
        decoded = tab.evaluate("Promise.all([...document.images].map(i => i.decode().then(() => "
                               "[i.complete, i.naturalWidth, i.naturalHeight], e => String(e))))")
        errors = tab.console_errors()
        requested = tab.requested_urls()
        title = tab.evaluate("document.title")
        tables = tab.evaluate("document.querySelectorAll('table').length")
        screenshot = tab.screenshot()
        first = tab.evaluate("(() => { const r = document.images[0].getBoundingClientRect(); "
                             "return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()")
        plot = tab.screenshot(first)
    assert errors == []
    assert len(decoded) >= len(pngs) and all(d[0] is True and d[1] > 0 and d[2] > 0 for d in decoded), decoded
    assert all(url == page.as_uri() or url.startswith("data:image/png;base64,") for url in requested), requested
    assert title == "Scaling study: text-tiny" and tables >= 5
    colours, inked = _colours(screenshot)
    assert colours > 50 and inked > 0.02, (colours, inked)  # text, tables and rules, not a blank page
    colours, inked = _colours(plot)
    assert first["width"] > 100 and colours > 20 and inked > 0.02, (first, colours, inked)  # the plot is drawn

    # the page is logged to MLflow with the rest of the report, and `arscale report` names it
    status = json.loads((folder / STATUS).read_text())
    assert "report.html" in status["files"]  # in the step's success record
    monkeypatch.chdir(study)  # artifact locations are relative to the study folder, as `mlflow ui` there reads them
    client = MlflowClient(f"sqlite:///{study}/mlflow.db")
    assert "report/report.html" in {a.path for a in client.list_artifacts(status["mlflow_run_id"], "report")}
    shown = arscale("report", study)
    assert shown.returncode == 0, shown.stderr
    markdown = study / json.loads((study / STUDY_FILE).read_text())["report"]
    assert shown.stdout.splitlines()[:2] == [str(markdown), str(markdown.with_name("report.html"))]
