"""VMamba-T on the CPU against the official implementation's CPU path, side by side in one process.

    python benchmarks/bench_official_cpu.py --official PATH   # PATH: a checkout of the official code

The official code has no CPU kernels: on a CPU it runs through its pure-PyTorch fallbacks, the
cross-scan and cross-merge of `csm_triton.py` (`force_torch`) and the selective scan of
`csms6s.py` (`backend="torch"`, a loop over time). This script builds the official VMamba-T
(`vmamba_tiny_s1l8`, forward type "v05_noz") with every SS2D set to that path, loads its
weights into ours (`vmamba_tiny(backend="numba")`, strict), checks that the two give the same
logits, then times both, calls interleaved, at batch 1 and 8 (float32, eval, `no_grad`,
224 x 224). It prints images/s and the ratio, ours over the official.

The official model file imports timm and einops, which must be installed (`pip install timm
einops`), and fvcore, for FLOP counting only: where fvcore is missing, `gpu_model_rows.py`'s
announced stand-in takes its name. timm imports torchvision, which beside the CPU torch build
imports only without its compiled-op registrations (`cpu_torchvision.py`). Up to three things
change in this process, and the script says so when it runs: those two stand-ins, and
`torch.cuda.device`, which the official cross-scan enters for every input, CPU tensors
included, and which raises for a CPU device: here it is a no-op context for CPU devices.
Allocator, threads and threading layer stay the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_torchvision import META_REGISTRATIONS, skip_torchvision_meta_registrations  # noqa: E402
from gpu_model_rows import OFFICIAL_CONSTRUCTORS, OFFICIAL_MODELS, load_official  # noqa: E402

from vmamba_ref import vmamba_tiny  # noqa: E402
from vmamba_ref.testing.tolerances import tolerance  # noqa: E402

# The official forward_corev2's arguments for its CPU path (see the module docstring).
OFFICIAL_CPU_PATH = dict(force_fp32=False, no_einsum=True, selective_scan_backend="torch", scan_force_torch=True)


def allow_cpu_device_contexts() -> None:
    """Make `torch.cuda.device(d)` a no-op context when d is a CPU device, in this process."""
    cuda_device = torch.cuda.device

    def device(d):
        if torch.device(d).type == "cpu":
            return contextlib.nullcontext()
        return cuda_device(d)

    torch.cuda.device = device
    print("this process: torch.cuda.device(<cpu device>) is a no-op context (the official cross-scan enters it)")


def build_official_cpu(official: Path) -> torch.nn.Module:
    """The official VMamba-T in eval mode, every SS2D on the official CPU path."""
    if not (official / OFFICIAL_MODELS / "vmamba.py").is_file():
        raise SystemExit(f"--official {official}: no {OFFICIAL_MODELS / 'vmamba.py'} there; pass a checkout of the official code")
    if skip_torchvision_meta_registrations():
        print(f"this process: an empty {META_REGISTRATIONS} lets timm import torchvision (cpu_torchvision.py)")
    try:
        vmamba = load_official(official)
    except ModuleNotFoundError as err:
        raise SystemExit(f"the official model file needs {err.name!r}: pip install timm einops") from err
    model = getattr(vmamba, OFFICIAL_CONSTRUCTORS["tiny"])().eval()
    mixers = [m for m in model.modules() if hasattr(m, "forward_corev2")]
    for mixer in mixers:
        mixer.forward_core = partial(mixer.forward_corev2, **OFFICIAL_CPU_PATH)
    if not mixers:
        raise SystemExit("the official model has no SS2D with forward_corev2: another version of the code?")
    return model


def interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each entry, the entries called in turn, `rounds` times."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="root of a checkout of the official VMamba code")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=4, help="timed calls per model and batch")
    args = parser.parse_args(argv)
    print(f"plain process: default allocator, torch threads {torch.get_num_threads()}, float32, eval, no_grad, 224x224")
    allow_cpu_device_contexts()
    official = build_official_cpu(args.official)
    ours = vmamba_tiny(backend="numba").eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    tol = tolerance(torch.float32, backend="numba")
    print(f"{'batch':>5}  {'official img/s':>14}  {'ours img/s':>10}  {'ours / official':>15}  max |logit diff|")
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            reference = official(x)  # (batch, 1000)
            diff = (reference - ours(x)).abs().max().item()
            if diff > tol.atol + tol.rtol * reference.abs().max().item():
                raise SystemExit(f"batch {batch}: the logits differ by {diff:.3g}: not the same model, nothing timed")
            calls = {"official": partial(official, x), "ours": partial(ours, x)}
            interleaved(calls, 1)  # warm-up
            times = interleaved(calls, args.rounds)
        ratio = statistics.median(o / u for o, u in zip(times["official"], times["ours"], strict=True))
        speed = {name: batch / statistics.median(t) for name, t in times.items()}
        print(f"{batch:>5}  {speed['official']:>14.2f}  {speed['ours']:>10.2f}  {ratio:>14.2f}x  {diff:.1e}")


if __name__ == "__main__":
    main()
