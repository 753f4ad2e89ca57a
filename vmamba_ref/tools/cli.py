"""The `vmamba` command. Each subcommand lives in its own module with `add_arguments(parser)` and
`run(args) -> exit code`; this file only wires them up."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = {
    "demo": ("vmamba_ref.tools.demo", "train the mini VMamba on the digits images on the CPU"),
    "train": ("vmamba_ref.tools.train_cli", "train with DistributedDataParallel (run under torchrun), checkpoint and resume"),
    "flops": ("vmamba_ref.tools.flops_cli", "FLOPs (one multiply-add = one FLOP) and parameters, per module"),
    "bench": ("vmamba_ref.tools.bench_cli", "throughput in images/s for a backend, batch size, resolution and dtype"),
    "erf": ("vmamba_ref.tools.erf_cli", "draw a model's effective receptive field as a heatmap PNG"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmamba", description="VMamba: reference and fast kernels")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args)


if __name__ == "__main__":
    sys.exit(main())
