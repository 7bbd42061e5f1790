"""Eval-time optimisations of a TinyHD: same maps (within 1e-5), fewer milliseconds.

``optimize_for_inference(model)`` returns a frozen copy with these changes, each of which leaves the
function the network computes unchanged up to float rounding:

1. **BatchNorm folded into the preceding convolution.** In eval mode BN is the affine map
   ``γ (x − μ) / √(σ² + ε) + β`` per channel, so ``BN(conv(x)) = conv'(x)`` with
   ``W' = W · γ/√(σ²+ε)`` (per output channel) and ``b' = (b − μ) · γ/√(σ²+ε) + β``. Removes every BN pass
   (the spec sheet's CPU profile: ~15 % of the time).
2. **Channels-last 3D activations** (memory order B, T, H, W, C) and **one fused kernel per
   conv(+BN)+ReLU6**: oneDNN's convolution with a ``hardtanh(0, 6)`` post-op adds the bias and applies
   ReLU6 while the output is still in cache. PyTorch's default path runs the depthwise 3D convs on
   contiguous tensors (several times slower than channels-last) and the 1×1×1 convs through its generic
   ``slow_conv3d``; both become oneDNN channels-last kernels.
3. **Layout-aware data movement**: the frame-wise pixel shuffle is rewritten for channels-last memory, and
   Up_t (2× linear interpolation in time, ``align_corners=True``) becomes one small matrix product over
   the frames (:class:`TemporalUpsample2x`), Up_s a frame-wise channels-last bilinear interpolation
   (:class:`SpatialUpsample2x`).
4. **Fused C++ kernels** (:mod:`tinyhd.kernels`, ``tinyhd/csrc/cpu_kernels.cpp``, built once per machine),
   where the decoders are memory-bound: a narrow IRB (≤ 64 hidden channels) runs as one pass (expand,
   depthwise and project over L2-sized bands of rows, the hidden tensor never written to memory:
   :class:`FusedIRB`), and each "pixel shuffle → Up_t → + skip" of D2/D3 is one pass (:func:`up_add`)
   instead of a copy, a matmul and an add. Same arithmetic, different summation order (≤ 1e-5,
   ``tests/test_kernels.py``). ``optimize_for_inference(cpu_kernels=False)`` or ``TINYHD_CPU_KERNELS=0`` keeps
   steps 1–3 only.

Measured with ``benchmarks/speed.py`` on this repo's 2-core AMD EPYC (Zen 4, AVX-512; torch 2.14.1, 2 threads,
1×3×16×192×256, min over interleaved rounds, machine idle; 2026-11-21), ms per forward (maps/s):

=============  ============  ============  =====================  ==================
model          plain         BN folded     + channels-last oneDNN  + fused kernels
=============  ============  ============  =====================  ==================
TinyHD-M ×1    682 (23.5)    607 (26.4)    223 (71.7)              190 (84.3)
TinyHD-M ×½    790 (20.3)    737 (21.7)    237 (67.6)              186 (86.2)
TinyHD-M ×¼    398 (40.2)    353 (45.3)    143 (111.8)             118 (136.0)
TinyHD-S ×1    301 (3.3)     273 (3.7)     136 (7.3)               126 (7.9)
=============  ============  ============  =====================  ==================

(a second idle run of M ×1: 246 ms with oneDNN only, 188 ms = 85.2 maps/s with the kernels; under load from
another job the numbers grow by up to 30 %). With glibc's default malloc the plain M ×1 took ~1060 ms.

The optimised model returns the same ``TinyHDOutput`` (contiguous tensors). It is for inference only:
its parameters do not require gradients and BN statistics are frozen into the conv weights.
Outside the model, :func:`keep_freed_memory` stops glibc from returning (and re-faulting) activation memory
on every forward. ``benchmarks/speed.py`` measures each step's effect; ``tests/test_fast.py`` checks the 1e-5 agreement.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tinyhd.errors import UserError
from tinyhd.encoder import pixel_shuffle_frames_cl

__all__ = ["fold_batchnorm", "optimize_for_inference", "keep_freed_memory", "TemporalUpsample2x", "SpatialUpsample2x", "FusedConv3d", "FusedIRB", "fused_irb_pays", "up_add", "linear_fusion", "ChannelsLastPixelShuffle3d",
           "pixel_shuffle_frames_cl"]

_CL = torch.channels_last_3d


# --------------------------------------------------------------------------------------------------
# 1. BN folding
# --------------------------------------------------------------------------------------------------
def _fold(conv: nn.Conv3d | nn.Conv2d, bn: nn.BatchNorm3d | nn.BatchNorm2d) -> None:
    """Fold an eval-mode ``bn`` into ``conv`` in place (``conv`` gains a bias)."""
    if bn.running_mean is None or bn.running_var is None:
        raise UserError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.affine:
            shift = shift + bn.bias.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
        w = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
        conv.weight.copy_(w.to(conv.weight.dtype))
        new_bias = (bias * scale + shift).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias, requires_grad=False)
        else:
            conv.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv inside an ``nn.Sequential`` (in place; returns model).

    The model must be in eval mode (folding uses the running statistics). Folded BNs become ``nn.Identity``.
    """
    if any(m.training for m in model.modules()):
        raise UserError("fold_batchnorm needs a model in eval mode (call model.eval() first)")
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for prev, name in zip(names, names[1:]):
            conv, bn = seq._modules[prev], seq._modules[name]
            pairs = ((nn.Conv3d, nn.BatchNorm3d), (nn.Conv2d, nn.BatchNorm2d))
            if any(isinstance(conv, c) and isinstance(bn, b) for c, b in pairs):
                if conv.out_channels != bn.num_features:
                    raise UserError(f"BatchNorm {name!r} ({bn.num_features}) does not match conv {prev!r} "
                                    f"({conv.out_channels} channels)")
                _fold(conv, bn)
                seq._modules[name] = nn.Identity()
    return model


