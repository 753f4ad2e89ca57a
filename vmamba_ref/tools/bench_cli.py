"""`vmamba bench MODEL`: images per second for a backend, batch size, resolution and dtype.

Prints what it runs with (the backend, and why; torch's thread count; the allocator: nothing in
this process is tuned), then a table (median, slowest and fastest pass, overall mean) and, with
`--json PATH`, writes the report described in `vmamba_ref.tools.bench`. Without `--backend` it
measures the fastest backend installed for the device; an unavailable backend is refused with
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vmamba_ref.contract import BACKENDS, BackendUnavailableError, fastest_backend
from vmamba_ref.model import MODELS
from vmamba_ref.tools.bench import DTYPES, BenchConfig, format_result, run_benchmark
from vmamba_ref.tools.cli import check_device, check_output_file
from vmamba_ref.tools.cli import int_at_least as _int_at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchConfig(model="vmamba_mini")
    parser.add_argument("model", choices=sorted(MODELS), help="a named model of vmamba_ref.MODELS")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="scan backend (default: the fastest installed for --device); an unavailable one is refused",
    )
    parser.add_argument("--batch-size", type=_int_at_least(1), default=defaults.batch_size)
    parser.add_argument("--resolution", type=_int_at_least(1), default=defaults.resolution)
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default=defaults.dtype,
        help="float32 as is; bfloat16/float16 under torch.autocast (or cast: --cast)",
    )
    parser.add_argument(
        "--cast",
        action="store_true",
        help="inference with the model and images cast to --dtype instead of autocast: "
        "the faster bfloat16 path on a CPU",
    )
    parser.add_argument("--device", default=defaults.device, help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--warmup", type=_int_at_least(0), default=defaults.warmup, help="untimed passes first"
    )
    parser.add_argument(
        "--iters", type=_int_at_least(1), default=defaults.iters, help="timed passes"
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="time forward + cross-entropy + backward (optimizer step excluded)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the report as JSON here"
    )


def run(args: argparse.Namespace) -> int:
    check_device("--device", args.device)
    if args.cast and (args.train or args.dtype == "float32"):
        why = "drop --train (a training step runs under autocast)" if args.train else "pass --dtype bfloat16 or float16"
        print(f"vmamba bench: --cast casts the model for inference in a low-precision dtype: {why}", file=sys.stderr)
        return 2
    if args.json is not None:
        check_output_file("--json", args.json)
    backend = args.backend
    settings = [
        f"process: {torch.get_num_threads()} torch threads (torch's default unless "
        "OMP_NUM_THREADS is set), the default allocator; this command tunes nothing"
    ]
    if backend is None:
        backend = fastest_backend(args.device)
        settings.insert(0, f"backend: {backend} (the fastest installed for {args.device}; --backend to choose)")
    try:
        config = BenchConfig(
            model=args.model,
            backend=backend,
            batch_size=args.batch_size,
            resolution=args.resolution,
            dtype=args.dtype,
            device=args.device,
            warmup=args.warmup,
            iters=args.iters,
            train=args.train,
            seed=args.seed,
            cast=args.cast,
        )
    except ValueError as err:
        print(f"vmamba bench: {err}", file=sys.stderr)
        return 2
    try:
        result = run_benchmark(config, progress=sys.stderr.isatty())
    except BackendUnavailableError as err:
        print(f"vmamba bench: {err}", file=sys.stderr)
        return 2
    print("\n".join(settings))
    print(format_result(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0
