"""Exporting VMamba: `torch.export`, ONNX, and a check that onnxruntime reproduces PyTorch.

The scan backends differ in what a tracer can follow:

| backend  | torch.compile              | torch.export                      | ONNX |
|----------|----------------------------|-----------------------------------|------|
| "torch"  | one graph                  | standard ops only: portable       | yes  |
| "numba"  | one graph, opaque scan ops | with `vmamba::` custom ops, which run only where vmamba_fast is installed | no |
| "triton" | not tested here (CUDA)     | not tested here (CUDA)            | no   |
| "ref"    | slowly: the l-step loop unrolls and value checks break the graph | no | no |

so every function here requires a model built with `backend="torch"`, whose graph is made of
standard operators that ONNX and any PyTorch runtime understand;
`rebuild_with_backend(model, "torch")` copies a model built with another backend (for example
one that loaded official weights) onto it. The exported graph computes in float32 and matches
the eager model to rounding: the parallel scan sums in another order than the loop.

    from vmamba_ref import vmamba_tiny
    from vmamba_ref.tools.export import export_onnx, onnx_parity

    model = vmamba_tiny(backend="torch").eval()
    path = export_onnx(model, "vmamba_tiny.onnx")            # (1, 3, 224, 224) -> (1, 1000)
    print(onnx_parity(path, model, torch.randn(1, 3, 224, 224)).max_abs)

Image size is fixed at export (the scan's structure depends on h*w); the batch size can be
left free with `dynamic_batch=True`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vmamba_ref.contract import check_shape, check_tensor
from vmamba_ref.model import VMamba

EXPORT_BACKEND = "torch"
DEFAULT_OPSET = 18


def _check_model(fn: str, model: nn.Module) -> VMamba:
    if not isinstance(model, VMamba):
        raise TypeError(f"{fn}: model must be a VMamba, got {type(model).__name__}")
    if model.backend != EXPORT_BACKEND:
        raise ValueError(
            f"{fn}: export traces the scan, which needs backend={EXPORT_BACKEND!r}; this model uses "
            f"backend={model.backend!r}. Build it with backend={EXPORT_BACKEND!r} or pass it "
            f"through rebuild_with_backend(model, {EXPORT_BACKEND!r})"
        )
    return model


def _check_example(fn: str, model: VMamba, example: torch.Tensor) -> None:
    check_tensor(fn, "example", example)
    check_shape(fn, "example", example, (None, model.config.in_chans, None, None), "b in_chans H W")


def rebuild_with_backend(model: VMamba, backend: str) -> VMamba:
    """A new VMamba with `model`'s config, weights, device, dtype and train/eval mode, whose
    scan runs on `backend`. The original model is left as it was."""
    if not isinstance(model, VMamba):
        raise TypeError(f"rebuild_with_backend: model must be a VMamba, got {type(model).__name__}")
    param = next(model.parameters())
    rebuilt = VMamba(model.config, backend=backend).to(device=param.device, dtype=param.dtype)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.train(model.training)


def default_example(model: VMamba, image_size: int = 224, batch_size: int = 1) -> torch.Tensor:
    """A random (batch_size, in_chans, image_size, image_size) input on the model's device."""
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, model.config.in_chans, image_size, image_size, generator=generator)
    return x.to(device=param.device, dtype=param.dtype)  # (b, in_chans, H, W)


def _dynamic_shapes(dynamic_batch: bool) -> tuple | None:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None


def export_program(
    model: VMamba, example: torch.Tensor, dynamic_batch: bool = False
) -> torch.export.ExportedProgram:
    """`torch.export` the model's forward, (b, in_chans, H, W) -> (b, num_classes), at the
    example's image size (and batch size, unless `dynamic_batch`). Export in eval mode
    (`model.eval()`) for inference: in training mode DropPath draws random masks."""
    _check_model("export_program", model)
    _check_example("export_program", model, example)
    return torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(dynamic_batch))


def export_onnx(
    model: VMamba,
    path: str | Path,
    example: torch.Tensor | None = None,
    opset: int = DEFAULT_OPSET,
    optimize: bool = False,
    dynamic_batch: bool = False,
) -> Path:
    """Export the model to an ONNX file through `torch.export` (torch's dynamo exporter).

    Args:
        model: a VMamba with backend "torch", normally in eval mode.
        path: the .onnx file to write (parent folders are created).
        example: an input fixing the image size; default `default_example(model)`, 1x224x224.
        opset: the ONNX opset (18 or later: LayerNormalization is needed).
        optimize: also run onnxscript's graph optimizer (constant folding, redundant-op
            removal: about 3x fewer nodes). Off by default: on VMamba-T it takes minutes (about
            6 on two busy CPU cores, against 30 s for the export itself), and onnxruntime folds
            and fuses the graph itself when it loads the file; the logits agree either way.
        dynamic_batch: leave the batch dimension free (input name "x", output "logits").

    Returns:
        The path written. The graph has one input, `x` (b, in_chans, H, W) float32, and one
        output, `logits` (b, num_classes).
    """
    _check_model("export_onnx", model)
    if example is None:
        example = default_example(model)
    _check_example("export_onnx", model, example)
    if opset < DEFAULT_OPSET:
        raise ValueError(f"export_onnx: opset must be >= {DEFAULT_OPSET} (LayerNormalization), got {opset}")
    program = export_program(model, example, dynamic_batch)
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=opset,
        optimize=optimize,
        input_names=["x"],
        output_names=["logits"],
        verbose=False,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(path)
    return path


@dataclass(frozen=True)
class OnnxParity:
    """How closely onnxruntime reproduces PyTorch on one input."""

    max_abs: float  # max |ort - torch| over the logits
    mean_abs: float  # mean |ort - torch|
    max_logit: float  # max |torch logits|, for scale
    torch_seconds: float  # one eager forward
    ort_seconds: float  # one onnxruntime run (after session creation)


def onnx_parity(path: str | Path, model: VMamba, x: torch.Tensor) -> OnnxParity:
    """Run the ONNX file with onnxruntime (CPU) and `model` eagerly on `x`; compare the logits.

    Needs onnxruntime (`pip install 'vmamba[export]'`). `model` may use any backend; `x` must
    have the size the file was exported at (and its batch size, unless exported with
    dynamic_batch).
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("onnx_parity needs onnxruntime: pip install 'vmamba[export]'") from error
    if not isinstance(model, VMamba):
        raise TypeError(f"onnx_parity: model must be a VMamba, got {type(model).__name__}")
    _check_example("onnx_parity", model, x)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"onnx_parity: no ONNX file at {path}")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.detach().cpu().float().numpy()}
    start = time.perf_counter()
    (ort_logits,) = session.run(None, feed)
    ort_seconds = time.perf_counter() - start
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(x).float().cpu()  # (b, num_classes)
        torch_seconds = time.perf_counter() - start
    diff = (torch.from_numpy(ort_logits) - logits).abs()  # (b, num_classes)
    return OnnxParity(
        max_abs=diff.max().item(),
        mean_abs=diff.mean().item(),
        max_logit=logits.abs().max().item(),
        torch_seconds=torch_seconds,
        ort_seconds=ort_seconds,
    )