# --------------------------------------------------------------------------------------------------
# 2./3. channels-last modules
# --------------------------------------------------------------------------------------------------
def _mkldnn_fused_conv_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv3d(nn.Module):
    """A ``Conv3d`` (BN already folded in) with its bias and optional ReLU6 applied in the same pass.

    On CPU it calls oneDNN's fused convolution (``torch.ops.mkldnn._convolution_pointwise`` with the
    ``hardtanh(0, 6)`` post-op, i.e. ReLU6) on channels-last input: no separate bias or clamp pass over
    memory, and oneDNN's fast channels-last kernels for the depthwise and pointwise 3D convs. Elsewhere
    (CUDA, or a PyTorch without oneDNN) it falls back to ``conv3d`` + ``clamp_``.
    """

    def __init__(self, conv: nn.Conv3d, relu6: bool) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv3d needs explicit zero padding")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = (nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
                     if conv.bias is not None else None)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu6 = relu6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=_CL)
        if x.device.type == "cpu" and x.dtype == torch.float32 and _mkldnn_fused_conv_available():
            attr, scalars = ("hardtanh", [0.0, 6.0]) if self.relu6 else ("none", [])
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                           self.dilation, self.groups, attr, scalars, "")
        y = F.conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return y.clamp_(0.0, 6.0) if self.relu6 else y

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel={tuple(self.weight.shape[2:])}, "
                f"stride={tuple(self.stride)}, groups={self.groups}, relu6={self.relu6}")


