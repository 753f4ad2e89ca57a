"""The documentation site: `mkdocs build --strict` passes, the built pages are self-contained
(math drawn as SVG paths, no resource from another host, figures drawn), and every runnable code block of
the pages runs.

A block fenced as ```python is runnable: the blocks of a page run in order in one namespace, in
a temporary working directory. A block fenced as ```py is shown but not run (code that needs a
checkpoint file or a GPU); ```text and ```bash are never run.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs need the docs extra: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.DOTALL | re.MULTILINE)
# A tag that makes the browser fetch something: scripts, styles, images, frames, media.
FETCHING_TAG = re.compile(r"<(script|link|img|iframe|source|video|audio|embed)\b[^>]*>", re.IGNORECASE)
EXTERNAL = re.compile(r"""(src|href|srcset)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


def runnable_blocks(page: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of a page."""
    text = (DOCS / page).read_text()
    blocks = []
    for match in FENCE.finditer(text):
        language = match.group("info").strip().split(" ")[0].strip("{}.")
        if language == "python":
            line = text.count("\n", 0, match.start()) + 2
            blocks.append((line, textwrap.dedent(match.group("code"))))
    return blocks


@pytest.fixture(autouse=True)
def nan_filled_kernel_buffers():
    """The docs' code runs as a reader runs it: without the suite's NaN-filled `empty` buffers
    (conftest.py), which are a kernel check and cannot fill tensors on the meta device that the
    tutorial builds models on."""
    yield


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, MPLBACKEND="Agg", NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_strict_build_draws_the_figures(site):
    figures = {"routes.png": "routes", "erf_initializations.png": "../erf",
               "digit_routes.png": "routes", "digit_cross_merge.png": "cross_merge", "vss_block.png": "ss2d_block",
               "route_dependence.png": "routes", "selectivity.png": "selective", "memory_length.png": "ssm",
               "kernel_tutorial_timings.png": "../kernel_tutorial"}
    for name, page in figures.items():
        assert (site / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        html = (site / "tutorial" / page / "index.html").read_text()
        assert f"figures/{name}" in html, (name, page)


def path_boxes(svg: str) -> list[tuple[float, float]]:
    """(width, height) of every path of an SVG drawn with straight lines only (M, L, Z)."""
    boxes = []
    for d in re.findall(r'<path d="([^"]*)"', svg):
        if re.fullmatch(r"[MLZ\d\s.\-]+", d):
            numbers = [float(v) for v in re.findall(r"-?[\d.]+", d)]
            xs, ys = numbers[0::2], numbers[1::2]
            boxes.append((max(xs) - min(xs), max(ys) - min(ys)))
    return boxes


def test_math_is_svg_paths_that_need_no_font(site):
    html = (site / "tutorial" / "ssm" / "index.html").read_text()
    svgs = re.findall(r'<svg class="math".*?</svg>', html, re.DOTALL)
    assert len(svgs) >= 20
    # Every glyph is a path: no text element, so nothing depends on the reader's fonts.
    assert not any("<text" in svg or "<use" in svg for svg in svgs)
    # The bar of \bar{A} is drawn: a flat straight-edged rectangle among the formula's paths.
    bars = [svg for svg in svgs if "\\bar{A}" in svg[: svg.index(">")]]
    assert bars
    for svg in bars:
        assert any(w > 3 * h > 0 for w, h in path_boxes(svg)), svg[:200]
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert 'class="arithmatex"' not in text, page
        assert "<math" not in text, page


def test_docstring_asterisks_are_not_emphasis(site):
    html = (site / "reference" / "operators" / "index.html").read_text()
    assert "k*d" in html  # shapes such as (b, k*d, l), not "(b, k<em>d, l); A (k</em>d, n)"
    assert not re.search(r"<em>d, ", html)


def test_pages_hold_no_control_characters():
    for page in PAGES:
        text = (DOCS / page).read_text()
        bad = [i for i, ch in enumerate(text) if ord(ch) < 32 and ch not in "\n\t"]
        assert not bad, f"docs/{page}: control character at line {text.count(chr(10), 0, bad[0]) + 1}"


def test_no_page_fetches_from_another_host(site):
    offenders = []
    for page in site.rglob("*.html"):
        for tag in FETCHING_TAG.finditer(page.read_text()):
            if EXTERNAL.search(tag.group(0)):
                offenders.append(f"{page.relative_to(site)}: {tag.group(0)[:120]}")
    for sheet in site.rglob("*.css"):
        offenders += [f"{sheet.relative_to(site)}: {u}" for u in re.findall(r"url\(\s*['\"]?(?:https?:)?//[^)]*\)", sheet.read_text())]
    assert not offenders, "\n".join(offenders)


def test_tutorial_code_comes_from_the_package_source(site):
    html = (site / "tutorial" / "ssm" / "index.html").read_text()
    assert "discretize_A" in html and "vmamba_ref/selective_scan.py" in html
    for page in site.rglob("*.html"):
        assert "{{ source(" not in page.read_text(), page


@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p)])
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": f"docs_{Path(page).stem}"}
    for line, code in runnable_blocks(page):
        try:
            exec(compile(code, f"docs/{page}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the code block at docs/{page}, line {line}, failed: {error!r}") from error


def test_every_tutorial_page_runs_code():
    # The tutorial teaches by running code: each of its pages holds at least one block.
    tutorial = [p for p in PAGES if p.startswith("tutorial/")]
    assert tutorial
    assert all(runnable_blocks(p) for p in tutorial), [p for p in tutorial if not runnable_blocks(p)]
