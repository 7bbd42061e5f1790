"""tinyhd.cpu_train: the channels-last CPU training path computes PyTorch's default step (loss, gradients, BN
buffers) up to float32 rounding, and leaves the model as it found it."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tinyhd
import tinyhd.cpu_train as cpu_train
from tinyhd.cpu_train import (BatchNormAct3d, DepthwiseConv3d, batch_norm_act, cpu_training, depthwise_conv3d,
                              pointwise_conv3d)

CL = torch.channels_last_3d


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    a, b = a.detach(), b.detach()
    scale = b.abs().max().clamp_min(1e-6)
    assert float((a - b).abs().max() / scale) < rtol, float((a - b).abs().max() / scale)


def _need_kernel(name: str) -> None:
    from tinyhd.kernels import cpu_kernels

    k = cpu_kernels()
    if k is None or not hasattr(k, name):
        pytest.skip(f"the C++ kernels ({name}) are not built on this machine")


@pytest.mark.parametrize("C", [1, 2, 4, 14, 56, 68])
@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("use_kernels", [False, True])
def test_batch_norm_act_matches_batchnorm3d_then_relu6(C, act, momentum, use_kernels):
    if use_kernels:
        _need_kernel("bn_act_forward")
    torch.manual_seed(C)
    ref = nn.BatchNorm3d(C, momentum=momentum)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.uniform_(-1.0, 1.0)
        ref.running_mean.uniform_(-1, 1)
    ours = copy.deepcopy(ref)
    T = 1 if C == 14 else 3  # T = 1: strides that are both contiguous and channels-last in T
    x = (torch.randn(2, C, T, 6, 8) * 3 + 5).contiguous(memory_format=CL)  # offset mean: a cancellation check
    g = torch.randn(2, C, T, 6, 8)                                          # contiguous, unlike x
    if C == 2:
        g = torch.randn(2, C, T, 6, 1).expand(2, C, T, 6, 8)                # expanded: stride 0 in W
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = ref(xa)
    ya = F.relu6(ya) if act else ya
    yb = batch_norm_act(xb, ours, act, use_kernels)
    assert yb.is_contiguous(memory_format=CL)
    _close(yb, ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    _close(xb.grad, xa.grad)
    _close(ours.weight.grad, ref.weight.grad)
    _close(ours.bias.grad, ref.bias.grad)
    for name in ("running_mean", "running_var"):
        _close(getattr(ours, name), getattr(ref, name), 1e-5)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 1


def test_batch_norm_act_on_a_tensor_larger_than_the_cache():
    """Outputs over 32 MiB are written with non-temporal stores (bn_detail::map_rows): same values as BatchNorm3d
    + ReLU6 in float64. (PyTorch's float32 BatchNorm itself is ~4e-4 off at this size, so it is not the yardstick.)"""
    _need_kernel("bn_act_forward")
    torch.manual_seed(0)
    ref = nn.BatchNorm3d(14)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.uniform_(-1.0, 1.0)
    ours = copy.deepcopy(ref)
    ref = ref.double()
    x = (torch.randn(1, 14, 8, 129, 775) * 3 + 1).contiguous(memory_format=CL)  # 45 MB, odd number of 112-float rows
    g = torch.randn_like(x)
    xa, xb = x.double().requires_grad_(), x.clone().requires_grad_()
    ya = F.relu6(ref(xa))
    yb = batch_norm_act(xb, ours, True, True)
    _close(yb.double(), ya, 1e-5)
    (ya * g.double()).sum().backward()
    (yb * g).sum().backward()
    _close(xb.grad.double(), xa.grad, 1e-5)
    _close(ours.weight.grad.double(), ref.weight.grad, 1e-5)
    _close(ours.bias.grad.double(), ref.bias.grad, 1e-5)


@pytest.mark.parametrize("stride,padding,kernel", [((1, 1, 1), (1, 1, 1), (3, 3, 3)), ((2, 1, 1), (1, 1, 1), (3, 3, 3)),
                                                   ((1, 2, 2), (0, 1, 1), (2, 3, 3)), ((2, 2, 2), (1, 1, 1), (3, 3, 3)),
                                                   ((1, 1, 1), (0, 1, 1), (1, 3, 3))])
@pytest.mark.parametrize("use_kernels", [False, True])
def test_depthwise_conv3d_gradients(stride, padding, kernel, use_kernels):
    if use_kernels:
        _need_kernel("dw_conv3d_backward")
    torch.manual_seed(0)
    C = 20
    x = torch.randn(2, C, 5, 7, 9).contiguous(memory_format=CL)
    w = torch.randn(C, 1, *kernel)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    ya = F.conv3d(xa, wa, None, stride, padding, 1, C)
    yb = depthwise_conv3d(xb, wb, stride, padding, use_kernels)
    _close(yb, ya)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    _close(xb.grad, xa.grad)
    _close(wb.grad, wa.grad)


def _step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    loss = out.saliency.mean() + sum((m * m).mean() for m in out.maps)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("use_kernels,reduction", [(False, 4), (True, 4), (True, 1)])
def test_a_tinyhd_step_matches_the_default_path(use_kernels, reduction):
    torch.manual_seed(0)
    ref = tinyhd.TinyHD(output="multi", reduction=reduction).train()
    ours, ref_cl, ref64 = copy.deepcopy(ref), copy.deepcopy(ref), copy.deepcopy(ref).double()
    x = torch.randn(2, 3, 16, 64, 96)
    loss_a = _step(ref, x)
    _step(ref64, x.double())
    _step(ref_cl.to(memory_format=CL), x.contiguous(memory_format=CL))   # PyTorch's own channels-last path
    with cpu_training(ours, use_kernels=use_kernels) as m:
        kinds = {type(mod) for mod in m.modules()}
        assert DepthwiseConv3d in kinds and BatchNormAct3d in kinds
        assert all(p.is_contiguous(memory_format=CL) for p in m.parameters() if p.dim() == 5)
        loss_b = _step(m, x.contiguous(memory_format=CL))
    _close(loss_b, loss_a, 1e-5)
    # (Run at the suite's one thread. On two threads oneDNN's own rounding moves: the worst parameter here,
    # encoder.features.15.conv.0.0.weight, is off by 1.2e-4 of |g| 9.1e-4 in PyTorch's channels-last path on one
    # thread and in ours on two, by ~1e-5 otherwise.)
    # float32 rounding already moves PyTorch's gradients by up to ~2 % of the early encoder layers' (measured
    # against a float64 step), so ours are held to the float64 step with PyTorch's own float32 error as the
    # yardstick: at most 4× the larger of the default and channels-last paths' error, plus 1e-5 of the largest
    # gradient for the ones that vanish analytically (a bias before a BatchNorm). A wrong BN or depthwise
    # backward is off by the size of the gradients themselves.
    pa, pb, pc, p64 = (dict(m_.named_parameters()) for m_ in (ref, ours, ref_cl, ref64))
    scale = max(float(p.grad.abs().max()) for p in p64.values())
    assert scale > 1e-2
    for name, p in p64.items():
        g64 = p.grad.float()
        err = {k: float((d[name].grad - g64).abs().max()) for k, d in (("ours", pb), ("default", pa), ("cl", pc))}
        assert err["ours"] <= 4 * max(err["default"], err["cl"]) + 1e-5 * scale, (name, err)
    # the BN buffers, with the same yardstick: the statistics of a layer fed by a 960-term pointwise
    # convolution move by ~1e-6 between PyTorch's own contiguous and channels-last paths, and the kernel sums
    # ~2e5 values per channel in float32 chunks (PyTorch in double): a few 1e-6 of the variance
    sa, sb, sc, s64 = (m_.state_dict() for m_ in (ref, ours, ref_cl, ref64))
    assert list(sa) == list(sb)
    for name, t in sa.items():
        if t.is_floating_point():
            t64 = s64[name].float()
            err = {k: float((d[name] - t64).abs().max()) for k, d in (("ours", sb), ("default", sa), ("cl", sc))}
            assert err["ours"] <= 4 * max(err["default"], err["cl"]) + 1e-6 + 1e-5 * float(t64.abs().max()), \
                (name, err)
        else:
            assert torch.equal(sb[name], t), name
    # restored: plain module classes, contiguous parameters, and the same function in eval mode
    assert {type(mod) for mod in ours.modules()} == {type(mod) for mod in ref.modules()}
    assert all(p.is_contiguous() for p in ours.parameters())
    ref.eval(), ours.eval()
    with torch.no_grad():
        _close(ours(x[:1]).saliency, ref(x[:1]).saliency, 1e-4)


def test_classes_are_restored_after_an_error():
    model = tinyhd.TinyHD(output="single", reduction=4)
    before = [type(m) for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with cpu_training(model):
            raise RuntimeError("boom")
    assert [type(m) for m in model.modules()] == before


def test_eval_and_contiguous_inputs_take_pytorchs_path():
    torch.manual_seed(0)
    model = tinyhd.TinyHD(output="single", reduction=4)
    ref = copy.deepcopy(model).eval()
    x = torch.randn(1, 3, 16, 64, 96)
    with cpu_training(model) as m:
        m.eval()
        with torch.no_grad():
            _close(m(x).saliency, ref(x).saliency, 1e-5)               # eval: running stats, clamp kept


def test_a_block_left_open_does_not_abort_the_interpreter_at_exit():
    """An ExitStack that still holds cpu_training when the process ends (a script, a notebook kernel) is closed
    by the interpreter's shutdown; restoring the gradients then aborted with PyTorch's THPVariable_clear assert
    (exit code 134). The process must end normally."""
    import os
    import subprocess
    import sys

    code = """
import contextlib, torch, tinyhd
from tinyhd.cpu_train import cpu_training
torch.manual_seed(0)
m = tinyhd.TinyHD(output="multi", reduction=4)
stack = contextlib.ExitStack()
stack.enter_context(cpu_training(m, use_kernels=False))
m(torch.randn(1, 3, 16, 64, 96).contiguous(memory_format=torch.channels_last_3d)).saliency.mean().backward()
print("trained")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "trained" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("shape", [(2, 28, 3, 6, 10), (1, 136, 1, 4, 4), (2, 8, 1, 1, 1)])
@pytest.mark.parametrize("use_kernels", [True, False])
def test_pixel_shuffle2_is_the_encoders_shuffle_both_ways(shape, use_kernels):
    """The C++ shuffle and its inverse are pure permutations: values and gradients bit-equal to PyTorch's."""
    from tinyhd.cpu_train import pixel_shuffle2
    from tinyhd.encoder import pixel_shuffle_frames

    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = pixel_shuffle2(a, use_kernels), pixel_shuffle_frames(b, 2)
    assert ya.shape == yb.shape and torch.equal(ya, yb)
    if use_kernels:  # the kernel writes channels-last (PyTorch's path: whatever its view gives)
        assert ya.is_contiguous(memory_format=torch.channels_last_3d)
    g = torch.randn(ya.shape)  # contiguous: the backward makes it channels-last first
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("shape,grad_strides", [
    ((2, 320, 1, 2, 3), (1920, 1, 320, 960, 320)),  # the 1-frame encoder end: made channels-last, our kernel
    ((1, 6, 1, 1, 5), (30, 1, 6, 6, 6)),            # 30 values, not whole rows of lcm(6, 16): PyTorch's path
])
def test_batchnorm_gradient_with_nonstandard_size1_strides(shape, grad_strides):
    """PyTorch 2.14.1's CPU BatchNorm backward returns a wrong input gradient (off by ~100 %) when the input or
    the incoming gradient is channels-last with a non-standard stride on a size-1 dimension, which hardtanh's
    backward produces from a channel slice of a channels-last gradient (seen at the encoder's last layer when
    Up_s was swapped). BatchNormAct3d must give the right gradient for any layout of either."""
    torch.manual_seed(0)
    x = torch.randn(shape)                                                # contiguous
    g = torch.empty_strided(shape, grad_strides).copy_(torch.randn(shape))
    ref = nn.BatchNorm3d(shape[1]).train()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_(0.0, 0.5)
    ours = copy.deepcopy(ref)
    ours.__class__ = BatchNormAct3d
    ours.fused_act = True
    r64 = copy.deepcopy(ref).double()
    x64 = x.double().requires_grad_(True)
    F.relu6(r64(x64)).backward(g.double().contiguous())
    xb = x.clone().requires_grad_(True)
    ours(xb).backward(g)
    assert torch.allclose(xb.grad.double(), x64.grad, atol=1e-5 * float(x64.grad.abs().max())), \
        float((xb.grad.double() - x64.grad).abs().max())
    assert torch.allclose(ours.weight.grad.double(), r64.weight.grad, atol=1e-5 * float(r64.weight.grad.abs().max()))


@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_layers_run_in_onednn_on_one_thread(bias, monkeypatch):
    """With one thread PyTorch sends a 1×1×1 convolution of < 16 clips to its reference slow_conv3d (copying
    channels-last tensors to contiguous and back, 4–8× slower); ChannelsLastConv3d folds it into a 1×1 conv2d
    that oneDNN runs, with the same output and gradients. With two threads it is left to PyTorch."""
    calls = []
    monkeypatch.setattr(cpu_train, "pointwise_conv3d", lambda *a: calls.append(1) or pointwise_conv3d(*a))
    torch.manual_seed(0)
    conv = nn.Conv3d(14, 6, 1, bias=bias)
    ref = copy.deepcopy(conv).double()
    x, g = torch.randn(2, 14, 4, 8, 12), torch.randn(2, 6, 4, 8, 12)
    x64 = x.double().requires_grad_()
    y_ref = ref(x64)
    y_ref.backward(g.double())
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            calls.clear()
            with cpu_training(conv) as m:
                xc = x.contiguous(memory_format=CL).requires_grad_()
                with torch.profiler.profile() as prof:
                    y = m(xc)
                    y.backward(g.contiguous(memory_format=CL))
                ops = {e.key for e in prof.key_averages()}
                assert "aten::slow_conv3d_forward" not in ops and "aten::mkldnn_convolution" in ops, (n, ops)
                assert len(calls) == (1 if n == 1 else 0)
                assert y.shape == y_ref.shape and y.is_contiguous(memory_format=CL)
                _close(y, y_ref.float(), 1e-5)
                _close(xc.grad, x64.grad.float(), 1e-5)
                for name, p in ref.named_parameters():
                    _close(dict(m.named_parameters())[name].grad, p.grad.float(), 1e-5)
                    dict(m.named_parameters())[name].grad = None
    finally:
        torch.set_num_threads(threads)


def test_pointwise_conv3d_declines_what_it_cannot_fold():
    w = torch.randn(3, 4, 1, 1, 1)
    assert pointwise_conv3d(torch.randn(2, 4, 2, 4, 4), w) is None                        # not channels-last
    assert pointwise_conv3d(torch.randn(16, 4, 1, 2, 2).contiguous(memory_format=CL), w) is None   # 16 clips
    assert pointwise_conv3d(torch.randn(1, 4, 1, 1, 13).contiguous(memory_format=CL), w) is None   # 13 pixels
    x = torch.randn(1, 4, 1, 4, 17).contiguous(memory_format=CL)                           # 68 = 17 · 4
    _close(pointwise_conv3d(x, w), F.conv3d(x, w), 1e-6)
