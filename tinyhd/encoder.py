"""The TinyHD encoder: torchvision's MobileNetV2 inflated to 3D, and its four multi-level blocks B0..B3.

Paper §3.2: "A 2D convolutional kernel of size C_in × C_out × H × W can be inflated into a 3D kernel of size
C_in × C_out × T × H × W by replicating its weights along the temporal dimension T. [...] Given the inflated
MobileNetV2 encoder, we follow the approach in FastSal to extract four blocks of concatenated feature from the
whole set of layers." The layer-by-layer truth is the authors' released code and weights
(``shared/spec/tinyhd_architecture.md`` (a) and (d)):

* all 19 ``mobilenet_v2().features`` layers are used (including the last 1×1 conv to 1280);
* every Conv2d becomes a Conv3d, every BatchNorm2d a BatchNorm3d (:func:`inflate_2d_to_3d`);
* only the stem and the depthwise 3×3 convs get a temporal extent, set per layer by :data:`ENCODER_TEMPORAL`
  (the "S" config when every decoder is single-output, "M" otherwise);
* channel reduction ×½ / ×¼ (§3.3.2) divides every conv's channels and groups by ``reduction`` (the stem
  keeps its 3 input channels); the reduced encoder is built directly at the reduced widths.

The 18 outputs of features 1..18 are concatenated into five groups, pixel-shuffled (2×, frame by frame) and
arranged into the blocks ``B0 = f1 ⊕ PS(f2⊕f3)``, ``B1 = PS(f4..f6)``, ``B2 = PS(f7..f13)``,
``B3 = PS(f14..f18)``; for a 16×192×256 clip (×1 widths):

=====  ===========  ===========  =======================
block  ×1/×½/×¼ ch  T×H×W (S)    T×H×W (M)
=====  ===========  ===========  =======================
B0     28/14/7      8×96×128     8×96×128
B1     24/12/6      4×48×64      4×48×64
B2     136/68/34    2×24×32      2×24×32
B3     520/260/130  2×12×16      1×12×16
=====  ===========  ===========  =======================
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from tinyhd.errors import UserError

Temporal = tuple[int, int, int]  # (kernel, stride, padding) along T

# torchvision's MobileNetV2 inverted-residual setting: expansion t, output channels c, repeats n, stride s.
_MOBILENET_V2_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280

# Temporal (kernel, stride, padding) of the one spatial conv (stem or depthwise 3×3) of each feature layer,
# sheet table (a). 1×1 convs are always 1×1×1. S: every decoder single-output; M: otherwise (released M).
_T3: Temporal = (3, 1, 1)
_T3_DOWN: Temporal = (3, 2, 1)
ENCODER_TEMPORAL: dict[str, dict[int, Temporal]] = {
    "S": {0: _T3_DOWN, 1: _T3, 2: _T3, 3: _T3, 4: _T3_DOWN, 5: _T3, 6: _T3, 7: _T3_DOWN,
          8: _T3, 9: _T3, 10: _T3, 11: _T3, 12: _T3, 13: _T3, 14: _T3, 15: _T3, 16: _T3, 17: _T3},
}
ENCODER_TEMPORAL["M"] = {**ENCODER_TEMPORAL["S"], 14: (2, 1, 0), 15: (1, 1, 0), 16: (1, 1, 0), 17: (1, 1, 0)}

# Feature layers (1..18) concatenated into each of the five groups g0..g4 (sheet (a), "multi-level blocks").
FEATURE_GROUPS: tuple[tuple[int, ...], ...] = ((1,), (2, 3), (4, 5, 6), (7, 8, 9, 10, 11, 12, 13),
                                               (14, 15, 16, 17, 18))


def inflate_2d_to_3d(module: nn.Module, temporal: Mapping[str, Temporal] | None = None) -> nn.Module:
    """A 3D copy of a 2D network: every Conv2d → Conv3d and BatchNorm2d → BatchNorm3d (I3D-style inflation).

    ``temporal`` maps the qualified name of a conv (as in ``module.named_modules()``) to its temporal
    ``(kernel, stride, padding)``. A conv that is not listed reuses its first spatial value for time (so an
    un-configured 3×3 stride-2 conv becomes 3×3×3 stride 2×2×2, and a 1×1 conv becomes 1×1×1), exactly as
    the authors' inflation does.

    Weights (sheet (a)): each 2D kernel is copied unchanged into every temporal slice — *no* 1/kt rescaling,
    so a temporally constant clip gives kt × the 2D response in frames away from the clip borders. BN
    weight and bias are copied; running mean/var are *not* (the inflated BN starts at 0/1).
    Other modules (ReLU6, residual flags, ...) are kept as they are, so any 2D network whose ``forward``
    does not depend on the number of dimensions keeps working on B×C×T×H×W input.
    """
    temporal = dict(temporal or {})
    out = copy.deepcopy(module)
    names = {name for name, _ in out.named_modules()}
    unknown = set(temporal) - names
    if unknown:
        raise KeyError(f"temporal config names modules that do not exist: {sorted(unknown)}")
    for name, child in list(out.named_modules()):
        if isinstance(child, nn.Conv2d):
            new = _inflate_conv(child, temporal.get(name))
        elif isinstance(child, nn.BatchNorm2d):
            new = _inflate_bn(child)
        else:
            if name in temporal:
                raise TypeError(f"temporal config given for {name!r}, which is a {type(child).__name__}")
            continue
        if name == "":
            return new
        parent_name, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent_name), attr, new)
    return out


def _inflate_conv(conv: nn.Conv2d, temporal: Temporal | None) -> nn.Conv3d:
    kt, st, pt = temporal if temporal is not None else (conv.kernel_size[0], conv.stride[0], conv.padding[0])
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise NotImplementedError("only zero, explicit padding is inflated")
    conv3d = nn.Conv3d(conv.in_channels, conv.out_channels, (kt, *conv.kernel_size), stride=(st, *conv.stride),
                       padding=(pt, *conv.padding), dilation=(1, *conv.dilation), groups=conv.groups,
                       bias=conv.bias is not None)
    with torch.no_grad():
        conv3d.weight.copy_(conv.weight.unsqueeze(2).expand_as(conv3d.weight))  # O×I×kt×kh×kw, no 1/kt
        if conv.bias is not None:
            conv3d.bias.copy_(conv.bias)
    return conv3d


def _inflate_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    bn3d = nn.BatchNorm3d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                          track_running_stats=bn.track_running_stats)
    if bn.affine:
        with torch.no_grad():
            bn3d.weight.copy_(bn.weight)
            bn3d.bias.copy_(bn.bias)
    return bn3d  # running_mean/var stay 0/1 on purpose (sheet (a))


def mobilenet_v2_features_2d(reduction: int = 1) -> nn.Sequential:
    """torchvision's ``mobilenet_v2().features`` (19 layers) with every width divided by ``reduction``.

    Built from torchvision's own ``InvertedResidual`` / ``Conv2dNormActivation`` so that module names (and
    hence checkpoint keys) are torchvision's. Initialised as torchvision initialises MobileNetV2 (kaiming
    normal fan-out convs, BN 1/0). At ``reduction=1`` the state dict loads torchvision's ImageNet weights.
    """
    if reduction not in (1, 2, 4):
        raise ValueError(f"reduction must be 1, 2 or 4, got {reduction}")
    bn = nn.BatchNorm2d
    width = _STEM_CHANNELS // reduction
    layers: list[nn.Module] = [Conv2dNormActivation(3, width, stride=2, norm_layer=bn,
                                                    activation_layer=nn.ReLU6)]
    for t, c, n, s in _MOBILENET_V2_SETTING:
        for i in range(n):
            layers.append(InvertedResidual(width, c // reduction, s if i == 0 else 1, expand_ratio=t, norm_layer=bn))
            width = c // reduction
    layers.append(Conv2dNormActivation(width, _LAST_CHANNELS // reduction, kernel_size=1, norm_layer=bn,
                                       activation_layer=nn.ReLU6))
    features = nn.Sequential(*layers)
    for m in features.modules():  # torchvision's MobileNetV2 initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return features


def imagenet_mobilenet_v2_features() -> nn.Sequential:
    """torchvision's ImageNet MobileNetV2 features (2D). Offline: a clear UserError instead of a traceback."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    try:
        return mobilenet_v2(weights=weights).features
    except Exception as exc:  # URLError, OSError, hash mismatch, ...: all mean "weights not available"
        hub = torch.hub.get_dir()
        raise UserError(
            f"pretrained_backbone=True needs torchvision's ImageNet MobileNetV2 weights ({weights.url}), "
            f"which could not be loaded ({type(exc).__name__}: {exc}). Offline, copy that file to "
            f"{hub}/checkpoints/{weights.url.rsplit('/', 1)[-1]} (or set TORCH_HOME), or use "
            f"pretrained_backbone=False") from exc


