"""MkDocs hook: render the pages' LaTeX as MathML when the site is built, so formulas need no
JavaScript and no request to any other host.

`pymdownx.arithmatex` (with `generic: true`) marks the math of a page, inline `$...$` as
`<span class="arithmatex">\\(...\\)</span>` and display `$$...$$` as
`<div class="arithmatex">\\[...\\]</div>`, and leaves code blocks alone. This hook replaces each
marked formula with the MathML that latex2mathml produces; browsers render MathML natively. A
formula latex2mathml cannot convert fails the build, naming the page and the formula.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

INLINE = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.DOTALL)
DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.DOTALL)


def to_mathml(latex: str, display: str, page: str) -> str:
    """One formula (HTML-escaped, as arithmatex writes it) as a MathML element."""
    source = html.unescape(latex).strip()
    try:
        mathml = convert(source, display=display)
    except Exception as error:  # latex2mathml raises several exception types for bad input
        raise ValueError(f"{page}: cannot convert the formula {source!r} to MathML: {error}") from error
    # latex2mathml turns an alignment `&` into a symbol and `\\` into a line break that browsers
    # ignore, so `aligned` renders as one garbled line: write one display formula per line.
    if "<mi>&</mi>" in mathml or "<mi>&amp;</mi>" in mathml or 'linebreak="newline"' in mathml:
        raise ValueError(f"{page}: alignments (&, \\\\) do not render as MathML; split {source!r} into separate formulas")
    return mathml


def on_page_content(html_text: str, page, config, files) -> str:
    """Replace arithmatex's marked formulas by MathML (display ones in a centred block)."""
    name = page.file.src_uri
    html_text = DISPLAY.sub(
        lambda m: f'<div class="math-display">{to_mathml(m.group(1), "block", name)}</div>', html_text
    )
    return INLINE.sub(lambda m: to_mathml(m.group(1), "inline", name), html_text)
