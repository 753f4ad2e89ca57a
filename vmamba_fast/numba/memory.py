"""The memory library of the Numba kernels: how they reach host memory, carve their scratch and
stream their outputs.

| names                                      | what                                               |
|--------------------------------------------|----------------------------------------------------|
| `check_cpu`, `reaches_cpu_kernel`          | the device check: the kernels read host memory only |
| `as_kernel_array`, `partial_sums`          | tensors in and buffers out, as NumPy arrays        |
| `ROW_PAD`, `carve`, `take`, `take3`        | views carved out of one thread's workspace row     |
| `CACHE_LINE`, `stream_row`                 | stores that bypass the caches                      |
| `prefetch_span`                            | loads asked for ahead of the loop that needs them  |

Nothing here knows the scan: the tile layouts built from these views are in `tiles.py`. What
the non-temporal stores save is measured in `docs/kernels.md` (section "On a 2-core CPU").
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from vmamba_fast.numba.config import JIT
from vmamba_ref.contract import BackendUnavailableError

# ------------------------------------------------------------------------------------------------
# Host memory: the device check, and tensors as NumPy arrays.
# ------------------------------------------------------------------------------------------------


def check_cpu(fn: str, **tensors: object) -> None:
    """Raise if any tensor is off the CPU: the Numba kernels read host memory only. (Arguments
    that are not tensors are left to the type checks that follow.)"""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device.type != "cpu":
            raise BackendUnavailableError(
                f"{fn}: backend 'numba' runs on CPU tensors, but `{name}` is on {t.device}; "
                "pass backend='triton' for CUDA tensors, or backend='ref'"
            )


def reaches_cpu_kernel(tensors: tuple[object, ...], optional: tuple[object, ...] = ()) -> bool:
    """Whether a `vmamba::` operator called with these arguments runs its CPU (Numba) kernel:
    every one of `tensors` a CPU tensor, and every one of `optional` a CPU tensor or None.

    The operators dispatch on the device, so a call that fails this never reaches the kernel,
    which is where the arguments are checked: a tensor off the CPU would go to another device's
    kernel (a silent switch of backend) and an argument that is not a tensor would meet the
    dispatcher's schema error instead of the reference's. The public functions check such a
    call themselves; every other call is checked once, by the kernel."""
    return all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors) and all(
        t is None or (isinstance(t, torch.Tensor) and t.device.type == "cpu") for t in optional
    )


def as_kernel_array(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A C-contiguous NumPy view of `t` in `dtype`, copying only when a cast or a re-layout is
    needed (float16/bfloat16 -> float32; non-contiguous -> contiguous)."""
    return t.detach().to(dtype).contiguous().numpy()


