"""MkDocs hook: show code from the package source, never a pasted copy.

A line of a page that reads

    {{ source("vmamba_ref.selective_scan.discretize_A") }}

becomes a Python code block holding the current source of that object (function, class, method
or module), titled with its file and first line. The object is imported by its dotted path; a
path that does not resolve fails the build, naming the page.
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from pathlib import Path

DIRECTIVE = re.compile(r'^(?P<indent>[ \t]*)\{\{ source\("(?P<path>[\w.]+)"\) \}\}[ \t]*$', re.MULTILINE)


def resolve(path: str):
    """The object named by a dotted path: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(f"no importable module at the start of {path!r}")


def source_block(path: str, root: Path, indent: str) -> str:
    """A fenced code block with the source of `path`, titled 'file, line N'."""
    obj = inspect.unwrap(resolve(path))  # the function under functools.lru_cache and the like
    lines, start = inspect.getsourcelines(obj)
    file = Path(inspect.getsourcefile(obj)).resolve()
    try:
        shown = file.relative_to(root).as_posix()
    except ValueError:
        shown = file.name
    code = textwrap.dedent("".join(lines)).rstrip("\n")
    body = [f'```python title="{shown}, line {max(start, 1)}"', *code.splitlines(), "```"]
    return "\n".join(indent + line if line else line for line in body)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Expand every `{{ source("...") }}` line of the page."""
    root = Path(config.config_file_path).resolve().parent

    def expand(match: re.Match) -> str:
        try:
            return source_block(match.group("path"), root, match.group("indent"))
        except (ImportError, AttributeError, OSError, TypeError) as error:
            raise ValueError(f"{page.file.src_uri}: cannot show the source of {match.group('path')!r}: {error}") from error

    return DIRECTIVE.sub(expand, markdown)
