"""The network's CPU execution paths change no number (vmamba_ref/model.py, layers.py).

On the CPU the network keeps its maps channels_last, and with a fast backend in evaluation a
stage runs its batch in chunks of images (`in_chunks`: the stem with stage 1, each stage with its
downsampling). Both are claimed to be layout and scheduling only: the logits equal the plain
path's and the reference backend's.
"""

import dataclasses
import io
import math

import pytest
import torch

import vmamba_ref.model as model_module
from vmamba_ref import BackendUnavailableError, get_ops, vmamba_mini
from vmamba_ref.layers import GELU2d, Linear2d
from vmamba_ref.ss2d import SS2D
from vmamba_ref.testing.tolerances import LOW_PRECISION_LOGITS, tolerance


def assert_close(actual, expected, backend: str, what: str) -> None:
    tol = tolerance(torch.float32, backend=backend)
    torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol, msg=lambda m: f"{what}: {m}")


def _fast_backends() -> list[str]:
    names = []
    for name in ("numba", "torch"):
        try:
            get_ops(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return vmamba_mini().state_dict()


def _model(backend: str, weights) -> torch.nn.Module:
    model = vmamba_mini(backend=backend).eval()
    model.load_state_dict(weights)
    return model


def test_linear2d_equals_the_official_1x1_convolution():
    torch.manual_seed(0)
    layer = Linear2d(6, 5)
    x = torch.randn(2, 6, 3, 4)  # (b, in, h, w)
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):
        assert_close(layer(layout), layer.forward_as_conv(x), "ref", what="Linear2d")


def test_gelu2d_on_a_channels_last_map_gives_the_channel_first_bits():
    """GELU2d runs torch's GELU on the (b, h, w, c) view of a channels_last map: the bits of a
    contiguous channel-first map (the official layout), forward and backward, in the map's
    layout. (nn.GELU on the 4-D channels_last tensor takes another path with other rounding.)"""
    torch.manual_seed(0)
    x = 3 * torch.randn(2, 40, 5, 6)  # (b, c, h, w), wide enough for the vectorized loop
    dy = torch.randn_like(x)
    expected = x.clone().requires_grad_()
    y_expected = torch.nn.GELU()(expected)
    y_expected.backward(dy)
    got = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = GELU2d()(got)
    y.backward(dy)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, y_expected) and torch.equal(got.grad, expected.grad)


def test_channels_last_maps_change_no_logit(weights, monkeypatch):
    model = _model("ref", weights)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        channels_last = model(x)
        monkeypatch.setattr(model_module, "cpu_layout", lambda t: t)  # channel-first maps
        channel_first = model(x)
    assert_close(channels_last, channel_first, "ref", what="logits")


def _dense_convolutions(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]


def test_a_cpu_forward_copies_no_convolution_weight(weights):
    """The dense convolutions' weights are stored channels_last on the CPU, as the maps are
    (`layout_conv_weights_`), so no call re-lays them out, also after a checkpoint's own
    (contiguous) tensors are assigned; on another device they are contiguous again, and back on
    the CPU channels_last."""
    model = vmamba_mini(backend="ref").eval()
    model.load_state_dict({name: t.contiguous() for name, t in weights.items()}, assign=True)
    shapes = {tuple(conv.weight.shape) for conv in _dense_convolutions(model)}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as profile:
        model(x)
    weight_copies = [
        event.input_shapes for event in profile.events()
        if event.name == "aten::copy_" and any(tuple(s) in shapes for s in event.input_shapes)
    ]  # fmt: skip
    assert weight_copies == []
    model.to("meta")
    assert all(conv.weight.is_contiguous() for conv in _dense_convolutions(model))
    model.to_empty(device="cpu")
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in _dense_convolutions(model))


