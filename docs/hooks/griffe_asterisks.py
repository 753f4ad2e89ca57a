"""Griffe extension (mkdocstrings' `extensions` option): an asterisk in a docstring is a
multiplication, never Markdown emphasis.

The docstrings write shapes and formulas as plain text, `(b, k*d, l)` or `9*b*l*(k*d)*n`, which
Markdown would turn into italics between two asterisks. Before mkdocstrings renders a docstring,
every `*` outside a code span, a fenced block or an indented code block becomes `\\*`, which
Markdown shows as a plain asterisk. A `* ` that starts a list item is kept.
"""

from __future__ import annotations

import re

import griffe

CODE_SPAN = re.compile(r"(`+).*?\1")
FENCE = re.compile(r"^\s*(```|~~~)")
LIST_ITEM = re.compile(r"^(\s*)\* ")


def escape_line(line: str) -> str:
    """`*` -> `\\*` outside the line's code spans (a leading list marker is kept)."""
    item = LIST_ITEM.match(line)
    head, line = (item.group(0), line[item.end():]) if item else ("", line)
    out, last = [], 0
    for span in CODE_SPAN.finditer(line):
        out += [re.sub(r"(?<!\\)\*", r"\\*", line[last:span.start()]), span.group(0)]
        last = span.end()
    out.append(re.sub(r"(?<!\\)\*", r"\\*", line[last:]))
    return head + "".join(out)


def escape_asterisks(text: str) -> str:
    """The docstring with its prose asterisks escaped. An indented code block is a run of lines
    indented by 4 or more spaces after a blank line (an indented line right after text continues
    that text, as the items of an `Args:` section do)."""
    lines = text.splitlines()
    fenced = indented = False
    previous_blank = True
    for i, line in enumerate(lines):
        blank = not line.strip()
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and not blank:
            is_indented = line.startswith("    ")
            indented = is_indented and (indented or previous_blank)
            if not indented:
                lines[i] = escape_line(line)
        previous_blank = blank
    return "\n".join(lines)


class PlainAsterisks(griffe.Extension):
    """Escape the prose asterisks of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape_asterisks(obj.docstring.value)
