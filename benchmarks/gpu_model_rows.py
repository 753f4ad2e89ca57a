"""One implementation's rows of the GPU table, timed in a process of its own.

    python benchmarks/gpu_model_rows.py --impl ours --size tiny --modes inference,training

`bench_gpu.py` starts one such process per implementation and model size, so that the two
variants of the official code never share `sys.modules`: "official" imports the compiled
`selective_scan_cuda_oflex`, "official+ours" finds `vmamba_fast.compat`'s module under that
name. Each row is printed as one line, `ROW {json}`, which `bench_gpu.py` collects.

Implementations (`IMPLS`):
- "ours": `vmamba_ref.model.vmamba_{tiny,small,base}(backend="triton")`.
- "official": the official `VSSM` built by its factory functions (`OFFICIAL_CONSTRUCTORS`, the
  released T/S/B configurations) with its compiled oflex scan, imported from the folder that
  `build_official_kernels.py` built into (`--official-build`). The process imports that module
  itself before the official code and checks that `csms6s` chose it: the official code would
  otherwise fall back to a pure-PyTorch loop without a word of warning beyond a print.
- "official+ours": the same official Python code, with `vmamba_fast.compat.install()` run
  before it is imported, so its `import selective_scan_cuda_oflex` finds our Triton kernels.
  Its cross-scan and cross-merge stay the official Triton kernels (`csm_triton.py`).
- "timm": timm's ConvNeXt-T and Swin-T (`TIMM_MODELS`), at the tiny size only. timm is imported
  inside `build_timm` alone; without it the rows say "skipped: timm not importable".

The official code is loaded from the checkout the user names (`--official`), as the package
`vmamba_official_models`; it imports `fvcore` for FLOP counting, which this benchmark never
calls: where fvcore is missing, an announced stand-in whose functions raise takes its name.

A row: model in eval mode under `torch.inference_mode()` ("inference"), or a training step
("training": forward, cross-entropy against fixed random labels, backward, AdamW step with
torch's default settings, gradients set to None), for each precision in `PRECISIONS`. Each
iteration is timed between two `torch.cuda.synchronize()` calls; images/s is batch / median
seconds. Peak memory is `torch.cuda.max_memory_allocated()` over the row, counters reset before
it. A row that would end after `--deadline` (projected from its third warm-up iteration) stops
and says so.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW_PREFIX = "ROW "
IMPLS = ("official", "official+ours", "ours", "timm")
MODES = ("inference", "training")
OFFICIAL_PACKAGE = "vmamba_official_models"
OFFICIAL_MODELS = Path("classification") / "models"  # inside the official checkout
OFFLEX = "selective_scan_cuda_oflex"

# size -> our constructor (vmamba_ref.model), the official factory (classification/models/vmamba.py)
OUR_CONSTRUCTORS = {
    "mini": "vmamba_mini",
    "tiny": "vmamba_tiny",
    "small": "vmamba_small",
    "base": "vmamba_base",
}
OFFICIAL_CONSTRUCTORS = {
    "tiny": "vmamba_tiny_s1l8",
    "small": "vmamba_small_s2l15",
    "base": "vmamba_base_s2l15",
}
MODEL_NAMES = {"mini": "VMamba-mini", "tiny": "VMamba-T", "small": "VMamba-S", "base": "VMamba-B"}
# timm's names of the peers, measured at size "tiny"
TIMM_MODELS = {"ConvNeXt-T": "convnext_tiny", "Swin-T": "swin_tiny_patch4_window7_224"}
FVCORE_NAMES = ("FlopCountAnalysis", "flop_count_str", "flop_count", "parameter_count")


@dataclass(frozen=True)
class Precision:
    """How a row computes: float32 with TF32 matmuls/convolutions off or on, or bfloat16
    autocast (matmuls and convolutions in bfloat16; TF32 off for what autocast keeps in
    float32)."""

    name: str
    bf16_autocast: bool
    tf32: bool  # torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


PRECISIONS = {
    "fp32": Precision("fp32", bf16_autocast=False, tf32=False),
    "bf16": Precision("bf16", bf16_autocast=True, tf32=False),
    "tf32": Precision("tf32", bf16_autocast=False, tf32=True),
}


@dataclass(frozen=True)
class Timing:
    """The input and the repetitions of every row."""

    batch: int
    image: int  # height = width
    warmup: int
    iters: int


@dataclass
class Row:
    """One measurement, or why there is none (`status` other than "ok")."""

    impl: str
    size: str
    model: str
    precision: str
    mode: str
    status: str
    images_per_s: float | None = None
    ms_per_iter: float | None = None
    peak_mib: float | None = None
    params: int | None = None
    tf32: bool | None = None  # read back from torch during the row


def first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0][:200]


def emit(row: Row) -> None:
    print(ROW_PREFIX + json.dumps(asdict(row)), flush=True)


def parse_row(line: str) -> Row | None:
    """The Row on a line `emit` printed, else None."""
    if not line.startswith(ROW_PREFIX):
        return None
    return Row(**json.loads(line[len(ROW_PREFIX) :]))


def split_names(value: str, known, what: str) -> list[str]:
    names = [v for v in value.split(",") if v]
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what}: {unknown or value!r} not among {list(known)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=IMPLS, required=True)
    parser.add_argument("--size", choices=tuple(OUR_CONSTRUCTORS), required=True)
    parser.add_argument(
        "--modes", type=lambda v: split_names(v, MODES, "--modes"), default=list(MODES)
    )
    parser.add_argument(
        "--precisions",
        type=lambda v: split_names(v, PRECISIONS, "--precisions"),
        default=list(PRECISIONS),
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--official", type=Path, help="the official VMamba checkout")
    parser.add_argument(
        "--official-build", type=Path, help="the --build-dir of build_official_kernels.py"
    )
    parser.add_argument("--deadline", type=float, help="time.time() after which no row may end")
    parser.add_argument(
        "--dry-run", action="store_true", help="build the models (on the CPU), time nothing"
    )
    args = parser.parse_args(argv)
    if args.impl in ("official", "official+ours") and args.official is not None:
        if not (args.official / OFFICIAL_MODELS / "vmamba.py").is_file():
            parser.error(
                f"--official {args.official}: no {OFFICIAL_MODELS / 'vmamba.py'} there; pass the "
                "root of an official VMamba checkout"
            )
    for name in ("batch", "image", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    return args


# ------------------------------------------------------------------------------------------------
# Building each implementation's model
# ------------------------------------------------------------------------------------------------


class Skip(Exception):
    """The model cannot be built here for a reason that is not a fault: the reason is the row's
    status."""


def fvcore_stand_in() -> None:
    """Give `fvcore.nn` a module whose functions raise, where fvcore is not installed: the
    official vmamba.py imports four names from it at the top, for FLOP counts only."""
    if importlib.util.find_spec("fvcore") is not None:
        return

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("fvcore stand-in of gpu_model_rows.py: install fvcore to count FLOPs")

    package, nn_module = types.ModuleType("fvcore"), types.ModuleType("fvcore.nn")
    for name in FVCORE_NAMES:
        setattr(nn_module, name, unavailable)
    package.nn = nn_module
    sys.modules.update({"fvcore": package, "fvcore.nn": nn_module})
    print("fvcore is not installed: a stand-in (FLOP counting only, never called) takes its name")


def load_official(official: Path) -> types.ModuleType:
    """Import the checkout's classification/models as the package `vmamba_official_models`;
    return its `vmamba` module."""
    fvcore_stand_in()
    models = (official / OFFICIAL_MODELS).resolve()
    spec = importlib.util.spec_from_file_location(
        OFFICIAL_PACKAGE, models / "__init__.py", submodule_search_locations=[str(models)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[OFFICIAL_PACKAGE] = package
    spec.loader.exec_module(package)
    return sys.modules[f"{OFFICIAL_PACKAGE}.vmamba"]


def official_scan_module() -> types.ModuleType:
    """The module the official csms6s calls for its scan; raises unless it chose oflex."""
    csms6s = sys.modules[f"{OFFICIAL_PACKAGE}.csms6s"]
    if not csms6s.WITH_SELECTIVESCAN_OFLEX:
        raise RuntimeError(
            f"the official csms6s did not import {OFFLEX}: it would time its fallback"
        )
    return csms6s.selective_scan_cuda_oflex


def import_built_oflex(build_dir: Path) -> types.ModuleType:
    """The compiled module from build_official_kernels.py's --build-dir, imported by name."""
    found = sorted(build_dir.rglob(f"{OFFLEX}*.so"))
    if not found:
        raise Skip(f"skipped: no built {OFFLEX} under --official-build {build_dir}")
    if len(found) > 1:
        raise RuntimeError(f"several {OFFLEX} modules under {build_dir}: {[str(p) for p in found]}")
    # torch first: the module links against torch's libc10.so, which only torch's import loads
    import torch  # noqa: F401

    sys.path.insert(0, str(found[0].parent))
    import selective_scan_cuda_oflex

    return selective_scan_cuda_oflex


