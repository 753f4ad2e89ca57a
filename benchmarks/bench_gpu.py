"""GPU benchmark of backend="triton": the scan against its baselines, its bandwidth roofline, and
VMamba-T end-to-end inference throughput.

    python benchmarks/bench_gpu.py                  # on one CUDA GPU, the full run
    python benchmarks/bench_gpu.py --quick          # fewer repetitions, smaller batch
    python benchmarks/bench_gpu.py --interpret      # tiny shapes on the CPU through Triton's
                                                    # interpreter: checks the script, not speed

Everything is measured in one run on one device and reported as ratios, since absolute times
move between runs and machines:

1. Memory bandwidth of the device, from a large device-to-device copy (2 bytes moved per byte
   copied).
2. The selective scan at VMamba-T's stage-1 shape (k*d = 384 channels, l = 56*56, n = 1):
   Triton against the reference (`vmamba_ref.selective_scan`, a Python loop over l) and against
   a plain PyTorch baseline (a log-step parallel scan on materialized (b, k*d, n, l) tensors).
3. The scan's fraction of the bandwidth roofline: its minimum traffic (u, delta, B, C read once,
   y written once) divided by its time, over the measured bandwidth.
4. VMamba-T inference in images/s, batch 128 at 224x224, eval mode, float32 and bfloat16
   (autocast: matmuls and convolutions in bfloat16, norms in float32), 50 warm-up and 30 timed iterations as the paper
   measures. The paper reports 1,686 images/s on one A100; the target on one H100 is 2,500.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_A100_IMAGES_PER_S = 1686
H100_TARGET_IMAGES_PER_S = 2500
ROOFLINE_TARGET = 0.70


@dataclass(frozen=True)
class Shapes:
    """Sizes of one run: the scan at a VMamba-T stage and the end-to-end model input."""

    scan_batch: int
    routes: int  # k
    channels: int  # d per route
    side: int  # h = w of the feature map, l = side**2
    state: int  # n
    model: str  # constructor in vmamba_ref.model
    model_batch: int
    image: int  # input height = width
    warmup: int
    iters: int
    scan_iters: int
    ref_iters: int
    copy_bytes: int


FULL = Shapes(128, 4, 96, 56, 1, "vmamba_tiny", 128, 224, 50, 30, 20, 1, 2**30)
QUICK = Shapes(16, 4, 96, 56, 1, "vmamba_tiny", 32, 224, 5, 5, 5, 1, 2**28)
INTERPRET = Shapes(1, 4, 2, 4, 1, "vmamba_mini", 1, 16, 1, 1, 1, 1, 2**16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repetitions, smaller batches")
    mode.add_argument(
        "--interpret",
        action="store_true",
        help="tiny shapes on the CPU through Triton's interpreter (sets TRITON_INTERPRET=1)",
    )
    return parser.parse_args(argv)


def timer(device: str) -> Callable[[Callable[[], object], int, int], float]:
    """A function (fn, warmup, iters) -> median seconds per call, synchronizing on CUDA."""
    import torch

    def run(fn: Callable[[], object], warmup: int, iters: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if device == "cuda":
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

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


def bench_scan(shapes: Shapes, device: str, run, bandwidth: float) -> None:
    import torch

    import vmamba_fast
    from vmamba_ref.selective_scan import selective_scan as scan_ref

    scan_triton = vmamba_fast.get_ops("triton").selective_scan
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


def bench_model(shapes: Shapes, device: str, run, dtypes) -> bool:
    """Images/s of the model in eval mode for each dtype: float32, and bfloat16 under autocast
    (matmuls and convolutions in bfloat16, norms and the scan's output in float32). Returns
    False when the model fails to run in one of them, after saying why."""
    import torch

    from vmamba_ref import model as models

    model = getattr(models, shapes.model)(backend="triton").eval().to(device)
    x = torch.randn(shapes.model_batch, 3, shapes.image, shapes.image, device=device)
    ok = True
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

        def infer(model=model, x=x, autocast=autocast):
            with autocast:
                return model(x)

        try:
            with torch.inference_mode():
                seconds = run(infer, shapes.warmup, shapes.iters)
        except (RuntimeError, TypeError, ValueError) as err:
            print(f"\n{shapes.model}, {name}: FAILED, the model does not run: {err}")
            ok = False
            continue
        images_per_s = shapes.model_batch / seconds
        print(
            f"\n{shapes.model}, {name}, batch {shapes.model_batch} at {shapes.image}x{shapes.image}: "
            f"{images_per_s:,.0f} images/s ({shapes.warmup} warm-up, {shapes.iters} timed)"
        )
        if shapes.model == "vmamba_tiny":
            print(
                f"  {images_per_s / PAPER_A100_IMAGES_PER_S:.2f}x the paper's A100 figure "
                f"({PAPER_A100_IMAGES_PER_S:,}); {images_per_s / H100_TARGET_IMAGES_PER_S:.2f}x "
                f"the H100 target ({H100_TARGET_IMAGES_PER_S:,})"
            )
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--interpret: triton was imported before TRITON_INTERPRET=1 was set")
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    sys.path.insert(0, str(ROOT))
    import torch

    from vmamba_fast.triton.common import is_interpreted

    if args.interpret:
        device, shapes = "cpu", INTERPRET
        if not is_interpreted():
            raise SystemExit("--interpret: triton did not start in interpreter mode")
        print("Triton interpreter on the CPU: this checks that the benchmark runs; its numbers")
        print("say nothing about GPU performance.")
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "bench_gpu.py needs a CUDA GPU; pass --interpret to run tiny shapes on the CPU"
            )
        device, shapes = "cuda", QUICK if args.quick else FULL
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    run = timer(device)
    bandwidth = bench_bandwidth(shapes, device, run)
    print(
        f"measured bandwidth (device copy of {shapes.copy_bytes / 2**20:g} MiB): {bandwidth / 1e9:.1f} GB/s"
    )
    bench_scan(shapes, device, run, bandwidth)
    # The interpreter checks the model's float32 path; bfloat16 end to end is a GPU measurement.
    model_dtypes = (torch.float32,) if args.interpret else (torch.float32, torch.bfloat16)
    return 0 if bench_model(shapes, device, run, model_dtypes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
