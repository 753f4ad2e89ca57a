"""MkDocs hook: draw the pages' LaTeX as inline SVG when the site is built, so every formula looks
the same in every browser, with no JavaScript, no font on the reader's machine and no request to
any other host.

`pymdownx.arithmatex` (with `generic: true`) marks the math of a page, inline `$...$` as
`<span class="arithmatex">\\(...\\)</span>` and display `$$...$$` as
`<div class="arithmatex">\\[...\\]</div>`, and leaves code blocks alone. This hook replaces each
marked formula with the SVG that ziamath draws: every glyph, bar, fraction rule and stretched
bracket is a `<path>` taken from the STIX Two Math font that ziamath ships, so nothing depends on
the fonts the reader has installed. The SVG is sized in `em` and shifted down by its depth, so
inline math sits on the text's baseline and scales with it; it is filled with `currentColor`.
Its LaTeX is kept as the accessible label. A formula ziamath cannot parse, or one with a command
it does not know (which it would draw as literal text), fails the build, naming the page.
"""

from __future__ import annotations

import html
import re

import ziafont
import ziamath

INLINE = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.DOTALL)
DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.DOTALL)
UNKNOWN_COMMAND = re.compile(r"<m[io][^>]*>\s*(\\[A-Za-z]+)")
SIZE = 16.0  # drawing units per em: the SVG's numbers are divided by this to size it in em
VIEWBOX = re.compile(r'viewBox="(?P<x>[-\d.]+) (?P<y>[-\d.]+) (?P<w>[-\d.]+) (?P<h>[-\d.]+)"')

# Paths drawn inline in each SVG (SVG 1.1), not `<symbol>`s referenced by id: the ids would
# repeat across the formulas of one page.
ziafont.config.svg2 = False


def to_svg(latex: str, inline: bool, page: str) -> str:
    """One formula (HTML-escaped, as arithmatex writes it) as an `<svg>` element sized in em."""
    source = html.unescape(latex).strip()
    try:
        math = ziamath.Latex(source, size=SIZE, inline=inline, color="currentColor")
        unknown = UNKNOWN_COMMAND.search(math.mathmlstr())
        svg = math.svg()
    except Exception as error:  # ziamath raises several exception types for bad input
        raise ValueError(f"{page}: cannot draw the formula {source!r}: {error}") from error
    if unknown:
        raise ValueError(f"{page}: the formula {source!r} uses {unknown.group(1)}, which ziamath does not know")
    box = VIEWBOX.search(svg)
    y, w, h = (float(box.group(name)) for name in "ywh")
    depth = h + y  # the baseline is y = 0 of the drawing: this much of it lies below the baseline
    style = f"width:{w / SIZE:.3f}em;height:{h / SIZE:.3f}em;vertical-align:{-depth / SIZE:.3f}em"
    label = html.escape(source, quote=True)
    svg = re.sub(r'\swidth="[^"]*" height="[^"]*"', "", svg, count=1)
    return svg.replace("<svg ", f'<svg class="math" role="img" aria-label="{label}" style="{style}" ', 1)


def on_page_content(html_text: str, page, config, files) -> str:
    """Replace arithmatex's marked formulas by SVG (display ones in a centred, scrollable block)."""
    name = page.file.src_uri
    html_text = DISPLAY.sub(lambda m: f'<div class="math-display">{to_svg(m.group(1), False, name)}</div>', html_text)
    return INLINE.sub(lambda m: to_svg(m.group(1), True, name), html_text)
