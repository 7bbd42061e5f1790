"""TinyHD: inflated MobileNetV2 encoder + heterogeneous decoders D1/D2/D3 + 1×1 fusion (paper §3.1–3.2).

"The fusion layer that computes the final output map is implemented as a 1×1 convolution of the predicted
maps" (§3.2.1); in the authors' code a sigmoid follows it. MISO (``output="single"``, TinyHD-S): one map for the last frame of a 16-frame clip; MIMO
(``output="multi"``, TinyHD-M): one map per input frame. Faithful to the released weights
(``shared/spec/tinyhd_architecture.md``):

* encoder temporal config "S" when every decoder is single-output, "M" otherwise;
* the released M is *mixed*: D1 single-output (its four maps repeated along T before fusion), D2/D3
  multi-output; ``d1_output="multi"`` gives the all-multi D1 of the authors' ``train_config_multi_rc.yaml``.
  (The paper, §3.2.1, describes MIMO as "decoders that predict a number of saliency maps equal to the number
  of frames"; we follow the released weights, whose D1 predicts one set of four maps per clip.)
* fusion: S ``Conv2d(n→1, 1×1)`` (kaiming normal fan-out, zero bias), M ``Conv3d(n→1, 1×1×1)`` (PyTorch
  default init); input order [d1 maps, d2, d3] or, ``fusion_order="d1_last"``, [d2, d3, d1 maps] (the
  released ×1 M weights).

State-dict keys are clean names (``encoder.features.*``, ``decoders.{k}.blocks.{j}.*``, ``fusion.*``);
``tinyhd.checkpoints`` maps the authors' keys onto them explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from tinyhd.decoders import DECODERS
from tinyhd.encoder import MobileNetV2Encoder3d

CLIP_FRAMES = 16  # frames per clip: what TinyHD-M maps (one map each), and the most TinyHD-S takes


@dataclass
class TinyHDOutput:
    """What :class:`TinyHD` returns. Maps are sigmoid outputs in (0, 1) at the input resolution.

    saliency: B×1×H×W (single) or B×T×H×W (multi).
    d1: B×4×H×W (single-output D1) or B×4×T×H×W (multi-output D1); shallowest block first.
    d2, d3: B×1×H×W (single) or B×T×H×W (multi).
    d1/d2/d3 are the first decoder of that kind (None if absent); ``maps`` holds every decoder's output, in
    the order of ``decoders``, shaped as above.
    """

    saliency: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)
    d1: torch.Tensor | None = None
    d2: torch.Tensor | None = None
    d3: torch.Tensor | None = None


class TinyHD(nn.Module):
    """TinyHD-S / TinyHD-M (WACV 2023).

    Args:
        output: "single" (MISO) or "multi" (MIMO).
        decoders: any multiset of "d1", "d2", "d3" (Table 3's homogeneous variants: ("d1", "d1"), ...).
        reduction: channel reduction 1, 2 or 4 (Table 5).
        pretrained_backbone: inflate torchvision's ImageNet MobileNetV2 into the encoder; at ×½ and ×¼ its
            kernels are first averaged down to the reduced widths (paper §3.3.2, ``tinyhd.reduction``).
        d1_output: "single" or "multi" for the D1 decoders of a multi-output model. Default: "single" (the
            released mixed mode) when the model has another decoder kind, "multi" when D1s are alone.
        fusion_order: "default" ([d1, d2, d3]: maps in ``decoders`` order) or "d1_last" (D1 maps last).
    """

    def __init__(self, output: str = "multi", decoders: Sequence[str] = ("d1", "d2", "d3"), reduction: int = 1,
                 pretrained_backbone: bool = False, d1_output: str | None = None,
                 fusion_order: str = "default") -> None:
        super().__init__()
        if output not in ("single", "multi"):
            raise ValueError(f"output must be 'single' or 'multi', got {output!r}")
        decoders = tuple(decoders)
        if not decoders or any(d not in DECODERS for d in decoders):
            raise ValueError(f"decoders must be a non-empty sequence of 'd1', 'd2', 'd3', got {decoders!r}")
        if reduction not in (1, 2, 4):
            raise ValueError(f"reduction must be 1, 2 or 4, got {reduction!r}")
        if fusion_order not in ("default", "d1_last"):
            raise ValueError(f"fusion_order must be 'default' or 'd1_last', got {fusion_order!r}")
        if d1_output is None:
            d1_output = "single" if output == "single" or set(decoders) != {"d1"} else "multi"
        if d1_output not in ("single", "multi") or (output == "single" and d1_output == "multi"):
            raise ValueError(f"d1_output must be 'single' or 'multi' ('single' when output='single'), got {d1_output!r}")
        self.config = dict(output=output, decoders=decoders, reduction=reduction,
                           pretrained_backbone=pretrained_backbone, d1_output=d1_output, fusion_order=fusion_order)
        self.output = output
        single = [output == "single" or (d == "d1" and d1_output == "single") for d in decoders]
        self.encoder_config = "S" if all(single) else "M"
        if output == "multi" and self.encoder_config == "S":
            raise ValueError("output='multi' needs at least one multi-output decoder")
        self.encoder = MobileNetV2Encoder3d(reduction, self.encoder_config, pretrained=pretrained_backbone)
        self.decoders = nn.ModuleList(
            DECODERS[d](self.encoder.block_channels, reduction, single=s, encoder_config=self.encoder_config)
            for d, s in zip(decoders, single))
        self.fusion_order = fusion_order
        n_maps = sum(d.n_maps for d in self.decoders)
        if output == "single":
            self.fusion: nn.Module = nn.Conv2d(n_maps, 1, 1)
            nn.init.kaiming_normal_(self.fusion.weight, mode="fan_out")
            nn.init.zeros_(self.fusion.bias)
        else:
            self.fusion = nn.Conv3d(n_maps, 1, 1)  # PyTorch default init, as in the released code

    def _fusion_inputs(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.fusion_order == "d1_last":
            return [m for m, d in zip(maps, self.decoders) if d.kind != "d1"] + \
                   [m for m, d in zip(maps, self.decoders) if d.kind == "d1"]
        return maps

    def check_input(self, clip: torch.Tensor) -> None:
        """Raise ValueError unless ``clip`` is B×3×T×H×W with H and W divisible by 32 and a T the model maps
        correctly: exactly 16 for TinyHD-M (its temporal strides and Up_t return 16 maps whatever T is, so
        T=15 would give 16 maps for 15 frames, other T fail deep inside), 1..16 for TinyHD-S (the temporal
        strides reduce 16 frames to 1; longer clips fail or, for some decoders, silently pool more frames).

        Only shapes are read, so jit tracing (and fvcore, which uses it) still works."""
        if clip.ndim != 5 or clip.shape[1] != 3:
            raise ValueError(f"TinyHD expects a B×3×T×H×W clip, got shape {tuple(clip.shape)}")
        if clip.shape[-1] % 32 or clip.shape[-2] % 32:
            raise ValueError(f"TinyHD needs H and W divisible by 32, got {tuple(clip.shape[-2:])}")
        t = clip.shape[2]
        if self.output == "multi" and t != CLIP_FRAMES:
            raise ValueError(f"TinyHD-M needs clips of {CLIP_FRAMES} frames, got T={t}")
        if self.output == "single" and not 1 <= t <= CLIP_FRAMES:
            raise ValueError(f"TinyHD-S takes clips of 1 to {CLIP_FRAMES} frames, got T={t}")

    def forward(self, clip: torch.Tensor) -> TinyHDOutput:
        """B×3×T×H×W ImageNet-normalised clip (H, W divisible by 32; T=16 for TinyHD-M, 1..16 for TinyHD-S,
        16 for the released weights)."""
        self.check_input(clip)
        blocks = self.encoder(clip)
        raw = [dec(blocks) for dec in self.decoders]  # each B×n×T'×H×W
        return self.assemble(raw, self.fuse(raw))

    def fuse(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """The fusion of the decoders' maps → saliency (B×1×H×W single, B×T×H×W multi)."""
        if self.output == "single":
            return torch.sigmoid(self.fusion(torch.cat(self._fusion_inputs(raw), dim=1).squeeze(2)))  # B×n×H×W → B×1×H×W
        t = max(m.shape[2] for m in raw)
        full = [m.expand(-1, -1, t, -1, -1) if m.shape[2] == 1 else m for m in raw]  # repeat D1 along T
        return torch.sigmoid(self.fusion(torch.cat(self._fusion_inputs(full), dim=1))).squeeze(1)

    def assemble(self, raw: list[torch.Tensor], saliency: torch.Tensor) -> TinyHDOutput:
        """The :class:`TinyHDOutput` of the decoders' raw maps and the fused saliency."""
        if self.output == "single":
            maps = [m.squeeze(2) for m in raw]
        else:
            maps = [m.squeeze(2) if d.kind == "d1" and d.single else (m if d.kind == "d1" else m.squeeze(1))
                    for m, d in zip(raw, self.decoders)]
        out = TinyHDOutput(saliency=saliency, maps=maps)
        for m, d in zip(maps, self.decoders):
            if getattr(out, d.kind) is None:
                setattr(out, d.kind, m)
        return out