def test_an_ss2d_forward_copies_no_map_on_the_cpu():
    """SS2D on a channels_last map: the projections read x in place, and with the numba backend
    the core reads x and writes y channels_last, so that out_norm reads y in place too: no
    copy of a (b, d, h, w) map anywhere in the mixer (the numba core used to copy x
    channel-first and out_norm then copied y back)."""
    torch.manual_seed(0)
    mixer = SS2D(16, backend="numba").eval()
    x = torch.randn(2, 16, 6, 5).contiguous(memory_format=torch.channels_last)  # (b, c, h, w)
    size = 2 * mixer.d * 6 * 5
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as profile:
        mixer(x)
    map_copies = [
        event.input_shapes for event in profile.events()
        if event.name == "aten::copy_" and any(math.prod(s) == size for s in event.input_shapes)
    ]  # fmt: skip
    assert map_copies == []


def test_the_gradient_reaching_the_mixers_silu_is_channels_last_like_its_input():
    """In a training step on the CPU the numba core's dx comes out in x's layout, so the SiLU
    before the core gets a gradient stored like its input, channels_last: torch's elementwise
    backward with a channel-first gradient and a channels_last input takes a slower path
    (measured 8x at VMamba-T's stage 1)."""
    torch.manual_seed(0)
    mixer = SS2D(16, backend="numba").train()
    seen = []
    mixer.act.register_full_backward_hook(lambda m, grad_in, grad_out: seen.append(grad_out[0]))
    x = torch.randn(2, 16, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_()  # (b, c, h, w)
    mixer(x).sum().backward()
    [grad] = seen
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()


def test_a_model_pickles_whole_and_keeps_its_weight_layout(weights):
    """torch.save(model) and the processes of multiprocessing pickle the module itself, hooks
    included."""
    model = _model("ref", weights)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in _dense_convolutions(loaded))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))  # the same weights: the same numbers


@pytest.mark.parametrize("backend", _fast_backends())
def test_chunked_stages_give_the_reference_logits(backend, weights, monkeypatch):
    """With 16 tokens per chunk at 32 x 32, the stem, stage 1 (8 x 8 tokens) and its
    downsampling run image by image, as do stage 2 (4 x 4); stage 3 (2 x 2) runs four images,
    then the short last chunk of one; stage 4 (1 x 1) takes the whole batch of 5."""
    monkeypatch.setattr(model_module, "CHUNK_TOKENS", 16)
    model = _model(backend, weights)
    seen = {}  # module name -> the batch sizes it was called with, in order
    watched = {"stem": model.patch_embed}
    for i, stage in enumerate(model.layers):
        watched[f"stage {i + 1} blocks"] = stage.blocks
        watched[f"stage {i + 1} downsample"] = stage.downsample
    for name, module in watched.items():
        module.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, []).append(i[0].shape[0]))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        chunked = model(x)
        reference = _model("ref", weights)(x)
    one_by_one = [1, 1, 1, 1, 1]
    assert seen == {
        "stem": one_by_one,
        "stage 1 blocks": one_by_one,
        "stage 1 downsample": one_by_one,
        "stage 2 blocks": one_by_one,
        "stage 2 downsample": one_by_one,
        "stage 3 blocks": [4, 1],
        "stage 3 downsample": [4, 1],
        "stage 4 blocks": [5],
        "stage 4 downsample": [5],
    }
    assert_close(chunked, reference, backend, what=f"{backend} logits, chunked")


def test_forward_intermediates_tap_the_chunked_stages(weights, monkeypatch):
    """The stage maps come from the same chunked blocks as the logits, before the downsampling:
    equal to the maps of the plain path (a batch that fits one chunk)."""
    backend = "numba" if "numba" in _fast_backends() else "torch"
    model = _model(backend, weights)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = model.forward_intermediates(x, intermediates_only=True)
        monkeypatch.setattr(model_module, "CHUNK_TOKENS", 16)
        chunked = model.forward_intermediates(x, intermediates_only=True)
    assert [m.shape for m in chunked] == [(3, 16, 8, 8), (3, 32, 4, 4), (3, 64, 2, 2), (3, 128, 1, 1)]
    for i, (a, b) in enumerate(zip(chunked, plain, strict=True)):
        assert_close(a, b, backend, what=f"stage {i + 1} map, chunked")