def spatial_conv_name(features: nn.Sequential, index: int) -> str:
    """Qualified name (inside ``features``) of the stem / depthwise conv of feature layer ``index``."""
    layer = features[index]
    if isinstance(layer, Conv2dNormActivation):
        return f"{index}.0"
    if isinstance(layer, InvertedResidual):
        return f"{index}.conv.0.0" if len(layer.conv) == 3 else f"{index}.conv.1.0"  # t=1 has no expand layer
    raise TypeError(f"feature layer {index} is a {type(layer).__name__}")


def pixel_shuffle_frames(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """2× pixel shuffle applied frame by frame: B×C×T×H×W → B×(C/4)×T×2H×2W (``nn.PixelShuffle`` order).

    A channels-last input gives a channels-last output (:func:`pixel_shuffle_frames_cl`, same values)."""
    b, c, t, h, w = x.shape
    if not x.is_contiguous() and x.permute(0, 2, 3, 4, 1).is_contiguous():
        return pixel_shuffle_frames_cl(x, factor)
    # fold T into the batch: a 5-D input with T=H=W=1 has ambiguous strides that pixel_shuffle rejects
    y = nn.functional.pixel_shuffle(x.transpose(1, 2).reshape(b * t, c, h, w), factor)  # (B·T)×(C/f²)×fH×fW
    return y.reshape(b, t, c // factor**2, h * factor, w * factor).transpose(1, 2)


def pixel_shuffle_frames_cl(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """:func:`pixel_shuffle_frames` for channels-last input: B×C×T×H×W → B×C/r²×T×rH×rW, channels-last.

    Output channel c at sub-pixel (i, j) comes from input channel c·r² + i·r + j (``nn.PixelShuffle`` order).
    One copy, written in channels-last order.
    """
    b, c, t, h, w = x.shape
    r = factor
    if c % (r * r):
        raise ValueError(f"pixel shuffle by {r} needs channels divisible by {r * r}, got {c}")
    y = x.permute(0, 2, 3, 4, 1)                                      # B×T×H×W×C (a view when channels-last)
    y = y.reshape(b, t, h, w, c // (r * r), r, r)                     # …×c'×i×j
    y = y.permute(0, 1, 2, 5, 3, 6, 4)                                # B×T×H×i×W×j×c'
    y = y.reshape(b, t, h * r, w * r, c // (r * r))                   # the one copy
    return y.permute(0, 4, 1, 2, 3)                                   # B×c'×T×rH×rW, channels-last


class PixelShuffle3d(nn.Module):
    """:func:`pixel_shuffle_frames` as a module (channel c at sub-pixel (i, j) ← input channel 4c+2i+j)."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_frames(x, self.factor)


class MobileNetV2Encoder3d(nn.Module):
    """Inflated MobileNetV2 returning the four blocks ``[B0, B1, B2, B3]`` (paper §3.1, sheet (a)).

    Args:
        reduction: channel reduction 1, 2 or 4 (paper §3.3.2).
        config: "S" (every decoder single-output) or "M" (released TinyHD-M): the temporal config
            :data:`ENCODER_TEMPORAL` of the stem/depthwise convs.
        pretrained: inflate torchvision's ImageNet MobileNetV2; at ×½/×¼ its kernels are first averaged down
            to the reduced widths (paper §3.3.2, ``tinyhd.reduction.reduce_state_dict``).

    Attributes readable by other modules: ``temporal`` (feature index → (kt, st, pt)), ``block_channels``,
    ``feature_channels`` (output channels of features 0..18).
    """

    def __init__(self, reduction: int = 1, config: str = "S", pretrained: bool = False) -> None:
        super().__init__()
        if config not in ENCODER_TEMPORAL:
            raise ValueError(f"encoder config must be 'S' or 'M', got {config!r}")
        self.reduction = reduction
        self.config = config
        self.temporal: dict[int, Temporal] = dict(ENCODER_TEMPORAL[config])
        features2d = mobilenet_v2_features_2d(reduction)
        if pretrained:
            imagenet = imagenet_mobilenet_v2_features()
            if reduction == 1:
                features2d = imagenet
            else:  # kernel averaging of the ImageNet weights down to the reduced widths (paper §3.3.2)
                from tinyhd.reduction import reduce_state_dict

                averaged = reduce_state_dict(imagenet.state_dict(), features2d.state_dict())
                features2d.load_state_dict(averaged, strict=False)
        names = {spatial_conv_name(features2d, i): tkp for i, tkp in self.temporal.items()}
        self.features = inflate_2d_to_3d(features2d, names)
        self.feature_channels: list[int] = [_out_channels(layer) for layer in self.features]
        g = [sum(self.feature_channels[i] for i in group) for group in FEATURE_GROUPS]
        self.block_channels: list[int] = [g[0] + g[1] // 4, g[2] // 4, g[3] // 4, g[4] // 4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B×3×T×H×W → [B0, B1, B2, B3] (channels ``block_channels``; see the module docstring for T×H×W)."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected a B×3×T×H×W clip, got shape {tuple(x.shape)}")
        feats = []
        for layer in self.features:  # run sequentially and keep every output (no hooks)
            x = layer(x)
            feats.append(x)
        g = [torch.cat([feats[i] for i in group], dim=1) for group in FEATURE_GROUPS]
        ps = self._shuffle
        b0 = torch.cat([g[0], ps(g[1])], dim=1)  # B×28×T/2×H/2×W/2 (×1)
        return [b0, ps(g[2]), ps(g[3]), ps(g[4])]

    def _shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """The 2× pixel shuffle of groups 1–4 (a method so that :func:`tinyhd.cpu_train.cpu_training` can give it
        a compiled backward)."""
        return pixel_shuffle_frames(x, 2)


def _out_channels(layer: nn.Module) -> int:
    return [m for m in layer.modules() if isinstance(m, nn.Conv3d)][-1].out_channels


def block_shapes(encoder: MobileNetV2Encoder3d, clip_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """C×T×H×W of B0..B3 for a clip of shape 3×T×H×W (computed, not assumed)."""
    with torch.no_grad():
        return [tuple(b.shape[1:]) for b in encoder(torch.zeros(1, *clip_shape))]
