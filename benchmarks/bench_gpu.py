"""The paper's throughput table, re-run on one GPU: VMamba-T/S/B through our Triton backend
against the official code with its compiled CUDA scan, the official code on our kernels, and
timm's ConvNeXt-T and Swin-T; plus the scan's fraction of the bandwidth roofline.

    python benchmarks/bench_gpu.py --official PATH --official-build DIR  # the full table
    python benchmarks/bench_gpu.py --quick      # VMamba-T only, batch 32, 5 + 5 iterations
    python benchmarks/bench_gpu.py --interpret  # tiny shapes on the CPU through Triton's
                                                # interpreter: checks the script, not speed
    python benchmarks/bench_gpu.py --dry-run --official PATH  # any machine: builds every
                                                # model on the CPU, compares parameter counts

`benchmarks/gpu_table.sh` builds the official kernels and runs this in one call. PATH is an
official VMamba checkout (MIT licence), imported from there at run time and never copied into
this project; DIR is the `--build-dir` of `build_official_kernels.py`.

Everything is measured in one run on one device, with the settings printed first:

1. Memory bandwidth of the device, from a large device-to-device copy (2 bytes moved per byte
   copied).
2. The selective scan at VMamba-T's stage-1 shape (k*d = 384 channels, l = 56*56, n = 1):
   Triton against the reference (`vmamba_ref.selective_scan`, a Python loop over l) and against
   a plain PyTorch baseline (a log-step parallel scan on materialized (b, k*d, n, l) tensors).
3. The scan's fraction of the bandwidth roofline: its minimum traffic (u, delta, B, C read once,
   y written once) divided by its time, over the measured bandwidth.
3b. Once the official kernels are built: the scan kernels alone against them, at the same
   shape and on the same inputs, through the binding both serve (`selective_scan_cuda_oflex`'s
   `fwd` and `bwd`; ours is `vmamba_fast.compat.OflexModule`, in this process under no module
   name): forward and backward times, float32 and bfloat16, and how far apart the outputs are.
4. The model table (`gpu_model_rows.py`, one process per implementation and size, so that the
   two variants of the official code never share `sys.modules`): batch 128 at 224x224, 50
   warm-up and 30 timed iterations as the paper measures, each iteration between two
   `torch.cuda.synchronize()` calls; inference and a training step (forward, cross-entropy,
   backward, AdamW step); float32 with TF32 off ("fp32"), float32 with TF32 on ("tf32"), and
   bfloat16 autocast with TF32 off ("bf16"). Columns: images/s (batch / median time), the ratio
   to the official implementation (compiled oflex scan) in the same row setting, and peak memory
   (`torch.cuda.max_memory_allocated`).

Rows run most-wanted first (VMamba-T in every setting, then S and B inference, then their
training steps); with `--budget-s`, a row that would end after the budget is skipped and says
so. With `--wait-for-build` the official kernels are still being built beside this run
(`gpu_table.sh`): each stage's official rows then run after the stage's other rows, once
`build_official_kernels.py` has written its `status.json`, and the settings say so. The paper
reports 1,686 images/s for VMamba-T on one A100; the target on one H100 or H200 is 2,500.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import gpu_model_rows as rows_mod
from build_official_kernels import STATUS_FILE
from gpu_model_rows import IMPLS, MODES, PRECISIONS, Row, Timing

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "gpu_model_rows.py"
PAPER_A100_IMAGES_PER_S = 1686
GPU_TARGET_IMAGES_PER_S = 2500  # on an H100 or H200
ROOFLINE_TARGET = 0.70
WATCHDOG_GRACE_S = 20  # a worker still running this long after the budget is killed
BUILD_POLL_S = 1.0  # how often --wait-for-build looks for the build's status file
IMPL_LABELS = {
    "official": "official, compiled oflex scan",
    "official+ours": "official code, our kernels (vmamba_fast.compat)",
    "ours": "ours, backend=triton",
    "timm": "timm",
}


@dataclass(frozen=True)
class Shapes:
    """Sizes of one run: the scan at a VMamba-T stage, the copy, and the model table."""

    scan_batch: int
    routes: int  # k
    channels: int  # d per route
    side: int  # h = w of the feature map, l = side**2
    state: int  # n
    scan_iters: int
    ref_iters: int
    copy_bytes: int
    timing: Timing  # of every model row
    sizes: tuple[str, ...]  # model sizes, most wanted first
    impls: tuple[str, ...]
    precisions: tuple[str, ...]
    modes: tuple[str, ...]  # of the first size; the others run each mode of these in turn


# scan: b, k, d, side, n, iterations (triton and torch, reference loop), copy bytes
FULL = Shapes(
    128, 4, 96, 56, 1, 20, 1, 2**30,
    timing=Timing(batch=128, image=224, warmup=50, iters=30),
    sizes=("tiny", "small", "base"), impls=IMPLS, precisions=tuple(PRECISIONS), modes=MODES,
)  # fmt: skip
QUICK = replace(
    FULL, scan_batch=16, scan_iters=5, copy_bytes=2**28,
    timing=Timing(batch=32, image=224, warmup=5, iters=5), sizes=("tiny",),
)  # fmt: skip
# The interpreter takes about 10 s per VMamba-mini forward on 2 cores, and 35 s per training
# step: it runs the inference row only (tests/test_bench_gpu.py runs the training step's code).
INTERPRET = Shapes(
    1, 4, 2, 4, 1, 1, 1, 2**16,
    timing=Timing(batch=1, image=16, warmup=0, iters=1),
    sizes=("mini",), impls=("ours",), precisions=("fp32",), modes=("inference",),
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One worker process: one implementation at one size, in the modes given."""

    impl: str
    size: str
    modes: tuple[str, ...]


