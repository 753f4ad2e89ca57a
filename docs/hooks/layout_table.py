"""MkDocs hook: a page line that reads `{{ layout_table() }}` becomes the table of layers,
modules and arrows that `vmamba_ref.tools.layout` reads from the source's imports, so the
"Where things are" page cannot drift from the code."""

from __future__ import annotations

from vmamba_ref.tools.layout import layout_table

DIRECTIVE = "{{ layout_table() }}"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the directive with the current table."""
    return markdown.replace(DIRECTIVE, layout_table()) if DIRECTIVE in markdown else markdown