@pytest.mark.parametrize("backend", ["ref", *_fast_backends()])
def test_bfloat16_on_the_cpu_scans_in_float32(backend, weights, monkeypatch):
    """Both documented bfloat16 paths (autocast, and a bfloat16 model) hand the SS2D core float32
    maps, projected in float32, and give logits within the low-precision rule."""
    model = _model(backend, weights)
    seen = []
    for module in model.modules():
        if isinstance(module, SS2D):
            core = module.ops.ss2d_core
            def recording(x, delta, *args, core=core):
                seen.append((x.dtype, delta.dtype))
                return core(x, delta, *args)
            monkeypatch.setattr(module, "ops", dataclasses.replace(module.ops, ss2d_core=recording))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(x)
        low = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    for logits in (autocast, low):
        torch.testing.assert_close(
            logits.float(), full, rtol=LOW_PRECISION_LOGITS.rtol, atol=LOW_PRECISION_LOGITS.atol
        )


@pytest.mark.skipif("numba" not in _fast_backends(), reason="numba is not installed")
def test_the_numba_backend_gets_delta_stored_channels_innermost(weights, monkeypatch):
    """With the numba backend on the CPU, SS2D.scan stores delta (b, k, d, h, w) channels
    innermost (`ScanOps.channels_last_steps`), the layout of the core's channels-in-lanes
    kernels, in inference and in training; the logits and every parameter's gradient are the
    other layout's within the tolerance table, and the logits the reference's."""
    model = _model("numba", weights)
    seen = []
    for module in model.modules():
        if isinstance(module, SS2D):
            core = module.ops.ss2d_core
            def recording(x, delta, *args, core=core):
                if x.shape[2] * x.shape[3] > 1:  # on a 1 x 1 grid both layouts are one
                    seen.append(delta.permute(0, 1, 3, 4, 2).is_contiguous() and not delta.is_contiguous())
                return core(x, delta, *args)
            monkeypatch.setattr(module, "ops", dataclasses.replace(module.ops, ss2d_core=recording))
    x = torch.randn(2, 3, 32, 32)

    def logits_and_grads():
        with torch.no_grad():
            logits = model(x)
        model.zero_grad()
        model(x).square().sum().backward()
        return logits, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    innermost, innermost_grads = logits_and_grads()
    assert seen and all(seen)
    seen.clear()
    for module in model.modules():
        if isinstance(module, SS2D):
            module.ops = dataclasses.replace(module.ops, channels_last_steps=False)
    channel_major, channel_major_grads = logits_and_grads()
    assert seen and not any(seen)
    with torch.no_grad():
        reference = _model("ref", weights)(x)
    assert_close(innermost, channel_major, "numba", what="logits, delta channels innermost")
    assert_close(innermost, reference, "numba", what="logits against the reference backend")
    assert innermost_grads.keys() == channel_major_grads.keys()
    tol = tolerance(torch.float32, grad=True, backend="numba")
    for name, grad in innermost_grads.items():
        torch.testing.assert_close(grad, channel_major_grads[name], rtol=tol.rtol, atol=tol.atol, msg=name)


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed-batch", "dynamic-batch"])
def test_compiled_model_chunks_or_not_and_gives_the_same_logits(dynamic, weights, monkeypatch):
    """torch.compile traces the chunked stages for a fixed batch and the whole batch for a
    symbolic one; both graphs compile without a break and give the eager logits."""
    monkeypatch.setattr(model_module, "CHUNK_TOKENS", 16)
    backend = "numba" if "numba" in _fast_backends() else "torch"
    model = _model(backend, weights)
    x = torch.randn(3, 3, 32, 32)
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=dynamic)
    with torch.no_grad():
        assert_close(compiled(x), model(x), backend, what=f"compiled logits, dynamic={dynamic}")
