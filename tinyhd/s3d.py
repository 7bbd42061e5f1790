"""The S3D backbone of HD2S, built from ``torchvision.models.video.s3d`` and split at HD2S's four taps.

HD2S (IJCV 2021, §3.1) taps S3D "at the output of the 2nd, 3rd and 4th pooling layers and at the input of the
last average pool". The authors' code splits S3D's layer stack into ``block1`` … ``block5`` (fact sheet §2.2);
we reuse torchvision's S3D *modules* (same layers, same BatchNorm eps 1e-3 / momentum 1e-3, so torchvision's
Kinetics-400 weights load without any conversion) and group them into the same five blocks, so the block
indices of our state dict equal the authors'. Only the names *inside* the units differ:

============================  ===================================  ===============================
unit                          authors' children                    torchvision children
============================  ===================================  ===============================
Unit3D (1×1×1 conv, BN, ReLU)  ``conv``, ``bn``                      ``0``, ``1`` (Conv3dNormActivation)
SepConv3d (1×k×k then k×1×1)   ``conv_s``, ``bn_s``, ``conv_t``,      ``0.0``, ``0.1``, ``1.0``, ``1.1``
                               ``bn_t``                              (TemporalSeparableConv)
Mixed block ``branch0``        ``branch0.0.conv``, ``branch0.0.bn``  ``branch0.0``, ``branch0.1``
============================  ===================================  ===============================

:func:`official_backbone_key` is that explicit key map; it is a bijection between the 462 backbone entries of
the authors' state dict and ours (tested key by key).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tinyhd.errors import UserError

# torchvision's S3D.features index ranges that form HD2S's blocks (fact sheet §2.2)
BLOCKS: dict[str, range] = {
    "block1": range(0, 2),    # SepConv3d(3→64, k7 s2), MaxPool 1×3×3 /2
    "block2": range(2, 5),    # Unit3D 64→64, SepConv3d(64→192), MaxPool 1×3×3 /2      -> f2 (192 ch)
    "block3": range(5, 8),    # Mixed_3b, Mixed_3c, MaxPool 3×3×3 /2                    -> f3 (480 ch)
    "block4": range(8, 14),   # Mixed_4b … Mixed_4f, MaxPool 2×2×2 /2                   -> f4 (832 ch)
    "block5": range(14, 16),  # Mixed_5b, Mixed_5c                                      -> f5 (1024 ch)
}
TAP_CHANNELS = {2: 192, 3: 480, 4: 832, 5: 1024}

KINETICS_URL = "https://download.pytorch.org/models/s3d-d76dad2f.pth"


def _kinetics_features(pretrained: bool) -> nn.Sequential:
    """torchvision's S3D layer stack, with Kinetics-400 weights if ``pretrained`` (clear error when offline)."""
    from torchvision.models.video import S3D_Weights, s3d

    if not pretrained:
        return s3d(weights=None).features
    try:
        return s3d(weights=S3D_Weights.KINETICS400_V1).features
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; hash mismatches are RuntimeErrors
        cache = torch.hub.get_dir()
        raise UserError(
            f"pretrained_backbone=True needs torchvision's Kinetics-400 S3D weights ({KINETICS_URL}); they are not "
            f"in the torch hub cache ({cache}/checkpoints/) and could not be downloaded ({exc}). Download the file "
            f"on a machine with network access and copy it there, or use pretrained_backbone=False."
        ) from exc


def _max_along(x: torch.Tensor, dim: int, k: int, s: int, p: int) -> torch.Tensor:
    """1-D max pooling of ``x`` along ``dim`` (kernel k, stride s, padding p with −inf, floor mode)."""
    if k == 1 and s == 1:
        return x
    if p:
        pad = [0, 0] * (x.dim() - 1 - dim) + [p, p]
        x = F.pad(x, pad, value=float("-inf"))
    n_out = (x.shape[dim] - k) // s + 1
    taps = []
    for j in range(k):
        idx = [slice(None)] * x.dim()
        idx[dim] = slice(j, j + (n_out - 1) * s + 1, s)
        taps.append(x[tuple(idx)])
    if k == 1:
        return taps[0].clone()
    y = torch.maximum(taps[0], taps[1])
    for t in taps[2:]:
        torch.maximum(y, t, out=y)
    return y


