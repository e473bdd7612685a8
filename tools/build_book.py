"""Build the course: one static HTML page per executed notebook, and an index (``make book``).

The notebooks are stored executed, and CI checks their outputs with nbval, so
the book renders exactly those outputs: nothing is executed here, and a build
takes seconds. nbconvert (a dependency of the notebooks already) does the
rendering — figures are embedded in each page as PNG data URIs, math is left
as TeX for MathJax to typeset in the browser — and this script adds what a
course needs around it: an index page with every chapter's title and
opening paragraph, and Index / previous / next links on every page.
nbconvert was chosen over a site generator (jupyter-book, Sphinx, MyST):
no second configuration tree to keep in step with the notebooks, no build
toolchain beyond the Python environment, the same HTML a reader gets from
``jupyter nbconvert``.

    python tools/build_book.py [--notebooks notebooks] [--out build/book]
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.filters import markdown2html_mistune

ROOT = Path(__file__).resolve().parent.parent


def chapter_info(nb) -> tuple[str, str]:
    """``(title, opening paragraph as markdown)``: a notebook's first heading and the prose paragraph after it."""
    title, paragraph = None, []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            text = line.strip()
            if title is None:
                if text.startswith("#"):
                    title = text.lstrip("#").strip()
            elif text and not paragraph and text.startswith(("#", "|", "```", "<", "$$", "-", "*", ">")):
                continue  # not prose: look further
            elif text:
                paragraph.append(text)
            elif paragraph:
                break
        if paragraph:
            break
    return title or "untitled", " ".join(paragraph)


def _nav(pages: list[str], i: int) -> str:
    links = ['<a href="index.html">Index</a>']
    if i > 0:
        links.append(f'<a href="{pages[i - 1]}" rel="prev">&larr; previous</a>')
    if i + 1 < len(pages):
        links.append(f'<a href="{pages[i + 1]}" rel="next">next &rarr;</a>')
    return ('<nav class="statlab-book" style="font-family: sans-serif; padding: 0.5em 1em; '
            'border-bottom: 1px solid #ccc">' + " &middot; ".join(links) + "</nav>")


def build(notebooks: Path, out: Path) -> list[Path]:
    """Write ``out/index.html`` and one page per ``notebooks/*.ipynb`` (sorted by name); return the pages written."""
    sources = sorted(notebooks.glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no notebooks in {notebooks}")
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    pages = [s.with_suffix(".html").name for s in sources]
    chapters, written = [], []
    for i, source in enumerate(sources):
        nb = nbformat.read(source, as_version=4)
        if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
            raise ValueError(f"{source.name} has no outputs: the book renders executed notebooks")
        title, opening = chapter_info(nb)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _nav(pages, i), body, count=1)
        page = out / pages[i]
        page.write_text(body, encoding="utf-8")
        written.append(page)
        chapters.append((pages[i], title, opening))
    items = "\n".join(f'<li><a href="{href}">{html.escape(title)}</a>{markdown2html_mistune(opening)}</li>'
                      for href, title, opening in chapters)
    index = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>statlab: the course</title></head>
<body style="font-family: sans-serif; max-width: 50em; margin: 2em auto">
<h1>statlab: the course</h1>
<p>Retraining-free structured pruning of transformers (STAT), one executed notebook per chapter.
Run them yourself from <code>notebooks/</code>; these pages show the outputs CI checks.</p>
<ol>
{items}
</ol>
</body></html>
"""
    (out / "index.html").write_text(index, encoding="utf-8")
    return [out / "index.html", *written]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book")
    args = parser.parse_args(argv)
    pages = build(args.notebooks, args.out)
    print(f"{len(pages)} pages in {args.out} (open {args.out / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
