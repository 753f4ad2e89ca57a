"""Claims of vmamba_ref/tools/export.py and of the "torch" backend under PyTorch's compilers:

- `torch.compile` traces the whole model in one graph and its output matches eager within the
  tolerance table; inductor compiles a VSS block (the scan included) to the same result;
- `torch.export` captures the model, with a fixed or a free batch size;
- ONNX export of VMamba-T at 224x224, run by onnxruntime on the CPU, reproduces the PyTorch
  logits within 1e-3 (float32, max abs difference); this is the suite's one VMamba-T export.
"""

from __future__ import annotations

import logging
import time

import pytest
import torch

from vmamba_ref import vmamba_mini, vmamba_tiny
from vmamba_ref.testing.tolerances import ONNX_LOGITS, tolerance
from vmamba_ref.tools.export import (
    default_example,
    export_onnx,
    export_program,
    onnx_parity,
    rebuild_with_backend,
)

pytest.importorskip("onnxruntime", reason="the export tests need vmamba[export]")

log = logging.getLogger(__name__)
ONNX_ATOL = ONNX_LOGITS.atol  # max |onnxruntime - PyTorch| over VMamba-T's logits


def assert_within_table(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tol = tolerance(torch.float32, backend="torch")
    torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol)


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    return vmamba_mini(backend="torch").eval()


def test_torch_compile_traces_the_whole_model_in_one_graph(mini):
    """fullgraph=True fails on any graph break; aot_eager runs dynamo and AOTAutograd without
    code generation, so the whole model stays cheap to compile."""
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(mini, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert_within_table(compiled(x), mini(x))


def test_inductor_compiles_a_vss_block_to_the_eager_result(mini):
    """The default backend generates kernels for the scan's levels, on a small block to keep
    the compile short (the whole model compiles the same ops, many more times)."""
    block = mini.layers[1].blocks[0]
    x = torch.randn(2, 32, 8, 8)
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        assert_within_table(compiled(x), block(x))


def test_torch_export_with_a_fixed_and_a_free_batch(mini):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_within_table(export_program(mini, x).module()(x), mini(x))
        program = export_program(mini, x, dynamic_batch=True)
        x3 = torch.randn(3, 3, 32, 32)
        assert_within_table(program.module()(x3), mini(x3))


def test_export_needs_the_torch_backend_and_says_how_to_get_it():
    torch.manual_seed(0)
    ref_model = vmamba_mini(backend="ref").eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"rebuild_with_backend\(model, 'torch'\)"):
        export_program(ref_model, x)
    with pytest.raises(ValueError, match="in_chans"):
        export_program(rebuild_with_backend(ref_model, "torch"), torch.randn(1, 1, 32, 32))
    rebuilt = rebuild_with_backend(ref_model, "torch")
    assert rebuilt.backend == "torch" and not rebuilt.training and ref_model.backend == "ref"
    with torch.no_grad():
        assert_within_table(export_program(rebuilt, x).module()(x), ref_model(x))


def test_onnx_export_of_a_small_model_with_the_optimizer_and_a_free_batch(tmp_path):
    """One block per stage at 16x16: a free batch dimension makes the exporter and the optimizer
    several times slower than a fixed one, whatever the model, so the model is kept small."""
    torch.manual_seed(0)
    model = vmamba_mini(backend="torch", depths=(1, 1, 1, 1)).eval()
    path = export_onnx(model, tmp_path / "small.onnx", default_example(model, image_size=16, batch_size=2),
                       optimize=True, dynamic_batch=True)
    for batch in (1, 3):
        parity = onnx_parity(path, model, torch.randn(batch, 3, 16, 16))
        assert parity.max_abs <= ONNX_ATOL, parity


def test_onnxruntime_reproduces_vmamba_tiny_logits_at_224(tmp_path, record_property):
    torch.manual_seed(0)
    model = vmamba_tiny(backend="torch").eval()
    start = time.perf_counter()
    path = export_onnx(model, tmp_path / "vmamba_tiny.onnx")  # (1, 3, 224, 224) -> (1, 1000)
    export_seconds = time.perf_counter() - start
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    parity = onnx_parity(path, model, x)
    record_property("onnx_max_abs", parity.max_abs)
    record_property("onnx_export_seconds", export_seconds)
    log.info("VMamba-T ONNX: %s, export %.1f s", parity, export_seconds)
    assert parity.max_abs <= ONNX_ATOL, f"{parity}, export {export_seconds:.1f} s"
    assert parity.max_logit > 0.1  # the logits are not all near zero, so the bar means something
