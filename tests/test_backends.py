"""Claims of vmamba_ref/contract.py: names are checked, a missing dependency is reported with
what to install, and programs that pick for the user pick the fastest installed backend."""

import pytest

import vmamba_ref.contract as contract
from vmamba_ref import BackendUnavailableError, fastest_backend, get_ops


def test_fastest_backend_prefers_the_kernels_then_plain_pytorch(monkeypatch):
    monkeypatch.setattr(contract, "is_available", lambda name: True)
    assert fastest_backend("cpu") == "numba" and fastest_backend("cuda:0") == "triton"
    monkeypatch.setattr(contract, "is_available", lambda name: name in ("ref", "torch"))
    assert fastest_backend("cpu") == "torch" and fastest_backend("cuda") == "torch"


def test_every_installed_backend_provides_the_four_operators():
    for name in contract.available_backends():
        ops = get_ops(name)
        assert ops.name == name
        assert all(callable(f) for f in (ops.cross_scan, ops.cross_merge, ops.selective_scan, ops.ss2d_core))


def test_unknown_and_missing_backends_fail_loudly(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        get_ops("cuda")
    monkeypatch.setattr(contract, "_LOADED", {})  # a process that has loaded no backend yet
    monkeypatch.setattr(contract, "INSTALLED", dict.fromkeys(contract.INSTALLED, False))
    with pytest.raises(BackendUnavailableError, match=r"pip install 'vmamba\[triton\]'"):
        get_ops("triton")


def test_a_backend_is_loaded_once_and_its_name_checked_once(monkeypatch):
    """The network and `vmamba_fast` reach a backend through one loader; a second lookup is a
    cache hit that neither re-checks the name nor imports anything."""
    ops = get_ops("torch")
    calls = []
    monkeypatch.setattr(contract, "check_backend_name", lambda name: calls.append(name) or name)
    monkeypatch.setattr(contract.importlib, "import_module", lambda name: calls.append(name))
    assert get_ops("torch") is ops and calls == []
