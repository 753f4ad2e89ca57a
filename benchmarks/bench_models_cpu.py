"""Whole models on the CPU, side by side in one plain process: VMamba-T/S/B against torchvision's
ConvNeXt-T, Swin-T and ResNet-50.

    python benchmarks/bench_models_cpu.py            # the full table, under 10 minutes on 2 cores
    python benchmarks/bench_models_cpu.py --quick    # tiny inputs: checks the script runs
    python benchmarks/bench_models_cpu.py --bounds   # VMamba-T with its core, then its scan, skipped

What a user gets is measured: this process keeps the default allocator, torch's default thread
count and Numba's default threading layer; nothing is tuned, and the header says so. Every row
is timed in this one run, the rows of one configuration interleaved round-robin, so ratios
compare like with like on a machine whose speed drifts between runs. For the same reason each
bfloat16 table also times VMamba-T in float32 in its rounds, and prints the bfloat16 gain from
those interleaved calls, not from two tables minutes apart; in inference also the gain of the
other bfloat16 path, the model cast once (`model.to(torch.bfloat16)`), which skips autocast's
per-call cast of the weights.

One process's heap is shaped by every model it has run: after the peers' large temporaries,
glibc keeps more freed memory, and every model's page faults look smaller than in a script that
runs that model alone. So the last table runs each model in a fresh Python process of its own
(float32 inference, batch 1 and 8), the processes alternated over `--isolated-rounds` rounds:
images/s and first-touched memory as a user's one-model script gets them.

Columns:
- images/s: batch / median seconds per call (forward under `no_grad`, or a training step:
  forward, cross-entropy, backward, SGD step);
- vs VMamba-T: this row's images/s over VMamba-T's (numba backend) in the same configuration;
- faults/call, MB/call: minor page faults per call (`ru_minflt`) and the memory they first
  touch (4 KiB each): memory the allocator handed back to the OS and the next call zeroes again;
- floor: the fraction of the matrix-product floor, (2 * multiply-adds) / (measured matmul peak
  of this dtype) / time. 1.0 would be every cycle in matrix products at peak.

With `--bounds` the script times only VMamba-T beside two copies of it whose SS2D blocks skip
the core, then the whole scan (projections and core), and the peers: not models (their logits
mean nothing) but bounds, the speed a free core or a free scan would give. They say how much of
the gap to each peer the scan can close at all, in about a minute.

torchvision's models import beside the CPU torch build once its compiled-op registrations are
skipped (`cpu_torchvision.py`: convnext_tiny, swin_t and resnet50 need none of those ops). This is
done here, in a benchmark, never in the package. Without torchvision
(`pip install --no-deps torchvision==0.28.0`, the release paired with torch 2.13) the peers are
skipped with a note.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from cpu_torchvision import META_REGISTRATIONS, skip_torchvision_meta_registrations
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vmamba_ref import MODELS, available_backends
from vmamba_ref.contract import compute_dtype
from vmamba_ref.ss2d import SS2D
from vmamba_ref.tools.flops import count_model_flops

PAGE_MB = resource.getpagesize() / 1e6


@dataclass(frozen=True)
class Row:
    """One model, built and ready, with its multiply-adds per image."""

    name: str
    model: nn.Module
    macs_per_image: float


def torchvision_models() -> dict[str, Callable[[], nn.Module]]:
    """ConvNeXt-T, Swin-T and ResNet-50 from torchvision, or nothing if it is not installed."""
    if importlib.util.find_spec("torchvision") is None:
        print("torchvision is not installed: the peers are skipped (pip install --no-deps torchvision==0.28.0)")
        return {}
    if skip_torchvision_meta_registrations():
        print(f"this process: an empty {META_REGISTRATIONS} lets torchvision's models import (cpu_torchvision.py)")
    from torchvision.models import convnext_tiny, resnet50, swin_t

    return {"ConvNeXt-T": convnext_tiny, "Swin-T": swin_t, "ResNet-50": resnet50}


def peer_macs(model: nn.Module, size: int) -> float:
    """Multiply-adds per image of a torchvision model: torch's counter counts 2 FLOPs per one."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2


