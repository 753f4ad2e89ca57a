"""Throughput of a VMamba model: images per second for one backend, batch size, resolution, dtype.

The protocol is the official one (VMamba's `analyze/tp.py`), scaled down for a
CPU: one fixed batch of random images, `warmup` untimed passes, then `iters` timed passes, each
timed on its own so that the spread is visible.

| setting     | official (A100)                         | here (defaults)                          |
|-------------|------------------------------------------|------------------------------------------|
| mode        | eval + no_grad (inference); train: forward + cross-entropy + backward, optimizer excluded | same |
| batch       | 128                                      | 8                                        |
| passes      | 50 warm-up, 30 timed                     | 2 warm-up, 5 timed                       |
| dtype       | float32 without autocast; AMP variant    | float32 without autocast; "bfloat16"/"float16" run under torch.autocast, or with `cast` (inference) as a model and images cast to that dtype, the faster path on a CPU |
| throughput  | 30 * 128 / total time                    | `mean` (same definition), plus the median, min and max over passes |

A backend that is not installed, or cannot run on the requested device, is refused with
BackendUnavailableError; nothing is ever substituted.

JSON report (`BenchResult.to_dict`), one object:

| field          | meaning                                                                |
|----------------|------------------------------------------------------------------------|
| model, backend, mode ("inference" or "train"), batch_size, resolution, dtype, cast, device, warmup, iters, seed | the configuration |
| images_per_s   | {"median", "min", "max", "mean"}: per pass batch / seconds; mean = iters * batch / total seconds |
| ms_per_iter    | {"median", "min", "max"}: milliseconds per pass                        |
| times_s        | seconds of every timed pass, in order                                  |
| params         | parameter count of the model                                           |
| threads        | torch.get_num_threads() during the run                                 |
| device_name    | the CPU (platform.processor() or machine) or the CUDA device's name    |
| torch          | torch.__version__                                                      |
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vmamba_ref.contract import BackendUnavailableError, check_backend_name, get_ops
from vmamba_ref.model import MODELS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""--dtype choices. float32 runs as is; the others run under torch.autocast (mixed precision),
or with `cast` as a model cast to that dtype."""


@dataclass(frozen=True)
class BenchConfig:
    """One throughput measurement. Every field is checked on construction, by name."""

    model: str  # a key of vmamba_ref.MODELS
    backend: str = "ref"  # implementation of the scan operators; never substituted
    batch_size: int = 8  # images per pass (official: 128)
    resolution: int = 224  # input height and width
    dtype: str = "float32"  # a key of DTYPES
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    warmup: int = 2  # untimed passes first (official: 50)
    iters: int = 5  # timed passes (official: 30)
    train: bool = False  # forward + cross-entropy + backward per pass instead of inference
    seed: int = 0  # seeds the weights and the random batch
    # Low-precision inference as a model and images cast to `dtype` (`model.to(dtype)`) instead
    # of torch.autocast, which casts every weight again on every pass: on a CPU the faster
    # bfloat16 path (docs/kernels.md, "Which bfloat16 path").
    cast: bool = False

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(
                f"BenchConfig.model must be one of {sorted(MODELS)}, got {self.model!r}"
            )
        check_backend_name(self.backend)
        if self.dtype not in DTYPES:
            raise ValueError(f"BenchConfig.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("batch_size", "resolution", "iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BenchConfig.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.cast, bool):
            raise ValueError(f"BenchConfig.cast must be a bool, got {self.cast!r}")
        if self.cast and self.dtype == "float32":
            raise ValueError("BenchConfig.cast casts the model to a low-precision dtype: pass dtype 'bfloat16' or 'float16'")
        if self.cast and self.train:
            raise ValueError("BenchConfig.cast is for inference: train under autocast (cast=False) instead")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ValueError(f"BenchConfig.warmup must be an int >= 0, got {self.warmup!r}")
        try:
            device = torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(
                f"BenchConfig.device must be 'cpu' or 'cuda[:N]', got {self.device!r}"
            ) from err
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"BenchConfig.device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    @property
    def mode(self) -> str:
        return "train" if self.train else "inference"


