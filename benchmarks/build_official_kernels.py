"""Build official VMamba's compiled selective scan, `selective_scan_cuda_oflex`, from a checkout
the user names, for this machine's GPU architecture only, into a build folder of its own.

    python benchmarks/build_official_kernels.py --official PATH --build-dir DIR
    python benchmarks/build_official_kernels.py --official PATH --build-dir DIR --dry-run

The official code (MIT licence) is a peer that `bench_gpu.py` measures against; it is never
copied into this project. At run time this script copies the checkout's
`kernels/selective_scan/` folder to `DIR/src` (the checkout stays untouched and may be
read-only) and runs its `setup.py` there:

    TORCH_CUDA_ARCH_LIST=<major.minor> MAX_JOBS=<cores> python setup.py build_ext \\
        --build-lib DIR/lib --build-temp DIR/temp

- Which extension: `setup.py` builds each mode of its module-level `MODES` list; the released
  file lists `"oflex"` alone (module `selective_scan_cuda_oflex`, sources under
  `csrc/selective_scan/cusoflex/`). Neither an environment variable nor an argument chooses it,
  so this script reads that list (with `ast`, without running the file) and refuses a checkout
  whose list lacks `"oflex"`.
- Which architecture: `setup.py` adds `-arch=sm_XY` for the GPU it sees; torch's
  `cpp_extension` adds `-gencode` flags for each entry of `TORCH_CUDA_ARCH_LIST`. This script
  sets that variable to the capability `torch.cuda.get_device_capability()` reports ("9.0" on an
  H100 or H200), so nvcc compiles one architecture.
- `MAX_JOBS` lets ninja compile the three sources side by side.
- CUDA 13: its CUB (3.0) removed `cub::CTA_SYNC` and `cub::LaneId`, which the official
  `reverse_scan.cuh` calls, so nvcc 13 stops on them. The script adds
  `-include benchmarks/cub3_compat.cuh` to `NVCC_APPEND_FLAGS` (an environment variable nvcc
  reads itself): that header of ours defines the two functions when CUB is 3.0 or newer and
  nothing otherwise, so the official sources compile unedited under every CUDA.

The build's full output goes to `DIR/build.log`; the script prints the build time, the module's
path (what `bench_gpu.py --official-build DIR` finds), and checks that the module imports in a
fresh process. Whatever the outcome, it ends by writing `DIR/status.json` (`ok`, `seconds`,
`module`, `reason`), which `bench_gpu.py --wait-for-build` waits for when the build runs beside
the measurements (`gpu_table.sh`).

`--dry-run` prints the command and the environment it would use and checks that the `setup.py`
exists and lists "oflex"; it needs neither a GPU nor nvcc, and writes nothing.

Exit status: 0 built (or dry run passed), 1 the build or the import failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_model_rows import first_line

SETUP = Path("kernels") / "selective_scan" / "setup.py"  # inside the official checkout
MODE = "oflex"
MODULE = "selective_scan_cuda_oflex"
SETUP_IMPORTS = ("packaging", "setuptools", "wheel")  # what setup.py imports besides torch
LOG_TAIL_LINES = 40
CUB3_COMPAT = Path(__file__).resolve().with_name("cub3_compat.cuh")  # force-included, see above
STATUS_FILE = "status.json"  # in the build folder, written last


@dataclass(frozen=True)
class BuildPlan:
    """What one build runs: where, which command, with which environment variables added."""

    source: Path  # the checkout's kernels/selective_scan folder
    src: Path  # its copy, where setup.py runs
    lib: Path  # where the built module lands
    command: tuple[str, ...]
    env: dict[str, str]  # added to the caller's environment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--official", type=Path, required=True, help="the official VMamba checkout (holds kernels/)"
    )
    parser.add_argument(
        "--build-dir", type=Path, required=True, help="folder for the copy, the build and its log"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the command and environment, check setup.py; build nothing",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=420.0, help="stop the build after this many seconds"
    )
    args = parser.parse_args(argv)
    setup = args.official / SETUP
    if not setup.is_file():
        parser.error(
            f"--official {args.official}: no {SETUP} there; pass the root of an official VMamba "
            "checkout (the folder that holds kernels/ and classification/)"
        )
    if args.timeout_s <= 0:
        parser.error(f"--timeout-s must be positive, got {args.timeout_s}")
    return args


def setup_modes(setup: Path) -> list[str]:
    """The module-level `MODES = [...]` of the official setup.py, read without running it."""
    tree = ast.parse(setup.read_text(), filename=str(setup))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "MODES" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise SystemExit(
        f"{setup}: no module-level MODES list; this script knows the layout of official VMamba's "
        "kernels/selective_scan/setup.py, which builds each mode listed there"
    )


def detected_arch() -> str | None:
    """TORCH_CUDA_ARCH_LIST for the GPU torch sees ("9.0" on Hopper), or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def make_plan(official: Path, build_dir: Path, arch: str) -> BuildPlan:
    build_dir = build_dir.resolve()
    source = (official / SETUP).parent.resolve()
    lib, temp = build_dir / "lib", build_dir / "temp"
    command = (
        sys.executable,
        "setup.py",
        "build_ext",
        "--build-lib",
        str(lib),
        "--build-temp",
        str(temp),
    )
    nvcc_flags = os.environ.get("NVCC_APPEND_FLAGS", "")
    env = {
        "TORCH_CUDA_ARCH_LIST": arch,
        "MAX_JOBS": str(os.cpu_count() or 1),
        "NVCC_APPEND_FLAGS": f"{nvcc_flags} -include {CUB3_COMPAT}".strip(),
    }
    return BuildPlan(source, build_dir / "src", lib, command, env)