def plan(shapes: Shapes, build_pending: bool = False) -> list[Job]:
    """Most wanted first, so that a run cut short by its time budget keeps them: the first size
    in every mode, then the other sizes' inference, then their training steps; within each, the
    implementations in `IMPLS` order (the official one first: every ratio is to it), or, while
    the official kernels are still being built (`build_pending`), the official one last."""
    first, rest = shapes.sizes[0], shapes.sizes[1:]
    stages = [(first, shapes.modes)]
    stages += [(size, (mode,)) for mode in shapes.modes for size in rest]
    impls = list(shapes.impls)
    if build_pending and "official" in impls:
        impls.remove("official")
        impls.append("official")
    return [
        Job(impl, size, modes)
        for size, modes in stages
        for impl in impls
        if rows_mod.planned_models(impl, size)
    ]


def wait_for_build(build_dir: Path, deadline: float | None, say: Callable[[str], None]) -> str:
    """Wait until `build_official_kernels.py` has written its status file in `build_dir` (or
    the deadline has passed); "" when the build succeeded, else the reason the official rows
    are skipped."""
    status_file = build_dir / STATUS_FILE
    start = time.time()
    if not status_file.exists():
        say(f"\nwaiting for the official build to write {status_file} ...")
    while not status_file.exists():
        if deadline is not None and time.time() > deadline:
            return "skipped: the official build had not ended within the time budget"
        time.sleep(BUILD_POLL_S)
    status = json.loads(status_file.read_text())
    waited = time.time() - start
    if not status["ok"]:
        say(f"official build failed: {status['reason']}")
        return f"skipped: the official build failed ({status['reason']})"
    say(f"official build: done in {status['seconds']:.0f} s (waited {waited:.0f} s here)")
    return ""


