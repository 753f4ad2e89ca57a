"""MkDocs hook: draw the documentation's figures from the package's code at build time.

Each figure of `vmamba_ref.tools.figures.FIGURES` is written once per process into a temporary
folder and added to the site as `figures/<name>`, so pages link to `../figures/routes.png` and
nothing generated is ever committed. `mkdocs serve` keeps the figures of its first build.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mkdocs.structure.files import File

from vmamba_ref.tools.figures import FIGURES

_DRAWN: dict[str, Path] = {}
_FOLDER = tempfile.TemporaryDirectory(prefix="vmamba-docs-figures-")


def on_files(files, config):
    """Draw the figures (first build only) and add them to the site's files."""
    for name, draw in FIGURES.items():
        if name not in _DRAWN:
            _DRAWN[name] = draw(Path(_FOLDER.name) / name)
        files.append(File.generated(config, f"figures/{name}", abs_src_path=str(_DRAWN[name])))
    return files