def write_status(
    build_dir: Path, ok: bool, reason: str, seconds: float | None = None, module: Path | None = None
) -> None:
    """The build's outcome, for `bench_gpu.py --wait-for-build`: written once, at the end,
    through a temporary file, so that a reader never sees half of it."""
    build_dir.mkdir(parents=True, exist_ok=True)
    status = {
        "ok": ok,
        "reason": reason,
        "seconds": seconds,
        "module": None if module is None else str(module),
    }
    tmp = build_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(status))
    tmp.replace(build_dir / STATUS_FILE)


def tools() -> str:
    """Where nvcc and ninja are, and torch's CUDA version: what the build needs."""
    import torch

    nvcc = shutil.which("nvcc") or "not found"
    ninja = shutil.which("ninja") or "not found (torch then compiles one file at a time)"
    imports = ", ".join(
        f"{name} {'found' if importlib.util.find_spec(name) else 'MISSING'}"
        for name in SETUP_IMPORTS
    )
    return (
        f"nvcc: {nvcc}; ninja: {ninja}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"setup.py imports: {imports}"
    )


def find_module(lib: Path) -> Path:
    """The one built module file under `lib`."""
    found = sorted(lib.glob(f"{MODULE}*.so")) + sorted(lib.glob(f"{MODULE}*.pyd"))
    if len(found) != 1:
        raise RuntimeError(
            f"expected one {MODULE} module in {lib}, found {[str(p) for p in found]}"
        )
    return found[0]


def check_import(lib: Path) -> None:
    """Import the built module in a fresh process, after torch, as bench_gpu.py does."""
    code = f"import sys; sys.path.insert(0, {str(lib)!r}); import torch, {MODULE}; {MODULE}.fwd"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the built {MODULE} does not import:\n{result.stderr[-3000:]}")


class BuildFailed(Exception):
    """The build stopped, failed, or gave a module that does not import; the message says which."""


def build(plan: BuildPlan, timeout_s: float) -> tuple[Path, float]:
    """Copy the sources, run setup.py with its output in build.log; (the module's path, seconds)."""
    if plan.src.exists():
        shutil.rmtree(plan.src)
    shutil.copytree(plan.source, plan.src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    log_path = plan.src.parent / "build.log"
    start = time.perf_counter()
    with log_path.open("w") as log:
        try:
            result = subprocess.run(
                plan.command, cwd=plan.src, env={**os.environ, **plan.env}, stdout=log,
                stderr=subprocess.STDOUT, timeout=timeout_s,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise BuildFailed(
                f"build stopped after {timeout_s:.0f} s (--timeout-s); log: {log_path}"
            ) from None
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        print("\n".join(tail))
        raise BuildFailed(
            f"build FAILED after {seconds:.0f} s (exit {result.returncode}); full log: {log_path}"
        )
    module = find_module(plan.lib)
    print(f"build time: {seconds:.1f} s; module: {module}; log: {log_path}")
    return module, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = args.official / SETUP
    modes = setup_modes(setup)
    if MODE not in modes:
        raise SystemExit(f"{setup}: MODES = {modes} lacks {MODE!r}, so it would not build {MODULE}")
    arch = detected_arch()
    plan = make_plan(args.official, args.build_dir, arch or "<major.minor>")
    arch_note = (
        f"detected by torch.cuda.get_device_capability(): {arch}"
        if arch
        else "no CUDA GPU here: on the GPU machine, torch.cuda.get_device_capability() gives it"
    )
    print(f"setup.py: {setup.resolve()} (MODES = {modes})")
    print(f"copy: {plan.source} -> {plan.src}")
    print(f"TORCH_CUDA_ARCH_LIST: {arch_note}")
    print(f"tools: {tools()}")
    print(f"force-included into each .cu (defines nothing under CUB < 3.0): {CUB3_COMPAT}")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items())
    print(f"command, in {plan.src}:\n  {env} {shlex.join(plan.command)}")
    if args.dry_run:
        print("dry run: nothing built")
        return 0
    (args.build_dir / STATUS_FILE).unlink(missing_ok=True)  # a reader waits for this build's
    try:
        if arch is None:
            raise BuildFailed(
                "building needs a CUDA GPU: setup.py reads the GPU's compute capability"
            )
        try:
            module, seconds = build(plan, args.timeout_s)
            check_import(module.parent)
        except RuntimeError as err:  # no module, or one that does not import
            raise BuildFailed(str(err)) from err
    except BuildFailed as failed:
        print(failed)
        write_status(args.build_dir, False, first_line(failed))
        return 1
    print(f"{MODULE} imports from {module.parent}")
    write_status(args.build_dir, True, "built", seconds, module)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
