"""Claims of vmamba_ref/contract.py about parameters: a non-finite parameter always raises, and off
the CPU an unchanged parameter is read once, not at every call (each read waits for the GPU).

The cache is off on the CPU, so these tests switch it on for CPU tensors through `_cacheable`;
the last one runs the real thing on a CUDA GPU when there is one.
"""

import gc

import pytest
import torch

from vmamba_ref import contract


@pytest.fixture
def cache_on_cpu(monkeypatch):
    monkeypatch.setattr(contract, "_cacheable", lambda x: not x.is_inference())
    monkeypatch.setattr(contract, "_found_finite", {})
    return contract._found_finite


def count_reads(monkeypatch) -> list[int]:
    reads = []
    all_finite = contract._all_finite
    monkeypatch.setattr(contract, "_all_finite", lambda x: reads.append(1) or all_finite(x))
    return reads


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_all_finite_agrees_with_torch(dtype, bad):
    """The NumPy shortcut for float32/float64 CPU tensors answers what torch.isfinite answers,
    for contiguous and strided tensors, leaves that require grad, and a bad value anywhere."""
    for where in (0, 7, 23):
        x = torch.randn(4, 6, dtype=torch.float64).to(dtype)
        if bad is not None:
            x.view(-1)[where] = bad
        for t in (x, x.t(), x[:, ::2], torch.nn.Parameter(x.clone())):
            assert contract._all_finite(t) == bool(torch.isfinite(t).all())


def test_on_the_cpu_every_call_reads_the_tensor(monkeypatch):
    reads = count_reads(monkeypatch)
    A = torch.nn.Parameter(-torch.rand(4, 2))
    for _ in range(3):
        contract.check_finite("f", "A", A)
    assert len(reads) == 3


def test_an_unchanged_parameter_is_read_once(cache_on_cpu, monkeypatch):
    reads = count_reads(monkeypatch)
    A = torch.nn.Parameter(-torch.rand(4, 2))
    for _ in range(3):
        contract.check_finite("f", "A", A)
    assert len(reads) == 1


@pytest.mark.parametrize(
    "write",
    [
        lambda p: p.fill_(float("nan")),  # as nn.init and optimizers write, under no_grad
        lambda p: p.copy_(torch.full_like(p, float("inf"))),  # as load_state_dict writes
        lambda p: p[1].fill_(float("nan")),  # through a view: views share the version counter
    ],
    ids=["fill", "copy", "view"],
)
def test_an_in_place_write_is_checked_again(cache_on_cpu, write):
    A = torch.nn.Parameter(-torch.rand(4, 2))
    contract.check_finite("f", "A", A)
    with torch.no_grad():
        write(A)
    with pytest.raises(ValueError, match="f: `A` must be finite"):
        contract.check_finite("f", "A", A)


def test_a_non_finite_tensor_is_never_remembered(cache_on_cpu):
    A = torch.tensor([1.0, float("nan")])
    for _ in range(2):
        with pytest.raises(ValueError, match=r"found nan at index \(1,\)"):
            contract.check_finite("f", "A", A)
    assert not cache_on_cpu


def test_a_dead_tensor_leaves_the_cache_and_a_new_one_is_read(cache_on_cpu, monkeypatch):
    A = torch.nn.Parameter(-torch.rand(4, 2))
    contract.check_finite("f", "A", A)
    assert len(cache_on_cpu) == 1
    del A
    gc.collect()
    assert not cache_on_cpu
    reads = count_reads(monkeypatch)
    contract.check_finite("f", "A", torch.nn.Parameter(-torch.rand(4, 2)))
    assert len(reads) == 1


def test_inference_tensors_are_not_cached(cache_on_cpu):
    with torch.inference_mode():
        A = -torch.rand(4, 2)
    contract.check_finite("f", "A", A)
    assert not cache_on_cpu


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_a_parameter_is_read_once_until_written(monkeypatch):
    reads = count_reads(monkeypatch)
    A = torch.nn.Parameter(-torch.rand(4, 2, device="cuda"))
    for _ in range(3):
        contract.check_finite("f", "A", A)
    assert len(reads) == 1
    with torch.no_grad():
        A[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`A` must be finite"):
        contract.check_finite("f", "A", A)