_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def partial_sums(shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    """A zeroed NumPy buffer for the kernels' partial sums, reduced afterwards with NumPy. Both
    run on the calling thread: torch would fill and reduce these (small) buffers in parallel,
    and on a busy machine every parallel region can wait a scheduler slice for its second
    thread."""
    return np.zeros(shape, _NUMPY_DTYPE[dtype])


# ------------------------------------------------------------------------------------------------
# Scratch: each thread's row of a per-call workspace, carved into padded 2-D and 3-D views.
# ------------------------------------------------------------------------------------------------

ROW_PAD = 16  # elements added to every scratch row: at least one cache line


@intrinsic
def _pointer_at(typingctx, arr, i):
    """The address of arr[i] of a 1-D array, as a typed pointer (no bounds check)."""
    sig = types.CPointer(arr.dtype)(arr, i)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.gep(a.data, [args[1]])

    return sig, codegen


def carve(ws, offset, shape):
    """The C-contiguous array of `shape` that starts at ws[offset], a view of the 1-D ws."""
    size = math.prod(shape)
    if offset < 0 or offset + size > ws.shape[0]:
        raise IndexError("carve: the view would run past the workspace")
    return ws[offset : offset + size].reshape(shape)


@overload(carve)
def _carve_impl(ws, offset, shape):
    # ws[a:b].reshape(shape) calls Numba's generic reshape, about 90 cycles a view: a work
    # item carves 10 (forward) to 17 (backward) of them, which at VMamba-T stage 3 (768 items
    # of 196 steps) was a visible part of the kernel. carray builds the view directly.
    def impl(ws, offset, shape):
        size = 1
        for s in shape:
            size *= s
        if offset < 0 or offset + size > ws.shape[0]:
            raise IndexError("carve: the view would run past the workspace")
        return numba.carray(_pointer_at(ws, offset), shape)

    return impl


@njit(**JIT)
def take(ws, offset, rows, cols):
    """A C-contiguous (rows, cols + ROW_PAD) view of ws from `offset` and the offset after it;
    callers use the first `cols` columns. ws (S,) is one thread's row of the workspace.

    The padding keeps rows and consecutive arrays off 4 KiB multiples of each other: the
    recurrence streams 12 rows at once (4 chains x dA, dBu, state), and rows 4 KiB apart all fall in
    one set of the 8-way L1 and alias in the store-to-load forwarding, which measured 7x slower.
    """
    stride = cols + ROW_PAD
    end = offset + rows * stride
    return carve(ws, offset, (rows, stride)), end


@njit(**JIT)
def take3(ws, offset, k, rows, cols):
    """k stacked `take` views: a C-contiguous (k, rows, cols + ROW_PAD) view and the offset
    after it."""
    stride = cols + ROW_PAD
    end = offset + k * rows * stride
    return carve(ws, offset, (k, rows, stride)), end


# ------------------------------------------------------------------------------------------------
# Streaming stores: outputs that nothing reads soon go to memory without passing the caches.
# ------------------------------------------------------------------------------------------------

CACHE_LINE = 64  # bytes


@intrinsic
def _stream_line(typingctx, dst, di, src, si):
    """Store the cache line src[si : si + CACHE_LINE / itemsize] at dst[di], which must be
    CACHE_LINE-aligned, with a non-temporal store: the line goes to memory without being read
    into the cache first. dst, src: 1-D arrays of one float dtype."""
    sig = types.void(dst, di, src, si)

    def codegen(context, builder, signature, args):
        dst_ty, _, src_ty, _ = signature.args
        d = context.make_array(dst_ty)(context, builder, args[0])
        s = context.make_array(src_ty)(context, builder, args[2])
        elt = context.get_value_type(dst_ty.dtype)
        line = ir.VectorType(elt, CACHE_LINE // context.get_abi_sizeof(elt)).as_pointer()
        value = builder.load(builder.bitcast(builder.gep(s.data, [args[3]]), line), align=1)
        store = builder.store(value, builder.bitcast(builder.gep(d.data, [args[1]]), line))
        store.align = CACHE_LINE
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return sig, codegen


def stream_row(src, dst):
    """dst[:] = src[:len(dst)] for 1-D rows, bypassing the caches where the row covers whole
    cache lines (non-temporal stores): for outputs that nothing reads soon, whose lines a plain
    store would first read from memory (read for ownership), doubling the traffic."""
    dst[:] = src[: dst.shape[0]]


@overload(stream_row)
def _stream_row_impl(src, dst):
    def stream(src, dst):
        m = dst.shape[0]
        lanes = CACHE_LINE // dst.itemsize
        head = min(m, (CACHE_LINE - dst.ctypes.data % CACHE_LINE) % CACHE_LINE // dst.itemsize)
        for t in range(head):  # up to the first line boundary: plain stores
            dst[t] = src[t]
        t = head
        while t + lanes <= m:
            _stream_line(dst, t, src, t)
            t += lanes
        for tt in range(t, m):  # the partial last line
            dst[tt] = src[tt]

    return stream


# ------------------------------------------------------------------------------------------------
# Software prefetch: rows that a loop will reach in a few steps, at strides the hardware does
# not follow.
# ------------------------------------------------------------------------------------------------


@intrinsic
def _prefetch_line(typingctx, arr, i, j):
    """Ask for the cache line that holds arr[i, j] of a 2-D array, for reading, kept in every
    cache level (LLVM's prefetch: a hint that neither faults nor changes any value)."""
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], a, [args[1], args[2]])
        byte = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte] + [ir.IntType(32)] * 3), "llvm.prefetch.p0"
        )
        read, keep_everywhere, data = (ir.Constant(ir.IntType(32), v) for v in (0, 3, 1))
        builder.call(fn, [builder.bitcast(ptr, byte), read, keep_everywhere, data])
        return context.get_dummy_value()

    return sig, codegen


def prefetch_span(arr, row, c0, c1):
    """Ask the CPU to bring arr[row, c0:c1] of a C-contiguous 2-D array into the caches: every
    cache line of the span, one prefetch each. A hint only: no value changes, and in plain
    Python (`NUMBA_DISABLE_JIT=1`) it does nothing. For a loop whose next rows lie pages apart,
    where the hardware prefetchers stop (they do not cross a 4 KiB page)."""


@overload(prefetch_span, inline="always")
def _prefetch_span_impl(arr, row, c0, c1):
    def impl(arr, row, c0, c1):
        lanes = CACHE_LINE // arr.itemsize
        for c in range(c0, c1, lanes):
            _prefetch_line(arr, row, c)
        if c1 > c0:
            _prefetch_line(arr, row, c1 - 1)  # the span's last line, when c0 is not line-aligned

    return impl