def build_official(args: argparse.Namespace, with_ours: bool):
    """(model, its oflex module) of the official code at args.size."""
    if args.size not in OFFICIAL_CONSTRUCTORS:
        raise Skip(f"skipped: the official code has no released {MODEL_NAMES[args.size]}")
    if args.official is None:
        raise Skip("skipped: --official not given")
    if with_ours:
        from vmamba_fast import compat

        expected = compat.install(
            backend="triton" if args.device == "cuda" else None, names=[OFFLEX]
        )[OFFLEX]
    else:
        if args.official_build is None:
            why = "run build_official_kernels.py, pass --official-build"
            raise Skip(f"skipped: {OFFLEX} not built ({why})")
        expected = import_built_oflex(args.official_build)
    vmamba = load_official(args.official)
    if official_scan_module() is not expected:
        raise RuntimeError(
            f"the official code imported {official_scan_module()!r}, not {expected!r}"
        )
    return getattr(vmamba, OFFICIAL_CONSTRUCTORS[args.size])(), expected


def build_ours(args: argparse.Namespace):
    from vmamba_ref import model as models

    return getattr(models, OUR_CONSTRUCTORS[args.size])(backend="triton")


def build_timm(name: str):
    """timm's model `name`, randomly initialized; timm is imported here and nowhere else."""
    try:
        from timm import create_model
    except ImportError as err:
        raise Skip(f"skipped: timm not importable ({first_line(err)})") from err
    return create_model(name, pretrained=False)