class ChannelsLastPixelShuffle3d(nn.Module):
    """:func:`pixel_shuffle_frames_cl` as a module; with ``kernels`` set (by :func:`optimize_for_inference`) a
    2× shuffle of a CPU float32 tensor runs as the C++ ``shuffle_up_add`` (identity time map, no addend)."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.kernels = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None and self.factor == 2 and _kernel_input_ok(x):
            i0, i1, lam = _time_map(x.shape[2], False)
            return self.kernels.shuffle_up_add(x.contiguous(memory_format=_CL), i0, i1, lam, None)
        return pixel_shuffle_frames_cl(x, self.factor)


def _linear_interpolation_matrix(t_in: int, t_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """t_out×t_in matrix of 1D linear interpolation with ``align_corners=True`` (PyTorch's source index rule)."""
    a = torch.zeros(t_out, t_in, dtype=torch.float64)
    scale = (t_in - 1) / (t_out - 1) if t_out > 1 else 0.0
    for t in range(t_out):
        src = t * scale
        i0 = min(int(src), t_in - 1)
        i1 = min(i0 + 1, t_in - 1)
        lam = src - i0
        a[t, i0] += 1 - lam
        a[t, i1] += lam
    return a.to(dtype=dtype, device=device)


class TemporalUpsample2x(nn.Module):
    """Up_t (``nn.Upsample(scale_factor=(2, 1, 1), mode="trilinear", align_corners=True)``) as one small matrix
    product over time. With spatial scale 1 and ``align_corners=True`` trilinear interpolation is linear
    interpolation along T only; in channels-last memory each frame is one contiguous slab, so the whole op is
    ``A @ x`` with ``A`` the 2T×T interpolation matrix — instead of PyTorch's generic 3D kernel, which is slow
    on channels-last tensors with few channels (D2/D3 end with 2–7 channels at 192×256).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        a = _linear_interpolation_matrix(t, 2 * t, x.dtype, x.device)
        if x.is_contiguous(memory_format=_CL):
            slabs = x.permute(0, 2, 3, 4, 1).reshape(b, t, h * w * c)          # B×T×(H·W·C), a view
            y = torch.matmul(a, slabs)                                          # B×2T×(H·W·C)
            return y.view(b, 2 * t, h, w, c).permute(0, 4, 1, 2, 3)             # channels-last
        y = torch.matmul(a, x.reshape(b * c, t, h * w))                          # (B·C)×2T×(H·W)
        return y.view(b, c, 2 * t, h, w)


class SpatialUpsample2x(nn.Module):
    """Up_s (``nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=True)``) as frame-wise
    bilinear interpolation. With time scale 1 and ``align_corners=True`` every output frame is exactly its
    input frame upsampled bilinearly; in channels-last memory the B·T frames form a channels-last 2D batch
    (a view), for which PyTorch has a vectorised bilinear kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = x.contiguous(memory_format=_CL)
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)            # (B·T)×C×H×W, channels-last view
        y = F.interpolate(frames, scale_factor=2, mode="bilinear", align_corners=True)
        y = y.contiguous(memory_format=torch.channels_last)
        return y.view(b, t, c, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)            # B×C×T×2H×2W, channels-last


def _is_up_s(m: nn.Module) -> bool:
    if not isinstance(m, nn.Upsample) or m.mode != "trilinear" or not m.align_corners or m.size is not None:
        return False
    sf = m.scale_factor
    return isinstance(sf, tuple) and tuple(float(v) for v in sf) == (1.0, 2.0, 2.0)


def _is_up_t(m: nn.Module) -> bool:
    if not isinstance(m, nn.Upsample) or m.mode != "trilinear" or not m.align_corners or m.size is not None:
        return False
    sf = m.scale_factor
    return isinstance(sf, tuple) and tuple(float(v) for v in sf) == (2.0, 1.0, 1.0)