def names(value: str, known, flag: str) -> tuple[str, ...]:
    try:
        return tuple(rows_mod.split_names(value, known, flag))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="VMamba-T only, smaller batch, 5 + 5 iterations"
    )
    mode.add_argument(
        "--interpret",
        action="store_true",
        help="tiny shapes on the CPU through Triton's interpreter (sets TRITON_INTERPRET=1)",
    )
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU needed: print the settings and the plan, build every model on the CPU",
    )
    parser.add_argument("--official", type=Path, help="an official VMamba checkout (its root)")
    parser.add_argument(
        "--official-build", type=Path, help="the --build-dir of build_official_kernels.py"
    )
    parser.add_argument(
        "--wait-for-build",
        action="store_true",
        help="the official build is still running: run the official rows last in each stage, "
        "after its status.json appears in --official-build",
    )
    parser.add_argument("--sizes", type=lambda v: names(v, rows_mod.OUR_CONSTRUCTORS, "--sizes"))
    parser.add_argument("--impls", type=lambda v: names(v, IMPLS, "--impls"))
    parser.add_argument("--precisions", type=lambda v: names(v, PRECISIONS, "--precisions"))
    parser.add_argument("--modes", type=lambda v: names(v, MODES, "--modes"))
    parser.add_argument(
        "--budget-s",
        type=float,
        help="skip the rows that would end later than this after the start",
    )
    parser.add_argument("--table", type=Path, help="also write the table here (markdown)")
    parser.add_argument("--json", type=Path, help="also write every row here (JSON)")
    args = parser.parse_args(argv)
    if (
        args.official is not None
        and not (args.official / rows_mod.OFFICIAL_MODELS / "vmamba.py").is_file()
    ):
        parser.error(
            f"--official {args.official}: no {rows_mod.OFFICIAL_MODELS / 'vmamba.py'} there; pass "
            "the root of an official VMamba checkout"
        )
    if args.official_build is not None and not args.official_build.is_dir():
        parser.error(f"--official-build {args.official_build}: not a folder")
    if args.wait_for_build and args.official_build is None:
        parser.error("--wait-for-build needs --official-build, the folder the build writes to")
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    return args


def choose_shapes(args: argparse.Namespace) -> Shapes:
    shapes = INTERPRET if args.interpret else QUICK if args.quick else FULL
    overrides = {
        k: getattr(args, k) for k in ("sizes", "impls", "precisions", "modes") if getattr(args, k)
    }
    return replace(shapes, **overrides)


def timer(device: str) -> Callable[[Callable[[], object], int, int], float]:
    """A function (fn, warmup, iters) -> median seconds per call, each call between two
    synchronizes on CUDA (`gpu_model_rows.time_iterations`, without a deadline)."""

    def run(fn: Callable[[], object], warmup: int, iters: int) -> float:
        return statistics.median(rows_mod.time_iterations(fn, warmup, iters, device))

    return run


