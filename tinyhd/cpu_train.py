"""CPU training in channels-last memory: the same gradients as PyTorch's default path, fewer seconds per step.

Training TinyHD on a CPU with PyTorch's defaults (contiguous N×C×T×H×W tensors) spends most of a step in
oneDNN's *backward* of the depthwise 3D convolutions and of the 1×1×1 convolutions with few channels
(profile of one TinyHD-M step, batch 2, 192×256, 2 threads: ``aten::convolution_backward`` 62 % of 16.9 s).
:func:`cpu_training` changes three things, in place and reversibly, while a model trains:

1. **Channels-last 3D memory** (N, T, H, W, C order) for the parameters and activations: oneDNN's channels-last
   kernels are several times faster on these layers (measured above: 16.9 → 11.8 s per step). The pixel
   shuffles keep it (:func:`tinyhd.encoder.pixel_shuffle_frames` on channels-last input).
2. **Depthwise convolutions** (``groups == in == out channels``) run oneDNN's forward, which is fast, and a
   C++ backward (``dw_conv3d_backward`` in ``tinyhd/csrc/cpu_kernels.cpp``): oneDNN's channels-last depthwise
   backward is ~18× slower than its forward. Without the compiled kernels (see :mod:`tinyhd.kernels`) the
   backward is ``aten::convolution_backward``, the same as PyTorch's.
3. **BatchNorm (+ the ReLU6 after it) in one function** that views a channels-last tensor as rows of
   ``lcm(C, 16)`` floats: PyTorch's channels-last BatchNorm vectorises over channels, which is scalar code for
   the decoders' full-resolution layers with 2, 4 or 14 channels (~7× slower than contiguous). The statistics,
   the running-average update (unbiased variance, ``momentum``, ``num_batches_tracked``) and the gradients are
   those of :class:`torch.nn.BatchNorm3d` followed by :class:`torch.nn.ReLU6`.
4. **2× pixel shuffles** (the encoder's groups, the decoders' :class:`tinyhd.encoder.PixelShuffle3d`) are one
   C++ copy forward and one backward (:func:`pixel_shuffle2`), bit-identical to PyTorch's.
5. **One thread:** PyTorch sends 1×1×1 convolutions to its slow reference kernel when single-threaded;
   :class:`ChannelsLastConv3d` then runs them as one oneDNN ``conv2d`` (:func:`pointwise_conv3d`). TinyHD-M
   steps at one thread (batch 2, 2026-11-22): 7.8 → 3.2 s at 192×256, 0.80 → 0.47 s at 64×96, 0.32 → 0.22 s
   at 32×64 (the notebooks' reduced scale).

Measured on this repo's 2-core Zen 4 CPU (TinyHD-M, batch 2, 16×192×256, SGD step, 2 threads; 2026-11-21):
PyTorch's default path 16.9 s per step → channels-last 11.8 s → + the depthwise backward kernel 4.2 s → + the
BatchNorm kernel 3.4–3.9 s → + :func:`tinyhd.fast.keep_freed_memory` (the trainer calls it on a CPU: activation
pages are reused instead of re-faulted every step) 2.1 s → + Up_t as a matrix product over the frames
(:class:`tinyhd.fast.TemporalUpsample2x`, which PyTorch differentiates like the trilinear ``nn.Upsample``)
**1.8 s**, i.e. ~9× faster; the pixel-shuffle kernel took another 0.12 s off (1.86 → 1.74 s, the two
alternating in one process; absolute times on this shared machine drift by ±10 % over a day). Plain
``nn.Conv3d`` layers only get channels-last inputs (:class:`ChannelsLastConv3d`); Up_s stays PyTorch's
trilinear ``nn.Upsample``. (Swapping Up_s too once gave wrong encoder gradients: the layouts it produced sent
PyTorch's BatchNorm backward a gradient on which it is wrong — see :class:`BatchNormAct3d`, which now guards
against it; whether Up_s as :class:`tinyhd.fast.SpatialUpsample2x` pays in training is not measured.)

Module classes are swapped (``__class__``), not replaced, so names, parameters and state dicts are untouched
and checkpoints written during training are ordinary TinyHD checkpoints. ``tests/test_cpu_train.py`` checks
that a step gives the default path's loss, gradients and BN buffers (float32 rounding), and
``benchmarks/distill_step.py`` measures the effect (``--train-path``).
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tinyhd.encoder import MobileNetV2Encoder3d, PixelShuffle3d, pixel_shuffle_frames

__all__ = ["cpu_training", "DepthwiseConv3d", "ChannelsLastConv3d", "BatchNormAct3d", "KernelShuffleEncoder",
           "KernelPixelShuffle3d", "depthwise_conv3d", "batch_norm_act", "pixel_shuffle2", "pointwise_conv3d"]


_is_finalizing = sys.is_finalizing  # bound at import: at interpreter exit the module globals may be gone


def _kernels():
    from tinyhd.kernels import cpu_kernels

    return cpu_kernels()


# ----------------------------------------------------------------------------------------------------------
# Depthwise convolution: oneDNN forward, C++ backward
# ----------------------------------------------------------------------------------------------------------
class _DepthwiseConv3dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int, int],
                padding: tuple[int, int, int], use_kernels: bool) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (tuple(stride), tuple(padding), use_kernels)
        return F.conv3d(x, weight, None, stride, padding, 1, weight.shape[0])     # N×C×T'×H'×W'

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, use_kernels = ctx.conf
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        kernels = _kernels() if use_kernels else None
        if kernels is not None and x.dtype == torch.float32 and grad_out.dtype == torch.float32:
            gx, gw = kernels.dw_conv3d_backward(x, grad_out.contiguous(memory_format=torch.channels_last_3d),
                                                weight, list(stride), list(padding), need_x, need_w)
        else:
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(stride), list(padding), [1, 1, 1], False, [0, 0, 0],
                weight.shape[0], [need_x, need_w, False])
        return (gx if need_x else None), (gw if need_w else None), None, None, None


def depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, stride=(1, 1, 1), padding=(0, 0, 0),
                     use_kernels: bool = True) -> torch.Tensor:
    """``F.conv3d(x, weight, stride=stride, padding=padding, groups=C)`` (no bias, dilation 1) whose backward
    runs the C++ kernel when it is available. x: N×C×T×H×W, weight: C×1×kt×kh×kw."""
    return _DepthwiseConv3dFn.apply(x, weight, tuple(stride), tuple(padding), use_kernels)


class DepthwiseConv3d(nn.Conv3d):
    """A :class:`torch.nn.Conv3d` with ``groups == in == out`` whose backward is :func:`depthwise_conv3d`'s
    (set by :func:`cpu_training` through ``__class__``; the module is otherwise unchanged)."""

    use_kernels = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_plain_depthwise(self) or not torch.is_grad_enabled() or x.device.type != "cpu":
            return super().forward(x)
        y = depthwise_conv3d(x, self.weight, self.stride, self.padding, self.use_kernels)
        return y if self.bias is None else y + self.bias.view(-1, 1, 1, 1)


class ChannelsLastConv3d(nn.Conv3d):
    """A :class:`torch.nn.Conv3d` (set by :func:`cpu_training`) that makes a training input channels-last first:
    the MIMO fusion's input is a concatenation with D1's maps expanded along T, which ``torch.cat`` returns
    contiguous, and oneDNN's backward of the 6 → 1 convolution on it took 155 ms instead of ~20. With one CPU
    thread a pointwise layer runs as :func:`pointwise_conv3d` (see there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 5:
            if torch.is_grad_enabled():
                x = x.contiguous(memory_format=torch.channels_last_3d)
            if torch.get_num_threads() == 1 and _is_pointwise(self):
                y = pointwise_conv3d(x, self.weight, self.bias)
                if y is not None:
                    return y
        return super().forward(x)


def _is_pointwise(conv: nn.Conv3d) -> bool:
    return (tuple(conv.kernel_size) == (1, 1, 1) and tuple(conv.stride) == (1, 1, 1) and conv.groups == 1
            and tuple(conv.dilation) == (1, 1, 1) and not isinstance(conv.padding, str)
            and tuple(conv.padding) == (0, 0, 0))


def pointwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                     ) -> torch.Tensor | None:
    """``F.conv3d(x, weight, bias)`` for a 1×1×1 kernel (stride 1, no padding) on a channels-last CPU input, as
    one 1×1 ``conv2d`` over the N·T·H·W pixels cut into B ≥ 16 rows (a view, no copy); None when the input is
    not channels-last, has 16 or more clips already, or its pixel count has no divisor B in [16, 64].

    Why: with one thread and fewer than 16 clips PyTorch (2.14) sends 1×1 convolutions to its reference
    ``slow_conv3d`` instead of oneDNN ("THNN is faster when single-threaded"), which on channels-last tensors
    also copies them to contiguous and back: TinyHD-M's pointwise layers took 4–8× longer forward + backward
    (28 → 56 channels at 2×8×96×128: 169 ms vs 36 ms this way). A batch of B ≥ 16 images goes to oneDNN. With
    more threads PyTorch already picks oneDNN, and :class:`ChannelsLastConv3d` only folds with one thread.
    """
    N, C, T, H, W = x.shape
    if N >= 16 or not x.is_contiguous(memory_format=torch.channels_last_3d):
        return None
    M = N * T * H * W
    B = next((b for b in range(16, 65) if M % b == 0), None)
    if B is None:
        return None
    Co = weight.shape[0]
    x4 = x.permute(0, 2, 3, 4, 1).reshape(B, M // B, C).permute(0, 2, 1).unsqueeze(2)   # B×C×1×S, a view
    y4 = F.conv2d(x4, weight.view(Co, C, 1, 1))                                       # B×Co×1×S
    if bias is not None:  # added apart: oneDNN's float32 bias gradient over ~10⁵ pixels is ~100× less exact
        y4 = y4 + bias.view(1, Co, 1, 1)
    return y4.permute(0, 2, 3, 1).reshape(N, T, H, W, Co).permute(0, 4, 1, 2, 3)      # N×Co×T×H×W


def _is_plain_depthwise(conv: nn.Conv3d) -> bool:
    return (conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
            and tuple(conv.dilation) == (1, 1, 1) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


# ----------------------------------------------------------------------------------------------------------
# BatchNorm (+ ReLU6) on channels-last tensors
# ----------------------------------------------------------------------------------------------------------
def _lanes(channels: int) -> int:
    """Row length of the lane view: the smallest multiple of 16 floats (one AVX-512 register) holding whole
    channel groups, lcm(C, 16)."""
    return channels * 16 // math.gcd(channels, 16)


def _lane_view(t: torch.Tensor) -> torch.Tensor | None:
    """A channels-last N×C×T×H×W tensor as a (numel/L)×L matrix whose column j is channel j mod C, or None."""
    C = t.shape[1]
    L = _lanes(C)
    rows = t.permute(0, 2, 3, 4, 1)   # N×T×H×W×C; contiguous iff channels-last (size-1 dims' strides ignored)
    if t.numel() % L or not rows.is_contiguous():
        return None
    return rows.view(-1, L)


def _fold(lanes: torch.Tensor, channels: int) -> torch.Tensor:
    """Sum the L lane values of each channel: L → C."""
    return lanes.view(-1, channels).sum(0)


def _tile(v: torch.Tensor, L: int) -> torch.Tensor:
    return v.repeat(L // v.numel())


class _BatchNormActFn(torch.autograd.Function):
    """Training-mode BatchNorm over N, T, H, W (+ ReLU6 when ``act``) on a lane view; returns y, puts the batch
    (mean, biased variance) in ``stats_out`` and saves (x, mean, 1/σ) for the backward, which recomputes the
    ReLU6 mask from x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, act: bool,
                stats_out: list, use_kernels: bool) -> torch.Tensor:
        C = x.shape[1]
        M = x.numel() // C
        v = _lane_view(x)                                                    # R×L
        L = v.shape[1]
        kernels = _kernels() if use_kernels else None
        if kernels is not None and hasattr(kernels, "bn_act_forward"):
            rows = x.permute(0, 2, 3, 4, 1)                                  # N×T×H×W×C, contiguous
            y2, mean, var = kernels.bn_act_forward(rows.reshape(-1, C).contiguous(), weight.detach(), bias.detach(), eps, act)
            y = y2.view(rows.shape).permute(0, 4, 1, 2, 3)                   # channels-last
            invstd = (var + eps).rsqrt()
        else:
            shift = v[0].view(-1, C)[0].detach()                             # C: a sample value per channel
            d = v - _tile(shift, L)
            s1, s2 = _fold(d.sum(0), C).double(), _fold((d * d).sum(0), C).double()
            mean64 = s1 / M
            var = (s2 / M - mean64 * mean64).clamp_min(0)
            mean = (mean64 + shift.double()).float()
            var = var.float()
            invstd = (var + eps).rsqrt()
            a = weight * invstd
            b = bias - mean * a
            yv = torch.addcmul(_tile(b, L), v, _tile(a, L))
            if act:
                yv.clamp_(0.0, 6.0)
            y = yv.view(x.shape[0], x.shape[2], x.shape[3], x.shape[4], C).permute(0, 4, 1, 2, 3)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.act, ctx.use_kernels = act, use_kernels
        stats_out.extend([mean, var])
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        act = ctx.act
        C = x.shape[1]
        M = x.numel() // C
        kernels = _kernels() if ctx.use_kernels else None
        if kernels is not None and hasattr(kernels, "bn_act_backward"):
            rows = x.permute(0, 2, 3, 4, 1)
            g2 = grad_y.permute(0, 2, 3, 4, 1).reshape(-1, C).contiguous()  # may arrive in any layout (or expanded)
            gx2, gw, gb = kernels.bn_act_backward(g2, rows.reshape(-1, C).contiguous(),
                                                  weight.detach(), bias.detach(), mean, invstd, act)
            gx = gx2.view(rows.shape).permute(0, 4, 1, 2, 3)
        else:
            L = _lanes(C)
            v = x.permute(0, 2, 3, 4, 1).reshape(-1, L)
            g = grad_y.permute(0, 2, 3, 4, 1).reshape(-1, L)                 # a copy only if not channels-last
            a = weight * invstd
            b = bias - mean * a
            if act:
                y = torch.addcmul(_tile(b, L), v, _tile(a, L))
                g = g * ((y > 0) & (y < 6))                                  # d ReLU6 (0 at the clamps)
            s1 = _fold(g.sum(0), C)                                          # Σ g_y
            s2 = invstd * _fold((g * (v - _tile(mean, L))).sum(0), C)        # Σ g_y x̂ (centred: no cancellation)
            gw, gb = s2, s1
            c2 = -weight * invstd * invstd * s2 / M
            c3 = -c2 * mean - a * s1 / M
            gxv = torch.addcmul(_tile(c3, L), v, _tile(c2, L))
            gxv.addcmul_(g, _tile(a, L))                                     # γ/σ (g − Σg/M − x̂ Σg x̂/M)
            gx = gxv.view(x.shape[0], x.shape[2], x.shape[3], x.shape[4], C).permute(0, 4, 1, 2, 3)
        return gx, gw, gb, None, None, None, None


def batch_norm_act(x: torch.Tensor, bn: nn.BatchNorm3d, act: bool, use_kernels: bool = True) -> torch.Tensor:
    """``ReLU6(bn(x))`` (``act``) or ``bn(x)`` for a training-mode, affine BatchNorm3d with running statistics,
    updating ``bn``'s buffers as :class:`torch.nn.BatchNorm3d` does. x: N×C×T×H×W channels-last float32."""
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    stats: list = []
    y = _BatchNormActFn.apply(x, bn.weight, bn.bias, bn.eps, act, stats, use_kernels)
    mean, var = stats
    with torch.no_grad():
        M = x.numel() // x.shape[1]
        var_unbiased = var * (M / max(M - 1, 1))
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var_unbiased.to(bn.running_var.dtype), alpha=momentum)
    return y


class BatchNormAct3d(nn.BatchNorm3d):
    """A :class:`torch.nn.BatchNorm3d` (set through ``__class__`` by :func:`cpu_training`) that also applies the
    ReLU6 which followed it when ``fused_act`` is set (that ReLU6 then becomes :class:`_PassThrough`), and runs
    :func:`batch_norm_act` on channels-last training inputs. Anything else (eval mode, contiguous input, no
    affine or running stats, autocast) takes PyTorch's path."""

    fused_act = False
    use_kernels = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and self.affine and self.track_running_stats and x.dtype == torch.float32
                and x.device.type == "cpu" and self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and x.dim() == 5 and x.numel() > x.shape[1]):
            if _lane_view(x) is None:  # e.g. a contiguous 1-frame tensor after an ambiguous-stride convolution
                x = x.contiguous(memory_format=torch.channels_last_3d)
            if _lane_view(x) is not None:
                return batch_norm_act(x, self, self.fused_act, self.use_kernels)
        if torch.is_grad_enabled() and x.device.type == "cpu" and x.requires_grad:
            # PyTorch's CPU BatchNorm backward (2.14.1) returns a wrong input gradient (~100 % off) when the
            # input or the incoming gradient is channels-last with a non-standard stride on a size-1 dimension
            # (as hardtanh's backward produces from a channel slice of a channels-last gradient): give it both
            # with standard contiguous strides.
            y = _StandardGrad.apply(super().forward(_standard(x)))
        else:
            y = super().forward(x)
        return F.hardtanh(y, 0.0, 6.0) if self.fused_act else y


def _standard(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the standard contiguous strides, size-1 dimensions included (a copy only when needed)."""
    want, step = [], 1
    for size in reversed(t.shape):
        want.append(step)
        step *= size
    return t if t.stride() == tuple(reversed(want)) else t.clone(memory_format=torch.contiguous_format)


class _StandardGrad(torch.autograd.Function):
    """Identity whose backward passes the gradient on with standard contiguous strides (:func:`_standard`)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _standard(grad)


class _PassThrough(nn.ReLU6):
    """A ReLU6 whose clamp was fused into the BatchNormAct3d before it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ----------------------------------------------------------------------------------------------------------
# 2× pixel shuffle: one C++ copy each way
# ----------------------------------------------------------------------------------------------------------
class _PixelShuffle2Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernels) -> torch.Tensor:
        ctx.kernels = kernels
        return kernels.pixel_shuffle2_cl(x, False)                           # B×C/4×T×2H×2W, channels-last

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.kernels.pixel_shuffle2_cl(grad.contiguous(memory_format=torch.channels_last_3d), True), None


def pixel_shuffle2(x: torch.Tensor, use_kernels: bool = True) -> torch.Tensor:
    """:func:`tinyhd.encoder.pixel_shuffle_frames` (factor 2) whose forward and backward are single C++ copies
    (``pixel_shuffle2_cl``) for channels-last float32 CPU input when the kernels are available. PyTorch's copy
    of the permuted 7-D view (inner runs of C/4 elements at stride 4) took 129 ms of a TinyHD-M step."""
    if (x.dim() == 5 and x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[1] % 4 == 0
            and x.is_contiguous(memory_format=torch.channels_last_3d)):
        kernels = _kernels() if use_kernels else None
        if kernels is not None:
            return _PixelShuffle2Fn.apply(x, kernels)
    return pixel_shuffle_frames(x, 2)


class KernelShuffleEncoder(MobileNetV2Encoder3d):
    """The encoder (set through ``__class__`` by :func:`cpu_training`) with :func:`pixel_shuffle2`."""

    use_kernels = True

    def _shuffle(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle2(x, self.use_kernels)


class KernelPixelShuffle3d(PixelShuffle3d):
    """A decoder's :class:`tinyhd.encoder.PixelShuffle3d` (set by :func:`cpu_training`) with :func:`pixel_shuffle2`."""

    use_kernels = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle2(x, self.use_kernels) if self.factor == 2 else super().forward(x)


# ----------------------------------------------------------------------------------------------------------
# The switch
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def cpu_training(model: nn.Module, use_kernels: bool = True) -> Iterator[nn.Module]:
    """Within the block, ``model`` (any TinyHD or module built from Conv3d/BatchNorm3d/ReLU6) trains with
    the channels-last path described in the module docstring; on exit the module classes are restored and
    the parameters made contiguous again. Inputs should be channels-last too
    (``x.contiguous(memory_format=torch.channels_last_3d)``); others still work, slower.

    ``use_kernels=False`` keeps PyTorch's depthwise backward (the C++ kernels are not built or used).
    Optimizer state created inside the block refers to the same parameter objects, so it stays valid after.
    """
    swapped: list[tuple[nn.Module, type]] = []

    def swap(mod: nn.Module, cls: type) -> None:
        swapped.append((mod, type(mod)))
        mod.__class__ = cls

    from tinyhd.fast import TemporalUpsample2x, _is_up_t

    try:
        for mod in model.modules():
            if _is_up_t(mod):
                swap(mod, TemporalUpsample2x)
            elif type(mod) in (MobileNetV2Encoder3d, PixelShuffle3d):
                swap(mod, KernelShuffleEncoder if type(mod) is MobileNetV2Encoder3d else KernelPixelShuffle3d)
                mod.use_kernels = use_kernels
            elif type(mod) is nn.Conv3d and _is_plain_depthwise(mod):
                swap(mod, DepthwiseConv3d)
                mod.use_kernels = use_kernels
            elif type(mod) is nn.Conv3d:
                swap(mod, ChannelsLastConv3d)
            elif isinstance(mod, nn.Sequential):
                kids = list(mod.children())
                for bn, nxt in zip(kids, kids[1:] + [None]):
                    if type(bn) is nn.BatchNorm3d:
                        swap(bn, BatchNormAct3d)
                        bn.use_kernels = use_kernels
                        if type(nxt) is nn.ReLU6:
                            bn.fused_act = True
                            swap(nxt, _PassThrough)
        for mod in model.modules():  # BatchNorm3d outside a Sequential: no fusion
            if type(mod) is nn.BatchNorm3d:
                swap(mod, BatchNormAct3d)
                mod.use_kernels = use_kernels
        _set_memory_format(model, torch.channels_last_3d)
        yield model
    finally:
        # A block never exited (an ExitStack left open) is closed by the interpreter at exit, while it tears
        # the tensors down: restriding parameters and gradients then aborts the process (PyTorch's
        # "THPVariable_clear" internal assert). Nothing needs restoring in a process that is ending.
        if not _is_finalizing():
            for mod, cls in reversed(swapped):
                mod.__class__ = cls
                mod.__dict__.pop("fused_act", None)
                mod.__dict__.pop("use_kernels", None)
            _set_memory_format(model, torch.contiguous_format)


def _set_memory_format(model: nn.Module, fmt: torch.memory_format) -> None:
    """Restride 5-D parameters in place (same Parameter objects, so optimizers keep pointing at them)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 5 and not p.is_contiguous(memory_format=fmt):
                p.data = p.data.contiguous(memory_format=fmt)
                if p.grad is not None:
                    p.grad = p.grad.contiguous(memory_format=fmt)
