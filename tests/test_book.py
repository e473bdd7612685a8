"""``make book``: every notebook becomes a page, and every link, anchor, figure and formula on it is there."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PNG = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Links, anchors' targets, images and script sources of one page."""

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.images, self.scripts = [], set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])


def _parsed(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def test_one_page_per_notebook_and_an_index_linking_them_in_order(book):
    pages = [nb.with_suffix(".html").name for nb in NOTEBOOKS]
    assert sorted(p.name for p in book.glob("*.html")) == sorted(["index.html", *pages])
    index = _parsed(book / "index.html")
    assert [link for link in index.links if link.endswith(".html")] == pages
    for i, name in enumerate(pages):
        links = _parsed(book / name).links
        assert "index.html" in links
        assert i == 0 or pages[i - 1] in links  # previous
        assert i + 1 == len(pages) or pages[i + 1] in links  # next


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_link_anchor_and_figure_resolves(book, notebook):
    page_path = book / notebook.with_suffix(".html").name
    page = _parsed(page_path)
    for link in page.links:
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        if link.startswith("#"):
            assert link[1:] in page.ids, f"{page_path.name}: no element with id {link[1:]!r}"
        else:
            assert (book / link.split("#")[0]).is_file(), f"{page_path.name}: broken link {link!r}"
    nb = nbformat.read(notebook, as_version=4)
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    embedded = [src for src in page.images if src.startswith("data:image/png;base64,")]
    assert len(embedded) >= figures, f"{page_path.name}: {figures} figures in the notebook, {len(embedded)} on the page"
    for src in page.images:
        if src.startswith("data:image/png;base64,"):
            data = base64.b64decode(src.split(",", 1)[1])
            assert data.startswith(PNG) and len(data) > 1000
        else:
            assert (book / src).is_file(), f"{page_path.name}: missing image {src!r}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_math_is_left_for_mathjax(book, notebook):
    nb = nbformat.read(notebook, as_version=4)
    if not any("$" in c.source for c in nb.cells if c.cell_type == "markdown"):
        pytest.skip("no math in this notebook")
    page = _parsed(book / notebook.with_suffix(".html").name)
    assert any("mathjax" in src.lower() for src in page.scripts)
    text = (book / notebook.with_suffix(".html").name).read_text(encoding="utf-8")
    assert "$" in text  # the TeX is there for MathJax to typeset


def _browser():
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no Chromium on this machine")
def test_a_chapter_renders_headless_with_its_figures(book):
    """Figures appear in the rendered DOM; the math too where MathJax could be fetched (it comes from a CDN)."""
    page = book / NOTEBOOKS[0].with_suffix(".html").name
    done = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "<img" in done.stdout and "data:image/png" in done.stdout
    if "MathJax" not in done.stdout:
        pytest.skip("MathJax could not be fetched (offline): figures checked, math not")