class _ChannelsLastEncoder(nn.Module):
    """``MobileNetV2Encoder3d.forward`` with the channels-last pixel shuffle (same layers, same groups)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        from tinyhd.encoder import FEATURE_GROUPS

        self.features = encoder.features
        self.groups = FEATURE_GROUPS
        self.block_channels = list(encoder.block_channels)
        self.shuffle = ChannelsLastPixelShuffle3d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.features:
            x = layer(x)
            feats.append(x)
        g = [torch.cat([feats[i] for i in group], dim=1) for group in self.groups]
        ps = self.shuffle
        return [torch.cat([g[0], ps(g[1])], dim=1), ps(g[2]), ps(g[3]), ps(g[4])]


def _fuse_conv_relu6(model: nn.Module) -> None:
    """Every Conv3d → FusedConv3d; a ReLU6 that follows it in the same Sequential (after folded BNs, now
    Identity) is absorbed into it."""
    for parent in list(model.modules()):
        names = list(parent._modules)
        for i, name in enumerate(names):
            child = parent._modules[name]
            if not isinstance(child, nn.Conv3d):
                continue
            relu_name = None
            if isinstance(parent, nn.Sequential):
                j = i + 1
                while j < len(names) and isinstance(parent._modules[names[j]], nn.Identity):
                    j += 1
                if j < len(names) and isinstance(parent._modules[names[j]], nn.ReLU6):
                    relu_name = names[j]  # conv → (folded BN) → ReLU6; an unfolded BN in between stops this
            parent._modules[name] = FusedConv3d(child, relu6=relu_name is not None)
            if relu_name is not None:
                parent._modules[relu_name] = nn.Identity()


def _swap_modules(model: nn.Module) -> None:
    from tinyhd.encoder import MobileNetV2Encoder3d, PixelShuffle3d

    _fuse_conv_relu6(model)
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, PixelShuffle3d):
                parent._modules[name] = ChannelsLastPixelShuffle3d(child.factor)
            elif _is_up_t(child):
                parent._modules[name] = TemporalUpsample2x()
            elif _is_up_s(child):
                parent._modules[name] = SpatialUpsample2x()
            elif isinstance(child, MobileNetV2Encoder3d):
                if type(child).forward is not MobileNetV2Encoder3d.forward:
                    raise UserError("optimize_for_inference: unknown encoder subclass")
                parent._modules[name] = _ChannelsLastEncoder(child)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process (no ``mmap`` per large block, no trimming).

    A TinyHD-M forward at 192×256 allocates a few hundred MB of activations; by default glibc hands each large
    block back to the kernel when it is freed, so every forward pays ~10⁵ page faults re-touching fresh pages
    (a third of its time on a 2-core CPU). With ``M_MMAP_MAX = 0`` (no mmap per block) and ``M_TRIM_THRESHOLD =
    -1`` (never trim the heap) the pages are reused. Trimming is off entirely, not just above 1 GiB as before:
    HD2S run on the fly (:class:`tinyhd.teacher.OnlineTeacher`) frees more than 1 GiB at once after each window,
    and with a 1 GiB threshold a 192×256 distillation step re-faulted ~1.4 M pages (5.5 GB) in the teacher alone.
    Process-wide and irreversible: the process keeps its peak heap. Meant for training, inference and benchmark
    processes (``tinyhd train`` on a CPU and ``tinyhd predict`` call it); returns False (and does nothing) where
    glibc is not the allocator.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------------
# 4. fused C++ kernels (tinyhd/csrc/cpu_kernels.cpp, built by tinyhd.kernels)
# --------------------------------------------------------------------------------------------------
def fused_irb_pays(hidden: int, t: int, h: int, w: int) -> bool:
    """Whether :class:`FusedIRB` runs the C++ kernel for this IRB input (else oneDNN's three convolutions).

    An empirical rule from single-IRB timings of every decoder IRB of TinyHD-M ×1 at 192×256 (1 thread, this
    repo's 2-core EPYC, kernel vs oneDNN, ms): the kernel wins where oneDNN's passes over the hidden tensor
    dominate — 4 hidden channels at 16×192×256 (5.4 vs 11.2), 14 at 16×192×256 (18.0 vs 23.8), 24 at
    4→2×192×256 with T↓ (8.0 vs 9.1), 56 at 8×96×128 (17.0 vs 22.3; T↓: 11.9 vs 13.7) — and loses for wide
    IRBs (its 1×1 convs are broadcast-FMA loops, not GEMMs: hidden > 64), at 48×64 and below (everything is
    in cache for oneDNN), for narrower IRBs at 96×128 (28 hidden at 2×96×128: 2.8 vs 2.2; 12: 2.3 vs 1.8)
    and for single frames (56 hidden at 1×192×256: 8.3 vs 7.0).
    """
    if hidden > 64 or t < 2 or h * w < 96 * 128:
        return False
    return h * w >= 192 * 256 or hidden >= 48


def _kernel_input_ok(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad


class FusedIRB(nn.Module):
    """A decoder IRB (BN folded) run by the fused C++ kernel ``fused_irb``: expand + depthwise + project in one
    pass, the hidden activations never written to memory. Runs its three :class:`FusedConv3d` instead for inputs
    the kernel does not take (non-CPU, non-float32) or where it does not pay (:func:`fused_irb_pays`)."""

    def __init__(self, expand: FusedConv3d, depthwise: FusedConv3d, project: FusedConv3d, kernels) -> None:
        super().__init__()
        self.expand, self.depthwise, self.project = expand, depthwise, project
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = x.shape[-3:]
        if (self.kernels is None or not _kernel_input_ok(x)
                or not fused_irb_pays(self.depthwise.weight.shape[0], t, h, w)):
            return self.project(self.depthwise(self.expand(x)))
        e, d, p = self.expand, self.depthwise, self.project
        return self.kernels.fused_irb(x.contiguous(memory_format=_CL), e.weight, e.bias, d.weight, d.bias,
                                      p.weight, p.bias, d.stride[0])


@functools.lru_cache(maxsize=64)
def _time_map(t: int, temporal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i0, i1, lam) per output frame: Up_t's two source frames and weight (from the same matrix as
    :class:`TemporalUpsample2x`), or the identity map when ``temporal`` is False. Cached (read-only tensors)."""
    if not temporal:
        idx = torch.arange(t)
        return idx, idx, torch.zeros(t)
    a = _linear_interpolation_matrix(t, 2 * t, torch.float64, torch.device("cpu"))
    i0 = torch.tensor([int(row.nonzero()[0]) for row in a])
    i1 = torch.tensor([int(row.nonzero()[-1]) for row in a])
    lam = torch.tensor([float(a[k, i1[k]]) if i1[k] != i0[k] else 0.0 for k in range(2 * t)])
    return i0, i1, lam


def up_add(up: nn.Module, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``up(x) + add`` (or ``up(x)``) for a decoder upsampling ``up`` (tinyhd.decoders' ``_up``: pixel shuffle,
    then Up_t in multi-output decoders). When the shuffle holds the kernels (:func:`_use_kernels`) this is one
    pass (``shuffle_up_add``) instead of a copy, a matmul and an add."""
    mods = list(up) if isinstance(up, nn.Sequential) else [up]
    shuffle, temporal = mods[0], len(mods) == 2
    fusable = (isinstance(shuffle, ChannelsLastPixelShuffle3d) and shuffle.kernels is not None
               and shuffle.factor == 2 and _kernel_input_ok(x)
               and (len(mods) == 1 or (temporal and isinstance(mods[1], TemporalUpsample2x)))
               and (add is None or (_kernel_input_ok(add) and add.is_contiguous(memory_format=_CL))))
    if not fusable:
        y = up(x)
        return y if add is None else y + add
    i0, i1, lam = _time_map(x.shape[2], temporal)
    return shuffle.kernels.shuffle_up_add(x.contiguous(memory_format=_CL), i0, i1, lam, add)


class _FastD2(nn.Module):
    """``tinyhd.decoders.D2.forward`` with :func:`up_add` for each upsampling + skip connection."""

    def __init__(self, dec: nn.Module) -> None:
        super().__init__()
        self.blocks, self.ups = dec.blocks, dec.ups
        self.kind, self.n_maps, self.single = dec.kind, dec.n_maps, dec.single

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        b0, b1, b2, b3 = blocks
        a = self.blocks
        u = up_add(self.ups[0], a[0](b3), b2)
        u = up_add(self.ups[1], a[1](u), a[2](b1))
        u = up_add(self.ups[2], a[3](u), a[5](a[4](b0)))
        u = up_add(self.ups[3], a[6](u))
        return torch.sigmoid(a[7](u))


class _FastD3(nn.Module):
    """``tinyhd.decoders.D3.forward`` with :func:`up_add` for each upsampling + aggregation."""

    def __init__(self, dec: nn.Module) -> None:
        super().__init__()
        self.blocks = dec.blocks
        self.level1_up, self.level2_up, self.level3_up, self.level4_up = (dec.level1_up, dec.level2_up,
                                                                          dec.level3_up, dec.level4_up)
        self.kind, self.n_maps, self.single = dec.kind, dec.n_maps, dec.single

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        a = self.blocks
        x = [up_add(self.level1_up[0], blocks[0])]
        x += [up_add(self.level1_up[i], blocks[i], a[i - 1](blocks[i - 1])) for i in (1, 2, 3)]
        y = [up_add(self.level2_up[j], a[3 + j](x[j + 1]), a[6 + j](x[j])) for j in range(3)]
        z = [up_add(self.level3_up[j], y[j + 1], a[9 + j](y[j])) for j in range(2)]
        w = up_add(self.level4_up, z[1], a[11](z[0]))
        return torch.sigmoid(a[12](w))


def _use_kernels(model: nn.Module, kernels) -> None:
    """IRBs (depthwise stride 1, or T↓'s temporal stride 2) → :class:`FusedIRB`; every 2× channels-last shuffle
    gets the kernels; D2/D3 → forwards with fused upsampling + add. Runs after :func:`_swap_modules` on a
    BN-folded model (convs are FusedConv3d with biases, upsamplings channels-last modules)."""
    from tinyhd.decoders import D2, D3, IRB

    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, IRB):
                convs = expand, depthwise, project = child.conv[0][0], child.conv[1][0], child.conv[2]
                kt = depthwise.weight.shape[2]
                if (all(isinstance(c, FusedConv3d) and c.bias is not None for c in convs)
                        and expand.relu6 and depthwise.relu6 and not project.relu6
                        and (depthwise.stride == [1, 1, 1] and kt in (1, 3) or depthwise.stride == [2, 1, 1] and kt == 3)):
                    parent._modules[name] = FusedIRB(expand, depthwise, project, kernels)
            elif isinstance(child, ChannelsLastPixelShuffle3d):
                child.kernels = kernels
            elif type(child) is D2:
                parent._modules[name] = _FastD2(child)
            elif type(child) is D3:
                parent._modules[name] = _FastD3(child)


# --------------------------------------------------------------------------------------------------
# the optimised model
# --------------------------------------------------------------------------------------------------
def linear_fusion(model: nn.Module, raw: list[torch.Tensor]) -> torch.Tensor:
    """TinyHD-M's fusion (1×1×1 conv over the concatenated maps, D1's single-frame maps repeated in time, then
    a sigmoid) as a weighted sum of the maps: D1's contribution is computed once at T=1 and broadcast, and the
    6×T×H×W concatenation is never built. Same arithmetic as ``model.fuse`` up to summation order."""
    weight = model.fusion.weight.reshape(-1)  # n_maps (the fusion conv has one output channel)
    bias = model.fusion.bias
    acc, k = None, 0
    for m in model._fusion_inputs(raw):                                   # each B×c×T'×H×W, T' ∈ {1, T}
        c = m.shape[1]
        part = (m * weight[k:k + c].view(1, c, 1, 1, 1)).sum(1) if c > 1 else m[:, 0] * weight[k]
        acc = part if acc is None else acc + part                         # B×T×H×W (T'=1 broadcasts)
        k += c
    if k != weight.numel():
        raise UserError(f"fusion expects {weight.numel()} maps, the decoders gave {k}")
    if bias is not None:
        acc = acc + bias
    return torch.sigmoid(acc)


class FastTinyHD(nn.Module):
    """Wraps the rewritten TinyHD: channels-last input in, contiguous ``TinyHDOutput`` out. For a MIMO model
    the fusion is :func:`linear_fusion` (no concatenated copy of the maps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = dict(getattr(model, "config", {}))
        self.output = getattr(model, "output", None)  # "single"/"multi", read by tinyhd.inference

    def forward(self, clip: torch.Tensor):
        m = self.model
        m.check_input(clip)
        blocks = m.encoder(clip.contiguous(memory_format=_CL))
        raw = [dec(blocks) for dec in m.decoders]
        saliency = linear_fusion(m, raw) if m.output == "multi" else m.fuse(raw)
        out = m.assemble(raw, saliency)
        fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        for k, v in fields.items():
            if isinstance(v, torch.Tensor):
                fields[k] = v.contiguous()
            elif isinstance(v, list):
                fields[k] = [t.contiguous() if isinstance(t, torch.Tensor) else t for t in v]
        return type(out)(**fields)


def optimize_for_inference(model: nn.Module, fold_bn: bool = True, channels_last: bool = True,
                           cpu_kernels: bool | str = "auto") -> nn.Module:
    """A frozen, faster copy of a TinyHD for inference (``model`` itself is not modified).

    ``fold_bn``: fold BatchNorm into convs. ``channels_last``: channels-last activations, pointwise convs as
    GEMMs, channels-last pixel shuffle. ``cpu_kernels``: also use the fused C++ kernels of
    :mod:`tinyhd.kernels` (IRBs in one pass, pixel shuffle + Up_t + skip add in one pass) on CPU float32
    inputs — "auto" (default): when they build on this machine (else the oneDNN path, with a warning);
    True: required (raises if they cannot be built); False: never. Outputs agree with ``model.eval()`` within
    1e-5 (``tests/test_fast.py``, ``tests/test_kernels.py``). See the module docstring for why each step is exact.
    """
    from tinyhd.model import TinyHD

    if not isinstance(model, TinyHD):
        raise UserError(f"optimize_for_inference needs a tinyhd.TinyHD, got {type(model).__name__}")
    fast = copy.deepcopy(model).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(fast)
    if cpu_kernels not in (True, False, "auto"):
        raise UserError(f"cpu_kernels must be True, False or 'auto', got {cpu_kernels!r}")
    if channels_last:
        _swap_modules(fast)
        if cpu_kernels and fold_bn:
            from tinyhd.kernels import cpu_kernels as load_kernels, unavailable_reason

            from tinyhd.kernels import KernelHandle

            kernels = load_kernels()
            if kernels is None and cpu_kernels is True:
                raise UserError(f"optimize_for_inference(cpu_kernels=True): {unavailable_reason()}")
            if kernels is not None:
                _use_kernels(fast, KernelHandle(kernels))
        return FastTinyHD(fast).eval()
    return fast
