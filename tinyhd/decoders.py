"""TinyHD's three decoders D1 (hierarchical), D2 (U-Net-like) and D3 (DLA-like), paper §3.2.1.

"The set of heterogeneous decoders, employed in our model, includes D1 (hierarchical map aggregation),
D2 (U-Net-like) and D3 (deep layer aggregation). [...] D1 produces four intermediate saliency maps, while D2
and D3 produce a map each." The paper leaves the details to its supplementary material; in the authors' code
each decoder is built only from one small block, the 3D inverted residual :class:`IRB`, plus pixel shuffles
and trilinear upsampling. The widths, temporal codes and upsampling modes
are those of the authors' released weights (``shared/spec/tinyhd_architecture.md`` (b), (d)); each decoder
exposes them as constructor data (``widths``: list of (in, out) per IRB, ``temporal``: list of (kt, st, pt)).

Temporal codes of the depthwise conv of each IRB, written (kt, st, pt):
``d`` = T↓ (3, 2, 1) halves T; ``k`` keeps T, with T1 (1, 1, 0) in the S model and T3 (3, 1, 1) in the M
model (:func:`decoder_temporal`). Multi-output decoders follow every spatial upsampling with Up_t (2× in T).
Every decoder ends with a sigmoid.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from tinyhd.encoder import PixelShuffle3d, Temporal

T_DOWN: Temporal = (3, 2, 1)  # T↓
T1: Temporal = (1, 1, 0)
T3: Temporal = (3, 1, 1)

# Temporal code strings per decoder, sheet (b) "Temporal code of each adapter's depthwise conv".
_CODES = {
    # (decoder, single output?, encoder config) -> codes; "k" = keep T (T1 in S, T3 in M)
    ("d1", True, "S"): "dkdd" "dkdk" "dkkk" "dkkk",
    ("d1", True, "M"): "dkdd" "dkdk" "dkkk" "kkkk",  # released M: D1 single-output, B3 has T=1
    ("d2", True, "S"): "kkdkdddd",
    ("d3", True, "S"): "ddkkkdddddddk",
}
_N_BLOCKS = {"d1": 16, "d2": 8, "d3": 13}


def decoder_temporal(kind: str, single: bool, encoder_config: str) -> list[Temporal]:
    """(kt, st, pt) of each IRB of decoder ``kind`` ("d1"/"d2"/"d3"), per the sheet's table.

    Multi-output decoders keep T everywhere with T3 kernels (they reach T=16 through Up_t). Single-output
    decoders reduce T to 1 with the T↓ codes; their "keep" codes are T1 in the S model, T3 in the M model.
    """
    if kind not in _N_BLOCKS:
        raise ValueError(f"unknown decoder {kind!r}; expected 'd1', 'd2' or 'd3'")
    if not single:
        return [T3] * _N_BLOCKS[kind]
    key = (kind, True, encoder_config)
    if key not in _CODES:
        raise ValueError(f"a single-output {kind.upper()} exists in the S model only (all decoders single-output)")
    keep = T1 if encoder_config == "S" else T3
    return [T_DOWN if c == "d" else keep for c in _CODES[key]]


class IRB(nn.Module):
    """3D inverted residual block of the decoders (torchvision's InvertedResidual, expand ratio 2, 3D,
    residual switched off):

    1×1×1 conv i→2i + BN + ReLU6; depthwise (kt,3,3) conv, stride (st,1,1), padding (pt,1,1) + BN + ReLU6;
    1×1×1 conv 2i→o + BN (no activation). No conv has a bias. Module names (``conv.0.0`` ...) are those of
    the released checkpoints.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal: Temporal = T1) -> None:
        super().__init__()
        kt, st, pt = temporal
        hidden = 2 * in_channels
        self.in_channels, self.out_channels, self.temporal = in_channels, out_channels, tuple(temporal)
        self.conv = nn.Sequential(
            nn.Sequential(nn.Conv3d(in_channels, hidden, 1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU6(inplace=True)),
            nn.Sequential(nn.Conv3d(hidden, hidden, (kt, 3, 3), stride=(st, 1, 1), padding=(pt, 1, 1), groups=hidden,
                                    bias=False), nn.BatchNorm3d(hidden), nn.ReLU6(inplace=True)),
            nn.Conv3d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm3d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×i×T×H×W → B×o×T'×H×W (T' = T, or ⌈T/2⌉ for T↓)."""
        return self.conv(x)


def up_t() -> nn.Upsample:
    """Up_t: 2× in time, ``trilinear`` with ``align_corners=True`` (T=1 becomes two identical frames)."""
    return nn.Upsample(scale_factor=(2, 1, 1), mode="trilinear", align_corners=True)


def up_s() -> nn.Upsample:
    """Up_s: 2× in H and W (bilinear, ``align_corners=True``), channels kept."""
    return nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=True)


def _up(mode: str, single: bool) -> nn.Sequential:
    """One 2× spatial upsampling ("shuffle": PS, channels ÷4; "upsample": Up_s), then Up_t if multi-output."""
    ops: list[nn.Module] = [PixelShuffle3d(2) if mode == "shuffle" else up_s()]
    if not single:
        ops.append(up_t())
    return nn.Sequential(*ops)


class _Decoder(nn.Module):
    """Common part of D1/D2/D3: the IRBs (``blocks``, in the authors' adapter order) built from ``widths``
    (list of (in, out)) and ``temporal`` (list of (kt, st, pt)); ``single`` = one output frame."""

    kind = ""
    n_maps = 1

    def __init__(self, widths: list[tuple[int, int]], single: bool, temporal: Sequence[Temporal] | None,
                 encoder_config: str) -> None:
        super().__init__()
        self.single = single
        self.widths = widths
        self.temporal = list(temporal) if temporal is not None else decoder_temporal(self.kind, single, encoder_config)
        if len(self.temporal) != len(widths):
            raise ValueError(f"{self.kind.upper()} has {len(widths)} IRBs, got {len(self.temporal)} temporal codes")
        self.blocks = nn.ModuleList(IRB(i, o, t) for (i, o), t in zip(widths, self.temporal))


class D1(_Decoder):
    """Hierarchical decoder (paper §3.2.1, after HD2S): one conspicuity map from each block B0..B3.

    Branch k on Bk: IRBs interleaved with 2× upsamplings back to the input resolution, ending in one map:
    br0: A0 A1 ↑ A2 A3 · br1: A4 ↑ A5 ↑ A6 A7 · br2: A8 ↑ A9 ↑ A10 ↑ A11 · br3: ↑ A12 ↑ A13 ↑ A14 ↑ A15
    (↑ = pixel shuffle; the first ↑ of br3 is Up_s at ×¼). Output: B×4×T'×H×W, map 0 from the shallowest
    block. Released models use the single-output D1 (T'=1) even in TinyHD-M.
    """

    kind = "d1"
    n_maps = 4

    def __init__(self, block_channels: Sequence[int], reduction: int = 1, single: bool = True,
                 encoder_config: str = "S", temporal: Sequence[Temporal] | None = None) -> None:
        c0, c1, c2, c3 = block_channels
        self.br3_first_up = "upsample" if reduction == 4 else "shuffle"  # sheet (d)
        c3_in = c3 if self.br3_first_up == "upsample" else c3 // 4
        widths = [(c0, 24), (24, 48), (12, 24), (24, 1),
                  (c1, 56), (14, 56), (14, 28), (28, 1),
                  (c2, 56), (14, 56), (14, 56), (14, 1),
                  (c3_in, 136), (34, 136), (34, 136), (34, 1)]
        super().__init__(widths, single, temporal, encoder_config)
        n_ups = [sum(step == "up" for step in plan) for plan in self.PLAN]
        self.ups = nn.ModuleList(
            nn.ModuleList(_up(self.br3_first_up if (k == 3 and i == 0) else "shuffle", single) for i in range(n))
            for k, n in enumerate(n_ups))

    # per branch: IRB indices and 2× spatial upsamplings ("up"), in order (sheet (b), D1)
    PLAN = ((0, 1, "up", 2, 3), (4, "up", 5, "up", 6, 7), (8, "up", 9, "up", 10, "up", 11),
            ("up", 12, "up", 13, "up", 14, "up", 15))

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B0..B3] → B×4×T'×H×W conspicuity maps in (0, 1)."""
        maps = []
        for plan, ups, x in zip(self.PLAN, self.ups, blocks):
            ups_iter = iter(ups)
            for step in plan:
                x = next(ups_iter)(x) if step == "up" else self.blocks[step](x)
            maps.append(x)
        return torch.sigmoid(torch.cat(maps, dim=1))


class D2(_Decoder):
    """U-Net-like decoder (paper §3.2.1): top-down path with additive skip connections.

    u = ↑A16(B3) + B2;  u = ↑A17(u) + A18(B1);  u = ↑A19(u) + A21(A20(B0));  u = ↑'A22(u);  map = A23(u)
    (↑ = pixel shuffle; ↑' = pixel shuffle at ×1, Up_s at ×½/×¼; multi-output adds Up_t after each ↑).
    """

    kind = "d2"

    def __init__(self, block_channels: Sequence[int], reduction: int = 1, single: bool = True,
                 encoder_config: str = "S", temporal: Sequence[Temporal] | None = None) -> None:
        c0, c1, c2, c3 = block_channels
        self.last_up = "shuffle" if reduction == 1 else "upsample"  # sheet (d)
        widths = [(c3, 4 * c2), (c2, 4 * c1), (c1, c1), (c1, 4 * c0), (c0, c0), (c0, c0), (c0, c0),
                  (c0 // 4 if self.last_up == "shuffle" else c0, 1)]
        super().__init__(widths, single, temporal, encoder_config)
        self.ups = nn.ModuleList([_up("shuffle", single), _up("shuffle", single), _up("shuffle", single),
                                  _up(self.last_up, single)])

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B0..B3] → B×1×T'×H×W map in (0, 1)."""
        b0, b1, b2, b3 = blocks
        a = self.blocks
        u = self.ups[0](a[0](b3)) + b2
        u = self.ups[1](a[1](u)) + a[2](b1)
        u = self.ups[2](a[3](u)) + a[5](a[4](b0))
        u = self.ups[3](a[6](u))
        return torch.sigmoid(a[7](u))


class D3(_Decoder):
    """DLA-like decoder (paper §3.2.1): iterative deep aggregation over the four blocks.

    Level 1: x[k] = U(Bk), x[k] += A(23+k)(B(k-1)) for k=1..3 (U = PS at ×1, Up_s otherwise).
    Level 2: y[j] = PS(A(27+j)(x[j+1])) + A(30+j)(x[j]), j=0..2.  Level 3: z[j] = PS(y[j+1]) + A(33+j)(y[j]),
    j=0,1.  Level 4: w = PS(z[1]) + A35(z[0]).  map = A36(w). Multi-output adds Up_t after every U/PS.
    """

    kind = "d3"

    def __init__(self, block_channels: Sequence[int], reduction: int = 1, single: bool = True,
                 encoder_config: str = "S", temporal: Sequence[Temporal] | None = None) -> None:
        c = list(block_channels)
        self.first_up = "shuffle" if reduction == 1 else "upsample"  # sheet (d)
        x = [ci // 4 if self.first_up == "shuffle" else ci for ci in c]  # level-1 widths
        y = [2, 8, 32]  # level-2 widths (all reductions)
        widths = ([(c[0], x[1]), (c[1], x[2]), (c[2], x[3])]
                  + [(x[j + 1], 4 * y[j]) for j in range(3)]
                  + [(x[j], y[j]) for j in range(3)]
                  + [(y[0], y[1] // 4), (y[1], y[2] // 4), (y[1] // 4, y[2] // 16), (y[2] // 16, 1)])
        super().__init__(widths, single, temporal, encoder_config)
        self.level1_up = nn.ModuleList(_up(self.first_up, single) for _ in range(4))
        self.level2_up = nn.ModuleList(_up("shuffle", single) for _ in range(3))
        self.level3_up = nn.ModuleList(_up("shuffle", single) for _ in range(2))
        self.level4_up = _up("shuffle", single)

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B0..B3] → B×1×T'×H×W map in (0, 1)."""
        a = self.blocks
        x = [up(b) for up, b in zip(self.level1_up, blocks)]
        x = [x[0]] + [x[k] + a[k - 1](blocks[k - 1]) for k in (1, 2, 3)]
        y = [self.level2_up[j](a[3 + j](x[j + 1])) + a[6 + j](x[j]) for j in range(3)]
        z = [self.level3_up[j](y[j + 1]) + a[9 + j](y[j]) for j in range(2)]
        w = self.level4_up(z[1]) + a[11](z[0])
        return torch.sigmoid(a[12](w))


DECODERS: dict[str, type[_Decoder]] = {"d1": D1, "d2": D2, "d3": D3}
