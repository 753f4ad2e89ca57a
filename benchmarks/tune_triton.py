"""Sweep the Triton scan's tile (channels x steps per program, warps per program) at VMamba-T's
stage-1 shape on one CUDA GPU, and print each tile's time relative to the default tile's.

    python benchmarks/tune_triton.py                       # all four launches, both dtypes
    python benchmarks/tune_triton.py --runs core_fwd core_bwd --dtypes float32

What the default tile (`vmamba_fast.triton.selective_scan.scan_blocks`) should be is a
measurement, not a guess: this script is how it was chosen. Two layouts are swept, the plain
selective scan (b, k*d, l) and the fused SS2D core, which reads the (b, d, h, w) grid in route
order and adds the four routes' outputs into one map. Times are medians of
`triton.testing.do_bench`; the ratio column is default time / tile time (above 1: faster).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, STATE = 128, 1
STAGES = {1: (96, 56), 2: (192, 28), 3: (384, 14), 4: (768, 7)}  # VMamba-T: (d per route, h = w)
ROUTES = 4


def tiles(state: int, backward: bool):
    """Candidate tiles: powers of two with 256 to 4096 elements of (channels x state x steps);
    for the backward, whose registers hold 4 values per thread (`bwd_warps`), up to 512, with
    warps that `bwd_warps` leaves as they are."""
    from vmamba_fast.triton.selective_scan import ScanBlocks

    sizes = itertools.product((32, 64, 128, 256), (1, 2, 4, 8, 16, 32), (2, 4, 8))
    for block_t, block_d, warps in sizes:
        size = block_d * block_t * state
        if backward and (size > 512 or warps < size // 128):
            continue
        if 256 <= size <= 4096 and size // (32 * warps) >= 1:
            yield ScanBlocks(block_d, block_t, warps)


def scan_case(dtype, device, stage: int = 1):
    """Inputs of the selective scan (b, k*d, l) and of the SS2D core (b, d, h, w) at a stage."""
    import torch

    d, side = STAGES[stage]
    b, n, l = BATCH, STATE, side * side
    g = torch.Generator(device).manual_seed(0)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, device=device, dtype=dt)

    A = -torch.rand(ROUTES * d, n, generator=g, device=device)  # (k*d, n)
    D, bias = rand(ROUTES * d, dt=torch.float32), rand(ROUTES * d, dt=torch.float32)  # (k*d,)
    scan = (rand(b, ROUTES * d, l), rand(b, ROUTES * d, l), A, rand(b, ROUTES, n, l),
            rand(b, ROUTES, n, l), D, bias)  # fmt: skip
    core = (rand(b, d, side, side), rand(b, ROUTES, d, side, side), A,
            rand(b, ROUTES, n, side, side), rand(b, ROUTES, n, side, side), D, bias)  # fmt: skip
    return scan, core


def launchers(dtype, stage: int) -> dict:
    """{name: run(blocks)} for the forward (and backward) of the scan and the SS2D core."""
    import torch

    # The package exports functions of the modules' names: import the modules themselves.
    sel = importlib.import_module("vmamba_fast.triton.selective_scan")
    core = importlib.import_module("vmamba_fast.triton.ss2d_core")

    scan_in, core_in = scan_case(dtype, "cuda", stage)
    runs = {
        "scan_fwd": lambda bl: sel.selective_scan_fwd(*scan_in, None, True, blocks=bl),
        "core_fwd": lambda bl: core.ss2d_core_fwd(*core_in, True, blocks=bl),
    }
    gy_scan = torch.randn_like(scan_in[0], dtype=torch.float32)  # (b, k*d, l)
    gy_core = torch.randn_like(core_in[0], dtype=torch.float32)  # (b, d, h, w)
    ckpts = {}  # the chunk-start states of each tile, made once

    def scan_bwd(bl):
        if ("scan", bl) not in ckpts:
            ckpts["scan", bl] = sel.selective_scan_fwd(
                *scan_in, None, True, store_checkpoints=True, blocks=bl
            )[2]
        return sel.selective_scan_bwd(
            gy_scan, None, *scan_in, None, True, ckpt=ckpts["scan", bl], blocks=bl
        )

    def core_bwd(bl):
        if ("core", bl) not in ckpts:
            ckpts["core", bl] = core.ss2d_core_fwd(
                *core_in, True, store_checkpoints=True, blocks=bl
            )[1]
        return core.ss2d_core_bwd(gy_core, *core_in, True, ckpt=ckpts["core", bl], blocks=bl)

    return runs | {"scan_bwd": scan_bwd, "core_bwd": core_bwd}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    runs = ("scan_fwd", "core_fwd", "scan_bwd", "core_bwd")
    parser.add_argument("--runs", nargs="+", choices=runs, default=runs, help="launches to sweep")
    dtypes = ("float32", "bfloat16")
    parser.add_argument("--dtypes", nargs="+", choices=dtypes, default=dtypes)
    parser.add_argument("--stages", nargs="+", type=int, choices=sorted(STAGES), default=[1])
    parser.add_argument("--top", type=int, default=8, help="tiles printed per launch")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch
    from triton.testing import do_bench

    sel = importlib.import_module("vmamba_fast.triton.selective_scan")
    if not torch.cuda.is_available():
        raise SystemExit("tune_triton.py needs a CUDA GPU")
    print(
        f"device: {torch.cuda.get_device_name()}; b={BATCH} n={STATE}, VMamba-T stages {STAGES}"
    )
    for stage, dtype in itertools.product(args.stages, args.dtypes):
        d, side = STAGES[stage]
        launches = launchers(getattr(torch, dtype), stage)
        for name in args.runs:
            run = launches[name]
            # The default the launcher would pick: forwards here store no checkpoints.
            default = sel.scan_blocks(
                d, STATE, side * side, name.startswith("core"), inference=name.endswith("fwd")
            )
            base = do_bench(lambda run=run, default=default: run(default))
            results = []
            for bl in tiles(STATE, name.endswith("bwd")):
                try:
                    results.append((do_bench(lambda run=run, bl=bl: run(bl)), bl))
                except Exception as err:  # noqa: BLE001 - a tile that does not compile is skipped
                    print(f"  {bl}: {type(err).__name__}: {str(err)[:80]}")
            results.sort(key=lambda r: r[0])
            print(f"\nstage {stage}, {name}, {dtype}: default {default} {base:.3f} ms")
            for ms, bl in results[: args.top]:
                print(
                    f"  block_d={bl.block_d:3d} block_t={bl.block_t:4d} warps={bl.num_warps}"
                    f"  {ms:8.3f} ms  default/tile = {base / ms:5.2f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