def matmul_peak(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matrix product of `dtype` on all threads, best of a few calls."""
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def make_call(model: nn.Module, batch: int, size: int, dtype: torch.dtype, train: bool) -> Callable[[], None]:
    """One call of the measured kind on a fixed random batch."""
    images = torch.randn(batch, 3, size, size)
    labels = torch.zeros(batch, dtype=torch.long)  # class 0 exists in every head
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4) if train else None

    def call() -> None:
        if train:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), autocast:
                model(images)

    return call


def make_low_precision_call(model: nn.Module, batch: int, size: int) -> Callable[[], None]:
    """One forward of a model whose parameters are already in a low-precision dtype (the other
    documented bfloat16 path, `model.to(torch.bfloat16)`), on images in that dtype, no autocast:
    no per-call cast of the weights."""
    images = torch.randn(batch, 3, size, size).to(next(model.parameters()).dtype)

    def call() -> None:
        with torch.no_grad():
            model(images)

    return call


SLOW_S = 3.0
"""A call slower than this many seconds in the first timed round is not timed again (the slow
training rows of VMamba-S/B on the torch backend), so that the whole table fits in about ten
minutes."""


def timed_call(call: Callable[[], None]) -> tuple[float, int]:
    """Seconds and minor page faults of one call."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    call()
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def measure(calls: dict[str, Callable[[], None]], rounds: int) -> dict[str, tuple[float, float]]:
    """Median seconds and minor page faults per call, the calls interleaved round-robin after one
    untimed warm-up call each (which compiles a compiled row); a call slower than SLOW_S in the
    first round is timed in that round only."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    faults: dict[str, list[int]] = {name: [] for name in calls}
    for round_ in range(rounds):
        for name, call in calls.items():
            if round_ > 0 and times[name][0] > SLOW_S:
                continue
            seconds, faulted = timed_call(call)
            times[name].append(seconds)
            faults[name].append(faulted)
    return {name: (statistics.median(times[name]), statistics.median(faults[name])) for name in calls}


def build_rows(quick: bool, size: int) -> list[Row]:
    """The models of the table: VMamba-T/S/B on every fast backend installed (T also on "ref"
    at batch 1), then the peers."""
    vmamba = {"VMamba-T": "vmamba_tiny", "VMamba-S": "vmamba_small", "VMamba-B": "vmamba_base"}
    if quick:
        vmamba = {"VMamba-mini": "vmamba_mini"}
    rows = []
    for label, key in vmamba.items():
        macs = count_model_flops(key, resolution=size).total  # one FLOP here = one multiply-add
        for backend in [b for b in available_backends() if b in ("numba", "torch")]:
            torch.manual_seed(0)
            rows.append(Row(f"{label} ({backend})", MODELS[key](backend=backend), macs))
    for label, build in torchvision_models().items():
        torch.manual_seed(0)
        model = build()
        rows.append(Row(label, model, peer_macs(model.eval(), size)))
    return rows


CATEGORIES = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm"),
    "convolutions (stem, depthwise, downsampling)": ("aten::mkldnn_convolution",),
    "SS2D cores": ("vmamba::ss2d_core_fwd",),
    "GELU and SiLU": ("aten::gelu", "aten::silu"),
    "LayerNorm": ("aten::native_layer_norm",),
    "copies (layouts, casts, bias fill)": ("aten::copy_",),
    "residual adds": ("aten::add",),
}
"""How `breakdown` groups the profiler's operators (self time; the rest is "other")."""


def breakdown(row: Row, batch: int, size: int) -> None:
    """Where one forward's time goes, by operator category: torch.profiler's self CPU time of
    one untimed-then-profiled call. Self times of threads overlap, so the shares are of their
    sum, not of the wall time."""
    images = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        row.model.eval()(images)
        with torch.profiler.profile() as profile:
            row.model(images)
    spent = {name: 0.0 for name in [*CATEGORIES, "other"]}
    for event in profile.key_averages():
        name = next((c for c, keys in CATEGORIES.items() if event.key in keys), "other")
        spent[name] += event.self_cpu_time_total / 1e3  # ms
    total = sum(spent.values())
    print(f"\n## Where {row.name}'s forward spends its time (batch {batch}, float32, profiler self time)\n")
    print("| operators | ms | share |")
    print("|---|---|---|")
    for name, ms in spent.items():
        print(f"| {name} | {ms:.0f} | {ms / total:.0%} |")


def compiled_row(row: Row) -> Row:
    """`row`'s model under torch.compile (inductor, default settings), for the float32 inference
    tables: its first call per batch size compiles, in the untimed warm-up."""
    return Row(f"{row.name}, compiled", torch.compile(row.model), row.macs_per_image)


SKIPPED = {
    "core": "SS2D core skipped",
    "scan": "whole scan skipped",
}
"""What `without` skips, and how its rows are labelled: "core", the fused cross-scan, recurrence
and cross-merge (`ss2d_core`); "scan", the projections x_proj and dt_proj as well
(`SS2D.scan`)."""


def _skipped(x: torch.Tensor, *args: object) -> torch.Tensor:
    """What a skipped core or scan returns: x itself in the scan's output dtype, (b, d, h, w),
    stored as x is. No work, so the layers after it run on a map of the usual shape, dtype and
    layout."""
    return x.to(compute_dtype(x.dtype))  # (b, d, h, w)


def without(model: nn.Module, part: str) -> nn.Module:
    """A copy of `model` whose SS2D blocks skip `part` of their scan (`SKIPPED`). Not a model: its
    logits mean nothing. It is a bound: the images/s the model would reach if that part cost
    nothing, every other layer unchanged."""
    if part not in SKIPPED:
        raise ValueError(f"without: part must be one of {list(SKIPPED)}, got {part!r}")
    bound = copy.deepcopy(model)
    for module in bound.modules():
        if isinstance(module, SS2D):
            if part == "core":
                module.ops = dataclasses.replace(module.ops, ss2d_core=_skipped)
            else:
                module.scan = _skipped  # an instance attribute shadows the method
    return bound


def bounds_table(rows: list[Row], batches: tuple[int, ...], size: int, rounds: int) -> None:
    """VMamba-T (the first row) against itself with its core or its whole scan skipped
    (`without`) and the peers, float32 inference, all interleaved: how fast a free scan would
    make it, so how much of the gap to each peer the scan can close at all."""
    vmamba, peers = rows[0], [row for row in rows if not row.name.startswith("VMamba")]
    columns = [vmamba.name] + [row.name for row in peers]
    for batch in batches:
        models = {vmamba.name: vmamba.model.eval()}
        for part, label in SKIPPED.items():
            models[f"{vmamba.name}, {label} (a bound)"] = without(vmamba.model, part).eval()
        models.update({row.name: row.model.eval() for row in peers})
        results = measure({name: make_call(m, batch, size, torch.float32, False) for name, m in models.items()}, rounds)
        print(f"\n## What a free scan would give: inference, float32, batch {batch} at {size}x{size}\n")
        print("| model | images/s | vs " + " | vs ".join(columns) + " |")
        print("|---|---|" + "---|" * len(columns))
        for name in models:
            rate = batch / results[name][0]
            ratios = [results[other][0] / results[name][0] for other in columns]  # images/s over other's
            print(f"| {name} | {rate:.2f} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


ISOLATED_WARMUP = 3
"""Untimed calls of a model's own process before it times: the first calls load Numba's cached
kernels and grow the heap to its steady size."""


def isolated_models(quick: bool) -> dict[str, Callable[[], nn.Module]]:
    """What the isolated table builds, one model per process: VMamba-T on the first fast
    backend (VMamba-mini with --quick) and the peers."""
    fast = [b for b in available_backends() if b in ("numba", "torch")][0]
    key, label = ("vmamba_mini", "VMamba-mini") if quick else ("vmamba_tiny", "VMamba-T")
    return {f"{label} ({fast})": lambda: MODELS[key](backend=fast), **torchvision_models()}


def isolated_worker(name: str, batch: int, size: int, calls: int, quick: bool) -> None:
    """The body of one isolated process: build `name` alone, warm it up, time `calls` float32
    forwards, print their seconds and page faults as one JSON line."""
    torch.manual_seed(0)
    model = isolated_models(quick)[name]().eval()
    call = make_call(model, batch, size, torch.float32, train=False)
    for _ in range(ISOLATED_WARMUP):
        call()
    seconds, faults = [], []
    for _ in range(calls):
        took, faulted = timed_call(call)
        seconds.append(took)
        faults.append(faulted)
    print(json.dumps({"seconds": seconds, "faults": faults}))


def isolated_table(names: list[str], batches: tuple[int, ...], size: int, rounds: int, quick: bool) -> None:
    """Each model in a fresh process of its own, one process at a time, the models alternated in
    every round; a row's figures are the medians over all its processes' timed calls."""
    print(f"\n## inference, float32, each model in a process of its own, at {size}x{size}\n")
    print(
        "A fresh Python process per model, batch size and round, which builds only that model, as "
        f"a user's script does; {rounds} round(s), the processes alternated.\n"
    )
    for batch in batches:
        calls = 2 if quick else max(4, 24 // batch)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        faults: dict[str, list[int]] = {name: [] for name in names}
        for _ in range(rounds):
            for name in names:
                command = [sys.executable, __file__, "--worker", name, "--batch", str(batch), "--size", str(size)]
                command += ["--calls", str(calls), *(["--quick"] if quick else [])]
                done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"the isolated process of {name} (batch {batch}) failed:\n{done.stderr[-2000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                seconds[name] += result["seconds"]
                faults[name] += result["faults"]
        reference = batch / statistics.median(seconds[names[0]])
        print(f"| model, batch {batch} | images/s | vs {names[0]} | faults/call | MB/call |")
        print("|---|---|---|---|---|")
        for name in names:
            rate, fault = batch / statistics.median(seconds[name]), statistics.median(faults[name])
            print(f"| {name} | {rate:.2f} | {rate / reference:.2f}x | {fault:.0f} | {fault * PAGE_MB:.0f} |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs and models: checks the script runs")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per row and configuration")
    parser.add_argument(
        "--breakdown", action="store_true", help="only profile VMamba-T's forward by operator category"
    )
    parser.add_argument(
        "--bounds", action="store_true",
        help="only time VMamba-T with its SS2D core, then its whole scan, skipped: bounds, not models",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile row (it compiles for about a minute per batch size)"
    )
    parser.add_argument(
        "--isolated-rounds", type=int, default=2,
        help="rounds of the table with each model in a process of its own (0 skips it)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one isolated process: the model's name
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        isolated_worker(args.worker, args.batch, args.size, args.calls, args.quick)
        return
    size, batches, rounds = (64, (2,), 1) if args.quick else (224, (1, 8), args.rounds)

    print("# Whole models on the CPU, one plain process")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads (torch's default), default "
        "allocator, nothing tuned: what a user's process gets"
    )
    peaks = {dtype: matmul_peak(dtype, 0.2 if args.quick else 1.0) for dtype in (torch.float32, torch.bfloat16)}
    print(", ".join(f"matmul peak {str(d).removeprefix('torch.')}: {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()))
    rows = build_rows(args.quick, size)
    if args.breakdown:
        breakdown(rows[0], batches[-1], size)
        return
    if args.bounds:
        bounds_table(rows, batches, size, max(rounds, 1 if args.quick else 10))
        return
    reference = rows[0].name  # VMamba-T on the first fast backend (numba when installed)
    compiled = compiled_row(rows[0]) if not args.no_compile else None
    for train in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            for batch in batches:
                kind = "training step" if train else "inference"
                print(f"\n## {kind}, {str(dtype).removeprefix('torch.')}, batch {batch} at {size}x{size}\n")
                for row in rows:
                    row.model.train(train)
                config_rows = list(rows)
                if compiled is not None and not train and dtype == torch.float32:
                    config_rows.insert(1, compiled)  # its warm-up call compiles (untimed)
                calls = {row.name: make_call(row.model, batch, size, dtype, train) for row in config_rows}
                same_in_float32 = f"{reference}, float32"
                as_model = f"{reference}, a {str(dtype).removeprefix('torch.')} model"
                if dtype != torch.float32:  # the float32 twin, timed in the same rounds as the rows
                    calls[same_in_float32] = make_call(rows[0].model, batch, size, torch.float32, train)
                    if not train:  # and in inference the model cast once, instead of autocast
                        low = copy.deepcopy(rows[0].model).to(dtype).eval()
                        calls[as_model] = make_low_precision_call(low, batch, size)
                results = measure(calls, rounds)
                ref_rate = batch / results[reference][0]
                passes = 3 if train else 1  # a training step is about three forwards of work
                print(f"| model | images/s | vs {reference} | faults/call | MB/call | floor |")
                print("|---|---|---|---|---|---|")
                for row in config_rows:
                    seconds, faults = results[row.name]
                    floor = passes * 2 * row.macs_per_image * batch / peaks[dtype] / seconds
                    print(
                        f"| {row.name} | {batch / seconds:.2f} | {batch / seconds / ref_rate:.2f}x | "
                        f"{faults:.0f} | {faults * PAGE_MB:.0f} | {floor:.2f} |"
                    )
                if same_in_float32 in results:
                    float32_s = results[same_in_float32][0]
                    print(
                        f"\n{reference} in {str(dtype).removeprefix('torch.')} over float32, "
                        f"the two interleaved in these rounds: {float32_s / results[reference][0]:.2f}x "
                        "(autocast)"
                    )
                if as_model in results:
                    print(
                        f"{reference} as {as_model.removeprefix(reference + ', ')} "
                        f"(model.to(torch.{str(dtype).removeprefix('torch.')}), images in that dtype) over "
                        f"float32, the same rounds: {float32_s / results[as_model][0]:.2f}x"
                    )
    if args.isolated_rounds > 0:
        del rows, compiled  # this process's models are done; the isolated ones build their own
        names = list(isolated_models(args.quick))
        isolated_table(names, batches, size, 1 if args.quick else args.isolated_rounds, args.quick)


if __name__ == "__main__":
    main()
