"""`vmamba flops MODEL`: FLOPs and parameters of a model in the VMamba authors' convention.

Counts on the meta device (no arithmetic, instant even for VMamba-B) and prints a per-module
table, the totals by operator category and the parameter count; `--json` prints the whole
`FlopReport` as JSON instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from vmamba_ref.contract import BACKENDS, BackendUnavailableError
from vmamba_ref.model import MODELS
from vmamba_ref.tools.cli import int_at_least
from vmamba_ref.tools.flops import CATEGORIES, count_model_flops, format_table

_positive_int = int_at_least(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=sorted(MODELS), help="a named model of vmamba_ref.MODELS")
    parser.add_argument(
        "--resolution", type=_positive_int, default=224, help="input height and width (default 224)"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1,
        help="input batch (default 1, the convention)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="ref",
        help="backend the model is built with; the count is the same for every backend",
    )
    parser.add_argument(
        "--depth",
        type=_positive_int,
        default=4,
        help="module-path depth of the table (4 shows every block: layers.2.blocks.5)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of tables"
    )


def run(args: argparse.Namespace) -> int:
    try:
        report = count_model_flops(args.model, args.resolution, args.batch_size, args.backend)
    except BackendUnavailableError as err:
        print(f"vmamba flops: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(report.to_dict() | {"model": args.model, "backend": args.backend}, indent=2)
        )
        return 0
    shape = "x".join(str(s) for s in report.input_shape)
    print(f"{args.model} on a {shape} input; {report.convention}\n")
    print(format_table(report, args.depth))
    print("\nby operator:")
    for category in CATEGORIES:
        print(
            f"  {category:<10} {report.by_op[category]:>16,}  {report.by_op[category] / 1e9:.6f} G"
        )
    print(f"  {'total':<10} {report.total:>16,}  {report.gflops:.9f} G")
    print(f"\nparameters: {report.params:,}")
    print("cost nothing in this convention: " + ", ".join(report.free_ops))
    return 0