class SeparableMaxPool3d(nn.MaxPool3d):
    """S3D's max pooling (set on the backbone's :class:`torch.nn.MaxPool3d` modules through ``__class__``): outside
    autograd (teacher maps, the teacher cache, evaluation) a box maximum is computed as three 1-D maxima (W, H,
    T) over strided views of the input — the same values bit for bit, as max is exact — because PyTorch's (2.14)
    CPU ``max_pool3d`` on contiguous tensors was a third of an HD2S forward (2 threads, 4 windows at 192×256:
    636 of 1,742 ms; the 3×3×3 stride-1 pools of the Inception branches 188 → 17 ms at 4×192×8×24×32). With
    gradients it is PyTorch's pooling, which sends a tie's gradient to one input as the authors' code does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.requires_grad and torch.is_grad_enabled()) or self.return_indices or self.ceil_mode \
                or x.dim() != 5 or x.device.type != "cpu":
            return super().forward(x)
        k, s, p, d = (tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3
                      for v in (self.kernel_size, self.stride, self.padding, self.dilation))
        if d != (1, 1, 1):
            return super().forward(x)
        for dim in (4, 3, 2):  # W, H, T: the strided (shrinking) passes first
            x = _max_along(x, dim, k[dim - 2], s[dim - 2], p[dim - 2])
        return x


class S3DBackbone(nn.Module):
    """S3D split into ``block1`` … ``block5``; ``forward`` returns the taps (f2, f3, f4, f5).

    Tap shapes for a B×3×16×H×W clip (fact sheet §2.3): f2 B×192×8×H/8×W/8, f3 B×480×4×H/16×W/16,
    f4 B×832×2×H/32×W/32, f5 B×1024×2×H/32×W/32. f1 (block1's output) feeds block2 only.
    """

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        features = _kinetics_features(pretrained)
        for name, idx in BLOCKS.items():
            self.add_module(name, nn.Sequential(*(features[i] for i in idx)))
        for mod in self.modules():
            if type(mod) is nn.MaxPool3d:
                mod.__class__ = SeparableMaxPool3d

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = self.block1(x)     # B×64×T/2×H/4×W/4 (unused by HD2S's decoders)
        f2 = self.block2(f1)    # B×192×T/2×H/8×W/8
        f3 = self.block3(f2)    # B×480×T/4×H/16×W/16
        f4 = self.block4(f3)    # B×832×T/8×H/32×W/32
        f5 = self.block5(f4)    # B×1024×T/8×H/32×W/32
        return f2, f3, f4, f5


_SEP = {"conv_s": "0.0", "bn_s": "0.1", "conv_t": "1.0", "bn_t": "1.1"}
_UNIT = {"conv": "0", "bn": "1"}


def official_backbone_key(key: str) -> str:
    """Authors' backbone key (relative to ``featureExtractor.``) -> our key. Raises ``KeyError`` if unknown.

    >>> official_backbone_key("block3.0.branch1.1.conv_s.weight")
    'block3.0.branch1.1.0.0.weight'
    >>> official_backbone_key("block3.0.branch0.0.bn.running_mean")
    'block3.0.branch0.1.running_mean'
    """
    m = re.fullmatch(r"(block\d\.\d+(?:\.branch\d\.\d)?)\.(conv_s|bn_s|conv_t|bn_t|conv|bn)\.(\w+)", key)
    if m is None:
        raise KeyError(key)
    prefix, unit, leaf = m.groups()
    if unit in _SEP:
        return f"{prefix}.{_SEP[unit]}.{leaf}"
    if prefix.endswith("branch0.0"):  # torchvision's branch0 is the Conv3dNormActivation itself, not a Sequential
        return f"{prefix[:-2]}.{_UNIT[unit]}.{leaf}"
    return f"{prefix}.{_UNIT[unit]}.{leaf}"


def our_backbone_key_to_official(key: str) -> str:
    """Inverse of :func:`official_backbone_key` (used to write our weights in the authors' layout)."""
    m = re.fullmatch(r"(block\d\.\d+(?:\.branch\d(?:\.\d)?)?)\.(\d)(?:\.(\d))?\.(\w+)", key)
    if m is None:
        raise KeyError(key)
    prefix, a, b, leaf = m.groups()
    if b is not None:  # TemporalSeparableConv: <prefix>.{0,1}.{0,1}.leaf
        unit = {v: k for k, v in _SEP.items()}[f"{a}.{b}"]
        return f"{prefix}.{unit}.{leaf}"
    unit = {"0": "conv", "1": "bn"}[a]
    if prefix.endswith("branch0"):
        return f"{prefix}.0.{unit}.{leaf}"
    return f"{prefix}.{unit}.{leaf}"


# kylemin/S3D's ``base`` Sequential index -> HD2S block entry (sheet §2.4); index 1, 4, 7, 13 are poolings
KYLEMIN_TO_HD2S = {0: "block1.0", 2: "block2.0", 3: "block2.1", 5: "block3.0", 6: "block3.1", 8: "block4.0",
                   9: "block4.1", 10: "block4.2", 11: "block4.3", 12: "block4.4", 14: "block5.0", 15: "block5.1"}


def load_kylemin_s3d(backbone: S3DBackbone, path: str | Path) -> None:
    """Initialise ``backbone`` from kylemin/S3D's ``S3D_kinetics400.pt`` — the Kinetics-400 weights the HD2S
    authors started from (torchvision's ``KINETICS400_V1`` is a different training of the same network).

    Explicit key map ``base.N.<unit>`` -> ``blockK.j.<unit>`` (sheet §2.4), then the unit renaming of
    :func:`official_backbone_key`; the classifier ``fc.*`` is dropped. Shapes are checked and the load is strict:
    a missing or unexpected key raises :class:`~tinyhd.errors.CheckpointError` naming the file.
    """
    from tinyhd.errors import CheckpointError

    from tinyhd.checkpoints import read_torch_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file (kylemin/S3D's S3D_kinetics400.pt)")
    sd = read_torch_file(path)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a bare state dict (name -> tensor), as kylemin/S3D's "
                              f"S3D_kinetics400.pt")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    ours = backbone.state_dict()
    mapped, unexpected = {}, []
    for k, v in sd.items():
        if k.startswith("fc."):
            continue
        m = re.fullmatch(r"base\.(\d+)\.(.+)", k)
        try:
            if m is None or int(m.group(1)) not in KYLEMIN_TO_HD2S:
                raise KeyError(k)
            mapped[official_backbone_key(f"{KYLEMIN_TO_HD2S[int(m.group(1))]}.{m.group(2)}")] = v
        except KeyError:
            unexpected.append(k)
    missing = sorted(set(ours) - set(mapped))
    unexpected += sorted(k for k in mapped if k not in ours)
    if missing or unexpected:
        raise CheckpointError(f"{path}: not kylemin/S3D's layout: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(ours[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: wrong shapes for {bad[:3]}")
    backbone.load_state_dict(mapped, strict=True)
