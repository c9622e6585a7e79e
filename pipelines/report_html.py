"""report.html: a study's report.md as one self-contained web page, every plot inlined.

The Markdown that the report step renders is converted (Python-Markdown, with its `tables` and `fenced_code`
extensions) rather than rendered twice, so the page always says what report.md says. Images linked by relative
paths are embedded as data: URIs; links to other files (fit.json, runs.csv) stay relative, so the page also works
inside the copied report folder. No scripts, fonts or other resources are fetched.

Rewrite the page of an existing report folder: `python -m pipelines.report_html reports/text-default`.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

from pipelines.errors import UserError

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5; color: #1f2328;
       max-width: 1200px; margin: 0 auto; padding: 1.5em; }
h1, h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 90%;
        display: block; overflow-x: auto; max-width: 100%; }  /* wide tables scroll sideways */
th, td { border: 1px solid #d0d7de; padding: .25em .6em; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fafbfc; }
img { max-width: 100%; height: auto; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 3px; font-size: 90%; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; white-space: pre-wrap; }
pre code { background: none; padding: 0; }
blockquote { margin: 1em 0; padding: 0 1em; color: #59636e; border-left: .25em solid #d0d7de; }
"""

# C0 control characters (other than tab and newlines) appear in text sampled from weak models. Shown as their
# Unicode "control pictures" (␀, ␛, ...): visible, valid HTML, and clear of Python-Markdown's own \x02/\x03 markers.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def write_report_html(folder: Path, markdown_name: str = "report.md") -> Path:
    """Writes `report.html` beside `folder/markdown_name` and returns its path.

    Every image the Markdown links must be a file inside `folder`; a missing one (or one linked by URL or from
    outside the folder) is a UserError naming it, so a broken report is never published as a page with holes."""
    folder = Path(folder)
    source = folder / markdown_name
    if not source.is_file():
        raise UserError(f"{source} not found: give a report folder (one with {markdown_name})")
    text = source.read_text(encoding="utf-8", errors="replace")
    text = _CONTROLS.sub(lambda m: chr(0x2400 + ord(m.group())), text)
    converter = markdown.Markdown(extensions=["tables", "fenced_code", _InlineImages(folder, source)],
                                 output_format="html")
    body = converter.convert(text)
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), source.stem)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
    out = folder / (Path(markdown_name).stem + ".html")
    out.write_text(page, encoding="utf-8")
    return out


def _data_uri(folder: Path, link: str, source: Path) -> str:
    """The image at relative `link` inside `folder` as a data: URI."""
    parts = urlsplit(link)
    path = (folder / unquote(parts.path)).resolve()
    if parts.scheme or parts.netloc or link.startswith("/") or not path.is_relative_to(folder.resolve()):
        raise UserError(f"{source} links the image {link!r} outside its folder; a report's images must sit beside it")
    if not path.is_file():
        raise UserError(f"{source} links the image {link!r}, which is not in {folder}: re-run the report step "
                        "(or put the image back)")
    kind = mimetypes.guess_type(path.name)[0]
    if not kind or not kind.startswith("image/"):
        raise UserError(f"{source} links {link!r} as an image, but it is not an image file (.png, .jpg, .svg, ...)")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


class _ImagesToDataUris(Treeprocessor):
    def __init__(self, md, folder: Path, source: Path):
        super().__init__(md)
        self.folder, self.source = folder, source

    def run(self, root) -> None:
        for img in root.iter("img"):
            img.set("src", _data_uri(self.folder, img.get("src", ""), self.source))


class _InlineImages(Extension):
    """Rewrites every <img> of the converted Markdown to a data: URI (after Python-Markdown made the tags)."""

    def __init__(self, folder: Path, source: Path):
        super().__init__()
        self.folder, self.source = folder, source

    def extendMarkdown(self, md) -> None:  # noqa: N802 (Python-Markdown's name)
        # priority -1: after Python-Markdown's last step (unescape, 0), when every src is final
        md.treeprocessors.register(_ImagesToDataUris(md, self.folder, self.source), "inline_images", -1)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m pipelines.report_html REPORT_FOLDER [REPORT_FOLDER ...]")
    try:
        for arg in sys.argv[1:]:
            print(write_report_html(Path(arg)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
