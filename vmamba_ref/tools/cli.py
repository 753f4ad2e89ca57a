"""The `vmamba` command. Each subcommand lives in its own module with `add_arguments(parser)` and
`run(args) -> exit code`; this file wires them up and holds the checks they share.

A user's mistake (a bad value, an output path that cannot be written, a backend or device that
is not there) is found before any work starts and reported on one line of stderr,
`vmamba <command>: <what is wrong>`, with exit code 2 and no traceback: argparse's own errors
included. Each subcommand raises `UsageError` for those; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import math
import os
import sys
from pathlib import Path

SUBCOMMANDS = {
    "demo": ("vmamba_ref.tools.demo", "train the mini VMamba on the digits images on the CPU"),
    "train": ("vmamba_ref.tools.train_cli", "train with DistributedDataParallel (run under torchrun), checkpoint and resume"),
    "flops": ("vmamba_ref.tools.flops_cli", "FLOPs (one multiply-add = one FLOP) and parameters, per module"),
    "bench": ("vmamba_ref.tools.bench_cli", "throughput in images/s for a backend, batch size, resolution and dtype"),
    "erf": ("vmamba_ref.tools.erf_cli", "draw a model's effective receptive field as a heatmap PNG"),
}


class UsageError(ValueError):
    """A bad argument, found before any work: `vmamba` prints it on one line and exits with 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`vmamba train: error: argument --epochs: ...`)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vmamba", description="VMamba: reference and fast kernels")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return its exit code (2 for a UsageError). argparse's own errors
    raise SystemExit(2) after their one line, as argparse does."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args)
    except UsageError as error:
        print(f"vmamba {args.command}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


# --- argument types (argparse reports their errors on one line) ----------------------------------


def int_at_least(minimum: int):
    """An argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def float_above(minimum: float, inclusive: bool = False):
    """An argparse type: a finite number > `minimum` (>= with `inclusive`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or (value < minimum if inclusive else value <= minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} {minimum}, got {text}")
        return value

    return parse


# --- checks before work --------------------------------------------------------------------------


def _writable_ancestor(flag: str, path: Path) -> None:
    """The nearest existing folder above `path` must be a folder this process may write in."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path}: {ancestor} is a file, so {path} cannot be created")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the folder {ancestor} is not writable")


def check_output_dir(flag: str, path: Path) -> None:
    """`path` is a folder to write into: an existing writable folder, or creatable."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag} {path}: expected a folder, but it is a file")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path}: the folder is not writable")
        return
    _writable_ancestor(flag, path)


def check_output_file(flag: str, path: Path, suffixes: tuple[str, ...] = ()) -> None:
    """`path` is a file to write: not a folder, its folder writable or creatable, and one of
    `suffixes` when given."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: expected a file name ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: expected a file, but it is a folder")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{flag} {path}: the file is not writable")
        return
    _writable_ancestor(flag, path)


def check_device(flag: str, text: str, allow_auto: bool = False) -> None:
    """`text` names a torch device that exists here (cpu, cuda, cuda:N), or "auto" if allowed."""
    import torch

    if allow_auto and text == "auto":
        return
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {text!r}: expected {'auto, ' if allow_auto else ''}cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"{flag} {text!r}: expected {'auto, ' if allow_auto else ''}cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {text!r}: CUDA is not available here; pass {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_backend(flag: str, name: str, allow_auto: bool = True) -> None:
    """`name` is a backend whose dependency is installed (or "auto")."""
    from vmamba_ref.contract import BACKENDS, BackendUnavailableError, get_ops

    if allow_auto and name == "auto":
        return
    if name not in BACKENDS:
        raise UsageError(f"{flag} {name!r}: backend must be one of {['auto', *BACKENDS] if allow_auto else list(BACKENDS)}")
    try:
        get_ops(name)
    except BackendUnavailableError as error:
        raise UsageError(f"{flag} {name!r}: {error}") from None


def check_installed(package: str, extra: str, purpose: str) -> None:
    """`package` is importable; else say which extra installs it."""
    if importlib.util.find_spec(package) is None:
        raise UsageError(f"{purpose} needs {package}: pip install 'vmamba[{extra}]'")


if __name__ == "__main__":  # `python -m vmamba_ref.tools.cli`: run the imported module's main, so
    from vmamba_ref.tools.cli import main as _main  # UsageError is one class, not a __main__ copy

    sys.exit(_main())