@dataclass(frozen=True)
class BenchResult:
    """The timed passes of one BenchConfig and where they ran."""

    config: BenchConfig
    times_s: tuple[float, ...]  # seconds of each timed pass
    params: int
    threads: int
    device_name: str
    torch_version: str

    @property
    def images_per_s(self) -> dict[str, float]:
        """Per-pass throughput batch / seconds: median, min, max; mean = all images / all seconds."""
        per_pass = [self.config.batch_size / t for t in self.times_s]
        return {
            "median": statistics.median(per_pass),
            "min": min(per_pass),
            "max": max(per_pass),
            "mean": self.config.batch_size * len(self.times_s) / sum(self.times_s),
        }

    @property
    def ms_per_iter(self) -> dict[str, float]:
        ms = [1e3 * t for t in self.times_s]
        return {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}

    def to_dict(self) -> dict:
        """The JSON report; fields in the module docstring."""
        return asdict(self.config) | {
            "mode": self.config.mode,
            "images_per_s": self.images_per_s,
            "ms_per_iter": self.ms_per_iter,
            "times_s": list(self.times_s),
            "params": self.params,
            "threads": self.threads,
            "device_name": self.device_name,
            "torch": self.torch_version,
        }


def check_backend_runs(backend: str, device: str) -> None:
    """Raise BackendUnavailableError unless `backend` is installed and runs on `device`:
    numba on CPU tensors, triton on CUDA tensors (on the CPU only under TRITON_INTERPRET=1)."""
    get_ops(backend)
    kind = torch.device(device).type
    if backend == "numba" and kind != "cpu":
        raise BackendUnavailableError(
            f"backend 'numba' runs on CPU tensors, not {device!r}; pass device 'cpu'"
        )
    if backend == "triton" and kind == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailableError(
            "backend 'triton' runs on CUDA tensors; pass device 'cuda' (or set TRITON_INTERPRET=1 "
            "to run its kernels on the CPU through the interpreter, far too slow to benchmark)"
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device {device!r} requested but torch.cuda.is_available() is False"
        )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run_benchmark(config: BenchConfig, progress: bool = False) -> BenchResult:
    """Build the model with `config.backend`, run `config.warmup` then `config.iters` passes on
    one random batch, and time each timed pass (CUDA synchronized). `progress` shows a tqdm bar."""
    check_backend_runs(config.backend, config.device)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = MODELS[config.model](backend=config.backend).to(device)
    model.train(config.train)
    in_chans = model.config.in_chans
    x = torch.randn(
        config.batch_size, in_chans, config.resolution, config.resolution, device=device
    )
    labels = torch.randint(model.num_classes, (config.batch_size,), device=device)
    if config.cast:
        model, x = model.to(DTYPES[config.dtype]), x.to(DTYPES[config.dtype])
    if config.dtype == "float32" or config.cast:
        precision = contextlib.nullcontext
    else:

        def precision():
            return torch.autocast(device.type, dtype=DTYPES[config.dtype])

    def step() -> None:
        if config.train:
            model.zero_grad(set_to_none=True)
            with precision():
                loss = F.cross_entropy(model(x), labels)
            loss.backward()
        else:
            with torch.no_grad(), precision():
                model(x)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    total = config.warmup + config.iters
    desc = f"{config.model} {config.backend} {config.mode}"
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(config.warmup):
            step()
            bar.update()
        sync()
        for _ in range(config.iters):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
            bar.update()
    return BenchResult(
        config=config,
        times_s=tuple(times),
        params=sum(p.numel() for p in model.parameters()),
        threads=torch.get_num_threads(),
        device_name=_device_name(device),
        torch_version=torch.__version__,
    )


def precision_label(config: BenchConfig) -> str:
    """How the passes ran: "float32", "bfloat16 (autocast)" or "bfloat16 (model cast)"."""
    if config.dtype == "float32":
        return config.dtype
    return f"{config.dtype} ({'model cast' if config.cast else 'autocast'})"


def format_result(result: BenchResult) -> str:
    """A small table: images/s and ms per pass, median/min/max, and the overall mean."""
    cfg = result.config
    head = (
        f"{cfg.model}, backend {cfg.backend}, {cfg.mode}, {precision_label(cfg)}, batch {cfg.batch_size} at "
        f"{cfg.resolution}x{cfg.resolution}, {cfg.device} ({result.device_name}, {result.threads} threads), "
        f"{cfg.warmup} warm-up + {cfg.iters} timed passes"
    )
    ips, ms = result.images_per_s, result.ms_per_iter
    lines = [head, f"{'pass':<9}{'images/s':>12}{'ms/pass':>12}"]
    # Rows are passes: the slowest pass has the fewest images/s and the most milliseconds.
    for label, ips_key, ms_key in (
        ("median", "median", "median"),
        ("slowest", "min", "max"),
        ("fastest", "max", "min"),
    ):
        lines.append(f"{label:<9}{ips[ips_key]:>12.2f}{ms[ms_key]:>12.1f}")
    lines.append(f"{'overall':<9}{ips['mean']:>12.2f}{'':>12}  (all images / all seconds)")
    return "\n".join(lines)