def parallel_scan_torch(u, delta, A, B, C, D, delta_bias):
    """Plain PyTorch selective scan: materialize dA and dBu (b, k*d, n, l), then a Hillis-Steele
    scan in log2(l) steps of whole-tensor ops, h_t = dA_t h_{t-1} + dBu_t. Float32."""
    import torch
    import torch.nn.functional as F

    b, kd, l = u.shape
    k = B.shape[1]
    u, delta, B, C = (t.float() for t in (u, delta, B, C))
    dt = F.softplus(delta + delta_bias[:, None])  # (b, k*d, l)
    Bx = B.repeat_interleave(kd // k, dim=1)  # (b, k*d, n, l)
    Cx = C.repeat_interleave(kd // k, dim=1)  # (b, k*d, n, l)
    a = torch.exp(dt[:, :, None, :] * A[None, :, :, None])  # (b, k*d, n, l)
    h = (dt * u)[:, :, None, :] * Bx  # (b, k*d, n, l)
    step = 1
    while step < l:  # after this pass, h_t holds the scan over (t - 2*step, t]
        h = torch.cat([h[..., :step], a[..., step:] * h[..., :-step] + h[..., step:]], dim=-1)
        a = torch.cat([a[..., :step], a[..., step:] * a[..., :-step]], dim=-1)
        step *= 2
    return torch.einsum("bcnl,bcnl->bcl", Cx, h) + D[:, None] * u  # (b, k*d, l)


def scan_inputs(shapes: Shapes, device: str, dtype):
    import torch

    b, k, d, l, n = shapes.scan_batch, shapes.routes, shapes.channels, shapes.side**2, shapes.state
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt)

    u, delta = rand(b, k * d, l), rand(b, k * d, l, scale=0.5)  # (b, k*d, l)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(k * d, 1).to(device)  # (k*d, n)
    B, C = rand(b, k, n, l), rand(b, k, n, l)  # (b, k, n, l)
    D, delta_bias = rand(k * d, dt=torch.float32), rand(k * d, scale=0.1, dt=torch.float32) - 4.0
    return u, delta, A, B, C, D, delta_bias


def bench_scan_against_official(shapes: Shapes, device: str, run, official, ours=None) -> list[str]:
    """Time the official compiled scan's `fwd` (with `out_float`, as the official model calls
    it) and `bwd` against ours through the same binding, on the same inputs, in float32 and
    bfloat16; print the times, the speed ratios and the largest differences. Returns the lines
    for the notes under the table. `ours` defaults to `vmamba_fast.compat`'s oflex module on
    the device's backend."""
    import torch

    from vmamba_fast.compat import OflexModule

    if ours is None:
        ours = OflexModule(rows_mod.OFFLEX, backend="triton" if device == "cuda" else None)
    return [
        scan_against_official(shapes, device, run, official, ours, dtype)
        for dtype in (torch.float32, torch.bfloat16)
    ]


def scan_against_official(shapes: Shapes, device: str, run, official, ours, dtype) -> str:
    """One dtype of `bench_scan_against_official`; its line for the notes."""
    import torch

    u, delta, A, B, C, D, delta_bias = scan_inputs(shapes, device, dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    dout = torch.randn(u.shape, generator=g).to(device)  # (b, k*d, l) float32, as out is
    weights = (A, B, C, D, delta_bias)

    def fwd(module):
        return module.fwd(u, delta, *weights, True, 1, True)  # [out, x]

    def bwd(module, x):
        return module.bwd(u, delta, *weights, dout, x, True, 1)  # [du, ddelta, dA, dB, dC, ...]

    times, results = {}, {}
    with torch.no_grad():
        for name, module in (("official", official), ("ours", ours)):
            out, x = fwd(module)
            results[name] = [out, *bwd(module, x)[:5]]  # out, du, ddelta, dA, dB, dC
            t_fwd = run(lambda m=module: fwd(m), 2, shapes.scan_iters)
            t_bwd = run(lambda m=module, x=x: bwd(m, x), 2, shapes.scan_iters)
            times[name] = (t_fwd, t_bwd)
    apart = ", ".join(
        f"{what} {float((a.float() - b.float()).abs().max() / b.float().abs().max()):.1e}"
        for what, a, b in zip(
            ("out", "du", "ddelta", "dA", "dB", "dC"), results["ours"], results["official"], strict=True
        )
    )
    (of, ob), (tf, tb) = times["official"], times["ours"]
    name = str(dtype).removeprefix("torch.")
    b, kd, l = u.shape
    print(f"\nscan kernels against the official compiled oflex, {name}, b={b} k*d={kd} l={l}")
    print(f"  forward   official {of * 1e3:8.3f} ms   ours {tf * 1e3:8.3f} ms   ours at {of / tf:.2f}x its speed")
    print(f"  backward  official {ob * 1e3:8.3f} ms   ours {tb * 1e3:8.3f} ms   ours at {ob / tb:.2f}x its speed")
    print(f"  max |ours - official| / max |official|: {apart}")
    return (
        f"scan kernels alone, {name}, at the shape above: ours at {of / tf:.2f}x the official "
        f"compiled kernel's speed forward, {ob / tb:.2f}x backward"
    )


def scan_bytes(u, B) -> int:
    """Minimum traffic of the forward scan: u, delta, B, C read once, y (float32) written once."""
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    return u.element_size() * (2 * b * kd * l + 2 * b * k * n * l) + 4 * b * kd * l


def bench_bandwidth(shapes: Shapes, device: str, run) -> float:
    import torch

    src = torch.empty(shapes.copy_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = run(lambda: dst.copy_(src), 3, 10)
    return 2 * src.numel() * 4 / seconds  # bytes per second, read + write


def bench_scan(shapes: Shapes, device: str, run, bandwidth: float) -> dict[str, float]:
    """Time the scan in float32 and bfloat16; returns dtype name -> fraction of the roofline."""
    import torch

    import vmamba_fast
    from vmamba_ref.selective_scan import selective_scan as scan_ref

    scan_triton = vmamba_fast.get_ops("triton").selective_scan
    fractions = {}
    for dtype in (torch.float32, torch.bfloat16):
        args = scan_inputs(shapes, device, dtype)
        u, B = args[0], args[3]
        with torch.inference_mode():
            t_triton = run(lambda a=args: scan_triton(*a), 2, shapes.scan_iters)
            t_torch = run(lambda a=args: parallel_scan_torch(*a), 1, shapes.scan_iters)
            t_ref = run(lambda a=args: scan_ref(*a), 0, shapes.ref_iters)
            y_triton, y_torch, y_ref = (
                scan_triton(*args),
                parallel_scan_torch(*args),
                scan_ref(*args),
            )
        agree = max(float((y - y_ref).abs().max()) for y in (y_triton, y_torch))
        roofline = scan_bytes(u, B) / t_triton / bandwidth
        name = str(dtype).removeprefix("torch.")
        b, kd, l = u.shape
        print(f"\nselective scan, {name}, b={b} k*d={kd} l={l} n={B.shape[2]}")
        print(f"  the three agree to {agree:.1e} (max abs difference from the reference)")
        print(f"  triton         {t_triton * 1e3:10.3f} ms")
        print(
            f"  plain pytorch  {t_torch * 1e3:10.3f} ms   time / triton's = {t_torch / t_triton:8.1f}"
        )
        print(
            f"  reference loop {t_ref * 1e3:10.3f} ms   time / triton's = {t_ref / t_triton:8.1f}"
        )
        print(
            f"  roofline: {scan_bytes(u, B) / 1e6:.1f} MB in {t_triton * 1e3:.3f} ms = "
            f"{scan_bytes(u, B) / t_triton / 1e9:.1f} GB/s, {roofline:.0%} of the measured "
            f"bandwidth (target {ROOFLINE_TARGET:.0%})"
        )
        fractions[name] = roofline
    return fractions


# ------------------------------------------------------------------------------------------------
# The model table
# ------------------------------------------------------------------------------------------------


def print_settings(args: argparse.Namespace, shapes: Shapes, device: str) -> list[str]:
    """Print, and return, the lines that say how the table was measured."""
    import torch
    import triton

    t = shapes.timing
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        where = f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"
    else:
        where = (
            "the CPU (Triton interpreter)" if args.interpret else "the CPU (dry run: nothing timed)"
        )
    lines = [
        f"device: {where}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {triton.__version__}, python {sys.version.split()[0]}",
        f"batch {t.batch} at {t.image}x{t.image}; {t.warmup} warm-up and {t.iters} timed "
        "iterations per row, each between two torch.cuda.synchronize(); images/s = batch / median",
        "precisions: fp32 = float32, TF32 off; tf32 = float32, TF32 on; bf16 = bfloat16 autocast, "
        "TF32 off (TF32 = torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32, "
        "set per row and read back into the JSON rows)",
        f"torch.backends.cudnn.benchmark = {torch.backends.cudnn.benchmark}; training step: "
        "cross-entropy on fixed random labels, AdamW (torch defaults), gradients set to None",
        f"official checkout: {args.official or 'not given'}; compiled oflex build: "
        f"{args.official_build or 'not given'}"
        + (
            " (built on the host's CPU while the rows before the official ones ran)"
            if args.wait_for_build
            else ""
        ),
    ]
    for line in lines:
        print(line)
    return lines


def worker_command(
    job: Job, args, shapes: Shapes, device: str, deadline: float | None
) -> list[str]:
    t = shapes.timing
    command = [
        sys.executable, str(WORKER), "--impl", job.impl, "--size", job.size,
        "--modes", ",".join(job.modes), "--precisions", ",".join(shapes.precisions),
        "--batch", str(t.batch), "--image", str(t.image), "--warmup", str(t.warmup),
        "--iters", str(t.iters), "--device", device,
    ]  # fmt: skip
    for flag, value in (("--official", args.official), ("--official-build", args.official_build)):
        if value is not None:
            command += [flag, str(value)]
    if deadline is not None:
        command += ["--deadline", repr(deadline)]
    if args.dry_run:
        command.append("--dry-run")
    return command


def run_job(
    job: Job, command: list[str], shapes: Shapes, deadline: float | None, say: Callable[[str], None]
) -> list[Row]:
    """Run one worker process, passing its output and a line per row to `say` (a status other
    than "ok" once per model); return its rows. A worker that exits with an error gets failed
    rows for those it did not report; one that outlives the budget by WATCHDOG_GRACE_S is
    stopped."""
    say(f"\n[{job.impl} / {job.size} / {','.join(job.modes)}]")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = None
    if deadline is not None:
        watchdog = threading.Timer(max(deadline - time.time(), 0) + WATCHDOG_GRACE_S, proc.kill)
        watchdog.start()
    got, repeats = [], 0
    for line in proc.stdout:
        row = rows_mod.parse_row(line)
        if row is None:
            say("  | " + line.rstrip())
        elif row.status != "ok" and any(
            (r.model, r.status) == (row.model, row.status) for r in got
        ):
            repeats += 1
        else:
            say("  " + describe(row))
        if row is not None:
            got.append(row)
    code = proc.wait()
    if watchdog is not None:
        watchdog.cancel()
    if repeats:
        say(f"  (and {repeats} more rows with one of the statuses above)")
    if code != 0:
        done = {(r.model, r.precision, r.mode) for r in got}
        status = f"failed: the worker exited with {code} (its output is above)"
        missing = expected_rows(job, shapes, status)
        got += [r for r in missing if (r.model, r.precision, r.mode) not in done]
        say(f"  {status}")
    return got


def run_jobs(
    jobs: list[Job],
    args,
    shapes: Shapes,
    device: str,
    deadline,
    before_official: Callable[[], None] = lambda: None,
) -> list[Row]:
    """Every job's rows, in plan order. A GPU run starts the workers one after another, and
    calls `before_official` once, before the first official job, when its build is there; a
    dry run, which times nothing, builds their models side by side and prints each job's output
    when it ends."""
    rows: list[Row] = []
    if not args.dry_run:
        build_skip = None  # "" once the build is there, else why the official rows are skipped
        for job in jobs:
            if job.impl == "official" and build_skip is None:
                build_skip = ""
                if args.wait_for_build:
                    build_skip = wait_for_build(
                        args.official_build, deadline, lambda line: print(line, flush=True)
                    )
                if not build_skip and args.official_build is not None:
                    before_official()
            if job.impl == "official" and build_skip:
                rows += expected_rows(job, shapes, build_skip)
                continue
            if deadline is not None and time.time() > deadline:
                rows += expected_rows(job, shapes, "skipped: the time budget is spent")
                continue
            command = worker_command(job, args, shapes, device, deadline)
            rows += run_job(job, command, shapes, deadline, lambda line: print(line, flush=True))
        return rows
    logs: list[list[str]] = [[] for _ in jobs]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = [
            pool.submit(
                run_job,
                job,
                worker_command(job, args, shapes, device, None),
                shapes,
                None,
                log.append,
            )
            for job, log in zip(jobs, logs, strict=True)
        ]
        for future, log in zip(futures, logs, strict=True):
            rows += future.result()
            print("\n".join(log), flush=True)
    return rows


def expected_rows(job: Job, shapes: Shapes, status: str) -> list[Row]:
    return [
        Row(job.impl, job.size, model, precision, mode, status)
        for model in rows_mod.planned_models(job.impl, job.size)
        for mode in job.modes
        for precision in shapes.precisions
    ]


def rate(images_per_s: float) -> str:
    """Images/s as the table prints it: whole numbers, or 3 digits below 10 (the interpreter)."""
    return f"{images_per_s:,.0f}" if images_per_s >= 10 else f"{images_per_s:.3g}"


def describe(row: Row) -> str:
    where = f"{row.model}, {row.precision}, {row.mode}"
    if row.status != "ok":
        params = "" if row.params is None else f" ({row.params:,} parameters)"
        return f"{where}: {row.status}{params}"
    peak = "" if row.peak_mib is None else f", peak {row.peak_mib:,.0f} MiB"
    return (
        f"{where}: {row.images_per_s:,.0f} images/s ({row.ms_per_iter:.2f} ms per iteration{peak})"
    )


def ratio_to_official(row: Row, rows: list[Row]) -> float | None:
    """images/s over the official implementation's (compiled oflex) in the same size, precision
    and mode; timm's peers compare with the official VMamba-T. None where either is missing."""
    size = "tiny" if row.impl == "timm" else row.size
    for ref in rows:
        if (ref.impl, ref.size, ref.precision, ref.mode) == (
            "official",
            size,
            row.precision,
            row.mode,
        ):
            if ref.status == "ok" and row.status == "ok":
                return row.images_per_s / ref.images_per_s
    return None


def table(rows: list[Row]) -> list[str]:
    """The markdown table, one line per row, in the order measured."""
    lines = [
        "| model | implementation | precision | mode | images/s | vs official | peak MiB | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = ratio_to_official(row, rows)
        lines.append(
            f"| {row.model} | {IMPL_LABELS[row.impl]} | {row.precision} | {row.mode} | "
            + (rate(row.images_per_s) if row.images_per_s else "")
            + " | "
            + (f"{ratio:.2f}x" if ratio is not None else "n/a")
            + " | "
            + (f"{row.peak_mib:,.0f}" if row.peak_mib is not None else "")
            + f" | {row.status} |"
        )
    return lines


def notes(rows: list[Row], fractions: dict[str, float]) -> list[str]:
    """The lines under the table: the project's GPU targets, measured or not."""
    out = []
    headline = ("ours", "tiny", "fp32", "inference", "ok")
    for row in rows:
        if (row.impl, row.size, row.precision, row.mode, row.status) == headline:
            paper, target = (
                row.images_per_s / PAPER_A100_IMAGES_PER_S,
                row.images_per_s / GPU_TARGET_IMAGES_PER_S,
            )
            out.append(
                f"VMamba-T (ours) float32 inference: {paper:.2f}x the paper's A100 figure "
                f"({PAPER_A100_IMAGES_PER_S:,}); {target:.2f}x the H100/H200 target "
                f"({GPU_TARGET_IMAGES_PER_S:,})"
            )
    for name, fraction in fractions.items():
        out.append(
            f"selective scan, {name}, at the shape above: {fraction:.0%} of the measured bandwidth "
            f"roofline (target {ROOFLINE_TARGET:.0%} in float32 at VMamba-T's stage 1)"
        )
    return out


def compare_parameters(rows: list[Row]) -> list[str]:
    """Dry run: print, per size, our parameter count beside the official models'; return a line
    for each size where they differ (the table would then compare different networks)."""
    differ = []
    for size in dict.fromkeys(r.size for r in rows):
        counts = {r.impl: r.params for r in rows if r.size == size and r.params is not None}
        ours = counts.pop("ours", None)
        official = {impl: n for impl, n in counts.items() if impl != "timm"}
        if ours is None or not official:
            continue
        line = f"{rows_mod.MODEL_NAMES[size]}: ours {ours:,} parameters, " + ", ".join(
            f"{impl} {n:,}" for impl, n in official.items()
        )
        same = set(official.values()) == {ours}
        print(line + (": equal" if same else ": DIFFER"))
        if not same:
            differ.append(line)
    return differ


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    deadline = None if args.budget_s is None else start + args.budget_s
    if args.interpret:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--interpret: triton was imported before TRITON_INTERPRET=1 was set")
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported, here and in the workers
    sys.path.insert(0, str(ROOT))
    import torch

    from vmamba_fast.triton.common import is_interpreted

    shapes = choose_shapes(args)
    if args.interpret or args.dry_run:
        device = "cpu"
        if args.interpret and not is_interpreted():
            raise SystemExit("--interpret: triton did not start in interpreter mode")
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "bench_gpu.py needs a CUDA GPU; pass --interpret to run tiny shapes on the CPU, or "
                "--dry-run to check the models and the plan"
            )
        device = "cuda"
    settings = print_settings(args, shapes, device)
    if args.interpret:
        print("Triton interpreter on the CPU: this checks that the benchmark runs; its numbers")
        print("say nothing about GPU performance.")
    jobs = plan(shapes, build_pending=args.wait_for_build)
    planned = sum(len(expected_rows(job, shapes, "")) for job in jobs)
    print(f"plan: {len(jobs)} worker processes, {planned} rows")
    fractions = {}
    if not args.dry_run:
        run = timer(device)
        bandwidth = bench_bandwidth(shapes, device, run)
        copied = shapes.copy_bytes / 2**20
        print(f"measured bandwidth (device copy of {copied:g} MiB): {bandwidth / 1e9:.1f} GB/s")
        fractions = bench_scan(shapes, device, run, bandwidth)
        if device == "cuda":
            torch.cuda.empty_cache()
    kernel_notes: list[str] = []

    def kernels_against_official() -> None:
        """The scan kernels against the official build (3b in the module docstring)."""
        if deadline is not None and time.time() > deadline:
            kernel_notes.append("scan kernels against the official ones: skipped (time budget)")
            return
        try:
            official = rows_mod.import_built_oflex(args.official_build)
            kernel_notes.extend(bench_scan_against_official(shapes, device, run, official))
        except Exception as err:  # the model rows still run; the notes say what happened
            traceback.print_exc()
            kernel_notes.append(f"scan kernels against the official ones: failed ({err!r:.200})")
        if device == "cuda":
            torch.cuda.empty_cache()

    rows = run_jobs(jobs, args, shapes, device, deadline, kernels_against_official)
    failed = [r for r in rows if r.status.startswith("failed")]
    if args.dry_run:
        print()
        failed += compare_parameters(rows)
        lines = [f"dry run: {len(rows)} rows planned, nothing timed"]
    else:
        lines = table(rows) + [""] + notes(rows, fractions) + kernel_notes
        print("\n" + "\n".join(lines))
    measured = sum(r.status == "ok" for r in rows)
    print(
        f"\n{len(rows)} rows, {measured} measured, {len(failed)} failed; {time.time() - start:.0f} s"
    )
    if args.table:
        args.table.write_text("\n".join(settings + [""] + lines) + "\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"settings": settings, "roofline": fractions, "rows": [asdict(r) for r in rows]},
                indent=1,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
