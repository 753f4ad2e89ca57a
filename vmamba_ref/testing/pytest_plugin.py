"""Opt-in pytest plugin: the kit's checks as fixtures, and `--vmamba-examples N`.

Enable it explicitly; installing the package never registers it:

    pytest -p vmamba_ref.testing.pytest_plugin            # on the command line, or
    pytest_plugins = ["vmamba_ref.testing.pytest_plugin"]   # in your top-level conftest.py

Fixtures:

| fixture                | gives                                                              |
|------------------------|--------------------------------------------------------------------|
| `check_cross_scan`     | `check_cross_scan`, with `max_examples` from `--vmamba-examples`   |
| `check_cross_merge`    | the same for cross_merge                                           |
| `check_selective_scan` | the same for selective_scan                                        |
| `check_ss2d_core`      | the same for ss2d_core                                             |
| `check_kernel`         | `check_kernel(fn, op, ...)`, the same way                          |
| `vmamba_examples`      | the `--vmamba-examples` value, or None                             |
| `nan_empty`            | activates `nan_filled_empty()` for the test: fresh buffers are NaN |

A `max_examples=` passed to a check function wins over the command-line option.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import vmamba_ref.testing.properties as properties
from vmamba_ref.testing.nan_buffers import nan_filled_empty


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add `--vmamba-examples N`."""
    group = parser.getgroup("vmamba", "vmamba_ref.testing kernel property tests")
    group.addoption(
        "--vmamba-examples",
        dest="vmamba_examples",
        type=int,
        default=None,
        metavar="N",
        help="examples per vmamba_ref.testing check (default: the Hypothesis profile's)",
    )


@pytest.fixture
def vmamba_examples(request: pytest.FixtureRequest) -> int | None:
    """The `--vmamba-examples` value, or None when not given."""
    return request.config.getoption("vmamba_examples")


def _with_examples(check: Callable[..., Any], examples: int | None) -> Callable[..., Any]:
    if examples is None:
        return check

    @functools.wraps(check)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("max_examples", examples)
        return check(*args, **kwargs)

    return wrapped


@pytest.fixture
def check_kernel(vmamba_examples: int | None) -> Callable[..., properties.CheckReport]:
    """`properties.check_kernel` with `--vmamba-examples` as the default `max_examples`."""
    return _with_examples(properties.check_kernel, vmamba_examples)


@pytest.fixture
def check_cross_scan(vmamba_examples: int | None) -> Callable[..., properties.CheckReport]:
    """`properties.check_cross_scan` with `--vmamba-examples` as the default `max_examples`."""
    return _with_examples(properties.check_cross_scan, vmamba_examples)


@pytest.fixture
def check_cross_merge(vmamba_examples: int | None) -> Callable[..., properties.CheckReport]:
    """`properties.check_cross_merge` with `--vmamba-examples` as the default `max_examples`."""
    return _with_examples(properties.check_cross_merge, vmamba_examples)


@pytest.fixture
def check_selective_scan(vmamba_examples: int | None) -> Callable[..., properties.CheckReport]:
    """`properties.check_selective_scan` with `--vmamba-examples` as the default `max_examples`."""
    return _with_examples(properties.check_selective_scan, vmamba_examples)


@pytest.fixture
def check_ss2d_core(vmamba_examples: int | None) -> Callable[..., properties.CheckReport]:
    """`properties.check_ss2d_core` with `--vmamba-examples` as the default `max_examples`."""
    return _with_examples(properties.check_ss2d_core, vmamba_examples)


@pytest.fixture
def nan_empty() -> Iterator[None]:
    """Fresh floating-point buffers from torch.empty* / numpy.empty* are NaN during the test."""
    with nan_filled_empty():
        yield