def planned_models(impl: str, size: str) -> list[str]:
    """The display names of the models that `impl` has at `size` (timm's peers: tiny only)."""
    if impl == "timm":
        return list(TIMM_MODELS) if size == "tiny" else []
    return [MODEL_NAMES[size]]


def builders(args: argparse.Namespace) -> dict[str, Callable[[], object]]:
    """Display name -> a function that builds that model on the current default device."""
    if args.impl == "ours":
        return {MODEL_NAMES[args.size]: lambda: build_ours(args)}
    if args.impl in ("official", "official+ours"):
        with_ours = args.impl == "official+ours"
        return {MODEL_NAMES[args.size]: lambda: build_official(args, with_ours)[0]}
    return {
        peer: (lambda timm_name=TIMM_MODELS[peer]: build_timm(timm_name))
        for peer in planned_models(args.impl, args.size)
    }


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def time_iterations(
    step, warmup: int, iters: int, device: str, deadline: float | None = None
) -> list[float] | str:
    """Seconds of each of the `iters` timed iterations after `warmup` untimed ones, each between
    two synchronizes on CUDA; or, when the row would end after `deadline`, the reason it stopped
    (never without a deadline)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    total = warmup + iters
    times = []
    for i in range(total):
        sync()
        start = time.perf_counter()
        step()
        sync()
        seconds = time.perf_counter() - start
        if i >= warmup:
            times.append(seconds)
        left = total - i - 1
        if (
            deadline is not None
            and i == min(2, total - 1)
            and left
            and time.time() + left * seconds > deadline
        ):
            return (
                f"skipped: would end after the time budget ({left} iterations of {seconds:.3f} s "
                "left)"
            )
    return times


def measure(model, precision: Precision, mode: str, timing: Timing, device: str, deadline):
    """(Row fields) for one precision and mode of a built model."""
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = precision.tf32
    torch.backends.cudnn.allow_tf32 = precision.tf32
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision.bf16_autocast)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(timing.batch, 3, timing.image, timing.image, generator=g).to(device)
    num_classes = model.num_classes if hasattr(model, "num_classes") else 1000
    labels = torch.randint(0, num_classes, (timing.batch,), generator=g).to(device)
    if mode == "inference":
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(x)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters())

        def step():
            with autocast:
                loss = F.cross_entropy(model(x), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        result = time_iterations(step, timing.warmup, timing.iters, device, deadline)
    finally:
        model.zero_grad(set_to_none=True)  # the optimizer's state goes with `step`
    fields = {
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
    }
    if device == "cuda":
        fields["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if isinstance(result, str):
        return {**fields, "status": result}
    seconds = statistics.median(result)
    return {
        **fields,
        "status": "ok",
        "images_per_s": timing.batch / seconds,
        "ms_per_iter": seconds * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    timing = Timing(args.batch, args.image, args.warmup, args.iters)

    def rows(name: str, **fields) -> list[Row]:
        return [
            Row(args.impl, args.size, name, p, m, **fields)
            for m in args.modes
            for p in args.precisions
        ]

    for name, build in builders(args).items():
        try:  # built on the CPU, as users build them, then moved (a dry run stays there)
            model = build()
            if not args.dry_run:
                model = model.to(args.device)
        except Skip as why:
            for row in rows(name, status=str(why)):
                emit(row)
            continue
        except Exception as err:  # reported as the rows' status, with the traceback on stderr
            traceback.print_exc()
            for row in rows(
                name, status=f"failed to build: {type(err).__name__}: {first_line(err)}"
            ):
                emit(row)
            continue
        params = sum(p.numel() for p in model.parameters())
        if args.dry_run:
            for row in rows(name, status="dry run: built, not timed", params=params):
                emit(row)
            continue
        for mode in args.modes:
            for precision in args.precisions:
                if args.deadline is not None and time.time() > args.deadline:
                    fields = {"status": "skipped: the time budget is spent"}
                else:
                    try:
                        fields = measure(
                            model, PRECISIONS[precision], mode, timing, args.device, args.deadline
                        )
                    except Exception as err:  # the row says so; the traceback is above
                        traceback.print_exc()
                        fields = {"status": f"failed: {type(err).__name__}: {first_line(err)}"}
                emit(Row(args.impl, args.size, name, precision, mode, params=params, **fields))
        del model
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
