"""HD2S (Bellitto et al., IJCV 2021), TinyHD's distillation teacher, and the teacher wrapper.

HD2S ("Hierarchical Decoding for Dynamic Saliency") taps an S3D backbone at four depths (§3.2), removes the
time axis of each tap with stride-2 temporal convolutions (§3.3), decodes each tap into a *conspicuity map*
with a 2D conspicuity network, and fuses the four maps with a 1×1 convolution and a sigmoid (§3.4).
It is trained with the multi-level KL loss of Eq. 1 on the final and the four conspicuity maps.

Two extensions of the paper live here as well:

* **Domain adaptation** (§3.5, :class:`HD2S_DA`): a gradient-reversal layer (:class:`GradientReversal`,
  λ = 2/(1+e^(−10p)) − 1, Eq. 4) and a domain classifier on each of the four temporally-reduced features.
* **Domain-specific learning** (§3.6, :class:`HD2S_DSL`): per-domain Gaussian priors concatenated to the
  decoder inputs, per-domain BatchNorm in the conspicuity networks, a per-domain fusion and a per-domain
  learned-σ Gaussian smoothing of the output.

Module names follow the authors' released code (``featureExtractor``, ``conv_t5``, ``decoder5``, …) so that
their checkpoints load *strictly* (:func:`load_official_hd2s`); the S3D backbone is torchvision's
(:mod:`tinyhd.s3d`), renamed through an explicit key map. Everything that deviates from the authors' code is
said where it happens (fact sheet ``shared/spec/hd2s_architecture.md``, cited as "sheet §n").

Where the paper and the authors' code disagree we follow the code (the sheet) and say so:

* **First T−1 frames.** The paper predicts them from time-reversed windows; the authors' test code instead swaps
  the colour channels of the forward window (a ``flip`` on the wrong axis, sheet §9). TinyHD's inference and
  ``tinyhd.data`` pad the window by repeating frame 0; the teacher wrapper and cache do the same
  (:func:`window_indices`), so teacher maps and student clips always see the same frames.
* **Post-smoothing.** The paper says Gaussian σ = 5; the code blurs with σ = 7 at 128×192 (base/DA) or learns σ
  (DSL, initial 5). As a teacher HD2S is used unsmoothed (sheet §12), so no filter lives in the model here.
* **Training recipe.** Paper: batch 8 × 25 accumulated, 2,500 steps; base script: 16 × 25, 5,000 steps. Both are
  settings of the one trainer (``tinyhd train`` with ``model: hd2s``, :mod:`tinyhd.training`; the packaged
  ``hd2s_dhf1k.yaml`` follows the paper) and arguments of :func:`train_hd2s`, a thin wrapper over it. The DA
  script's saliency loss is the final map only, the paper's Eq. 1 is multi-level; :class:`HD2S_DA` returns all
  maps so either can be used (``da_multilevel``; the packaged ``hd2s_da.yaml`` follows the script).
* **DSL quantisation** cuts the gradient to the per-domain fusion in the authors' code (sheet §11); we use a
  straight-through quantisation so that every domain-specific parameter is trained (tested).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tinyhd.errors import CheckpointError
from tinyhd.s3d import TAP_CHANNELS, S3DBackbone, official_backbone_key, our_backbone_key_to_official

LEVELS = (5, 4, 3, 2)  # the authors' order: deepest first (also the fusion's concat order, sheet §3.3)

# Conspicuity network stages, per level: (in, out, number of convs); stage names count down to _1 (sheet §3.2)
DECODER_STAGES: dict[int, list[tuple[int, int, int]]] = {
    5: [(1024, 512, 3), (512, 256, 3), (256, 128, 2), (128, 64, 2), (64, 3, 2)],
    4: [(832, 512, 3), (512, 256, 3), (256, 128, 2), (128, 64, 2), (64, 3, 2)],
    3: [(480, 256, 2), (256, 128, 2), (128, 64, 2), (64, 3, 2)],
    2: [(192, 128, 2), (128, 64, 2), (64, 3, 2)],
}
# Temporal reducers per level: T/2 → 1 at T=16 (level 5, 4: 2→1; level 3: 4→2→1; level 2: 8→4→2→1)
REDUCER_NAMES: dict[int, list[str]] = {
    5: ["conv_t5"], 4: ["conv_t4"], 3: ["conv_t3_1", "conv_t3_2"], 2: ["conv_t2_1", "conv_t2_2", "conv_t2_3"],
}

HD2S_PARAMS = 29_795_597  # sheet §4, paper: 29.8M


class HD2SOutput(NamedTuple):
    """``saliency`` B×1×H×W, ``conspicuity`` B×4×H×W ordered shallowest first (levels 2, 3, 4, 5)."""

    saliency: torch.Tensor
    conspicuity: torch.Tensor


HD2S_INPUT_SIZE = (128, 192)  # H×W HD2S was trained and evaluated at (paper §3.2, sheet §6)


def preprocess_hd2s(frames, size: Sequence[int] | None = HD2S_INPUT_SIZE, interpolation: str = "bicubic") -> torch.Tensor:
    """T×H×W×3 uint8 RGB frames -> 3×T×h×w float32 HD2S input, as the authors' scripts prepare it (sheet §6):
    ``cv2.resize`` to ``size`` (bicubic at validation/test, ``"bilinear"`` in their training loader), then
    v ↦ (2v − 255)/255 ∈ [−1, 1], no mean/std. For a student clip use
    :func:`tinyhd.preprocess.student_to_teacher_input` instead (the teacher then runs at the student's size).
    """
    import cv2
    import numpy as np

    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"preprocess_hd2s expects T×H×W×3 uint8 RGB frames, got {x.shape} {x.dtype}")
    if size is not None and tuple(x.shape[1:3]) != tuple(size):
        flag = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}[interpolation]
        x = np.stack([cv2.resize(f, (int(size[1]), int(size[0])), interpolation=flag) for f in x])
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(3, 0, 1, 2).float()  # 3×T×h×w
    return (2 * t - 255) / 255


# --------------------------------------------------------------------------------------------------------------
# Building blocks (sheet §3.1, §3.2)
# --------------------------------------------------------------------------------------------------------------

class TemporalReducer(nn.Module):
    """Conv3d kernel 3×1×1, stride 2×1×1 (halves T, "spatially point-wise", §3.3) → BN3d → ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0), bias=False)
        self.bn = nn.BatchNorm3d(channels, eps=1e-3, momentum=1e-3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×C×T×h×w -> B×C×⌈T/2⌉×h×w
        return self.relu(self.bn(self.conv(x)))


def _bn2d(channels: int, eps: float, momentum: float, domains: Sequence[str] | None) -> nn.Module:
    if domains is None:
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    return DomainBatchNorm2d(channels, domains)


class Conv2dUnit(nn.Module):
    """Conv2d 3×3 (no bias) → BN2d(eps 1e-3, momentum 1e-3) → ReLU: the first conv of every stage."""

    def __init__(self, cin: int, cout: int, domains: Sequence[str] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = _bn2d(cout, 1e-3, 1e-3, domains)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class DWSepUnit(nn.Module):
    """Depthwise 3×3 → BN2d → ReLU → pointwise 1×1 → BN2d → ReLU (BN at PyTorch defaults, as in the code)."""

    def __init__(self, channels: int, domains: Sequence[str] | None = None) -> None:
        super().__init__()
        self.conv_s = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn_s = _bn2d(channels, 1e-5, 0.1, domains)
        self.relu_s = nn.ReLU(inplace=True)
        self.conv_t = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn_t = _bn2d(channels, 1e-5, 0.1, domains)
        self.relu_t = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_s(self.bn_s(self.conv_s(x)))
        return self.relu_t(self.bn_t(self.conv_t(x)))


class ConspicuityNetwork(nn.Module):
    """A 2D decoder: stages ``deconvlayer{L}_{k}`` each followed by bilinear ×2 upsampling, then a 1×1 conv
    (3→1, with bias) and a sigmoid — one conspicuity map at the input resolution (§3.3, sheet §3.2).

    ``extra_in`` adds input channels to the first conv (the 16 Gaussian priors of HD2S_DSL); ``domains`` turns
    every BatchNorm into a :class:`DomainBatchNorm2d`.
    """

    def __init__(self, level: int, extra_in: int = 0, domains: Sequence[str] | None = None) -> None:
        super().__init__()
        self.level = level
        stages = DECODER_STAGES[level]
        self.stage_names: list[str] = []
        for i, (cin, cout, n) in enumerate(stages):
            k = len(stages) - i
            units: list[nn.Module] = [Conv2dUnit(cin + (extra_in if i == 0 else 0), cout, domains)]
            units += [DWSepUnit(cout, domains) for _ in range(n - 1)]
            self.add_module(f"deconvlayer{level}_{k}", nn.Sequential(*units))
            self.add_module(f"upsample{level}_{k}", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.stage_names.append(f"{level}_{k}")
        self.add_module(f"last_conv{level}", nn.Conv2d(3, 1, 1, bias=True))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×C×h×w -> B×1×(h·2^n)×(w·2^n), in (0, 1)
        for name in self.stage_names:
            x = getattr(self, f"upsample{name}")(getattr(self, f"deconvlayer{name}")(x))
        return self.sigmoid(getattr(self, f"last_conv{self.level}")(x))


# --------------------------------------------------------------------------------------------------------------
# HD2S
# --------------------------------------------------------------------------------------------------------------

class HD2S(nn.Module):
    """HD2S (IJCV 2021, §3, Fig. 2): S3D features at four levels → four conspicuity maps → 1×1 fusion.

    Input: B×3×T×H×W in [−1, 1] (``(2v − 255)/255`` of RGB uint8; sheet §6, see
    :func:`tinyhd.preprocess.student_to_teacher_input`), T ∈ {8, 12, 16} (16 by design) and H, W multiples of
    32 (sheet §1 "Constraints"). Output: :class:`HD2SOutput`; all maps are sigmoid-activated.

    ``pretrained_backbone=True`` loads torchvision's Kinetics-400 S3D weights (needs them in the torch hub cache
    or network access; a clear :class:`~tinyhd.errors.UserError` otherwise). The authors started from a different
    Kinetics-400 training of the same S3D (kylemin/S3D); :func:`tinyhd.s3d.load_kylemin_s3d` loads that file.
    """

    def __init__(self, pretrained_backbone: bool = False) -> None:
        super().__init__()
        self.config = {"pretrained_backbone": False}  # rebuilding for a checkpoint never needs the download
        self.featureExtractor = S3DBackbone(pretrained=pretrained_backbone)
        for level in LEVELS:
            for name in REDUCER_NAMES[level]:
                self.add_module(name, TemporalReducer(TAP_CHANNELS[level]))
            self.add_module(f"decoder{level}", ConspicuityNetwork(level, **self._decoder_kwargs()))
        self._build_fusion()

    # the variants override these two
    def _decoder_kwargs(self) -> dict:
        return {}

    def _build_fusion(self) -> None:
        self.last_conv = nn.Conv2d(4, 1, 1, bias=True)  # weights for [sal5, sal4, sal3, sal2] (Fig. 5 of the paper)
        self.sigmoid = nn.Sigmoid()

    @staticmethod
    def check_input(x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"HD2S expects a B×3×T×H×W clip, got shape {tuple(x.shape)}")
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"HD2S needs H and W that are multiples of 32 (e.g. 128×192, 192×256), got "
                             f"{x.shape[-2]}×{x.shape[-1]}: the four conspicuity maps would differ in size")
        if x.shape[2] not in (8, 12, 16):
            raise ValueError(f"HD2S needs T ∈ {{8, 12, 16}} frames (16 by design) so that every temporal reducer "
                             f"ends at length 1, got T={x.shape[2]}")

    def reduced_features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The four taps after temporal reduction, time axis squeezed: {5: B×1024×H/32×W/32, …, 2: B×192×H/8×W/8}."""
        self.check_input(x)
        f2, f3, f4, f5 = self.featureExtractor(x)
        out = {}
        for level, f in zip((2, 3, 4, 5), (f2, f3, f4, f5)):
            for name in REDUCER_NAMES[level]:
                f = getattr(self, name)(f)
            out[level] = f.squeeze(2)  # B×C×1×h×w -> B×C×h×w
        return out

    def fuse(self, maps: dict[int, torch.Tensor]) -> torch.Tensor:
        """§3.4: concatenate [sal5, sal4, sal3, sal2] (the authors' order), 1×1 conv, logistic activation."""
        return self.sigmoid(self.last_conv(torch.cat([maps[lv] for lv in LEVELS], dim=1)))

    def forward(self, x: torch.Tensor) -> HD2SOutput:
        feats = self.reduced_features(x)
        maps = {lv: getattr(self, f"decoder{lv}")(feats[lv]) for lv in LEVELS}  # each B×1×H×W
        return HD2SOutput(saliency=self.fuse(maps),
                          conspicuity=torch.cat([maps[lv] for lv in (2, 3, 4, 5)], dim=1))  # shallowest first


# --------------------------------------------------------------------------------------------------------------
# Domain adaptation (§3.5)
# --------------------------------------------------------------------------------------------------------------

class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.lambda_ * grad, None


def grl_lambda(p: float) -> float:
    """Eq. 4: λ = 2 / (1 + exp(−10 p)) − 1, p ∈ [0, 1] the training progress (0 → 0, 1 → ≈ 1)."""
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


class GradientReversal(nn.Module):
    """Identity in the forward pass; multiplies the gradient by −λ in the backward pass (Ganin & Lempitsky)."""

    def forward(self, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        return _ReverseGrad.apply(x, float(lambda_))


# level -> (feature reduction channels, classifier hidden widths); input widths are the authors' 128×192 ones
DA_REDUCTION = {5: [1024, 512, 64, 16], 4: [832, 128, 16], 3: [480, 64, 4], 2: [192, 64, 32, 4]}
DA_HIDDEN = {5: [64, 16], 4: [64, 16], 3: [64, 16], 2: [512, 128, 32]}
DA_INPUT_HW = {5: (4, 6), 4: (4, 6), 3: (8, 12), 2: (16, 24)}  # decoder-input grid at 128×192 (sheet §10)


class FeatureReduction(nn.Module):
    """[Conv2d 1×1 (bias) → BN2d → ReLU] repeated: shrinks a level's features for its domain classifier."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.feature_reduction = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_reduction(x)


class DomainClassifier(nn.Module):
    """flatten → [Linear → BN1d → ReLU (→ Dropout 0.5 after all but the first)]… → Linear(2) → LogSoftmax."""

    def __init__(self, in_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [in_features, *hidden]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
            if i > 0:
                layers.append(nn.Dropout(0.5))
        layers += [nn.Linear(widths[-1], 2), nn.LogSoftmax(dim=1)]
        self.domainClassifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×C×h×w -> B×2 log-probabilities (source, target)
        return self.domainClassifier(x.flatten(1))


class HD2SDAOutput(NamedTuple):
    saliency: torch.Tensor
    conspicuity: torch.Tensor
    domain: torch.Tensor | None  # B×4×2 log-probabilities, levels 2, 3, 4, 5 (None when not asked for)


class HD2S_DA(HD2S):
    """HD2S with hierarchical gradient reversal (§3.5): a GRL + domain classifier on each level's reduced
    features, so the adversarial gradient reaches the temporal reducers and the backbone (sheet §10).

    The classifiers' input widths are the authors' (fixed by the 128×192 training resolution), so the domain
    branch only runs on 128×192 clips; the saliency path runs at any valid size. 31,446,141 parameters.

    ``domain_input_size`` (H, W) sizes the classifiers' first Linear layers for clips of another size (the
    reduced-scale runs of :func:`tinyhd.training.train`): **not** the authors' layout — only the default
    (128, 192) loads their DA checkpoint. A non-default size is kept in ``config`` so :func:`load_hd2s` rebuilds it.
    """

    def __init__(self, pretrained_backbone: bool = False,
                 domain_input_size: Sequence[int] = HD2S_INPUT_SIZE) -> None:
        super().__init__(pretrained_backbone)
        H, W = (int(v) for v in domain_input_size)
        if H % 32 or W % 32 or H <= 0 or W <= 0:
            raise ValueError(f"domain_input_size must be positive multiples of 32, got {H}×{W}")
        self.domain_input_size = (H, W)
        if self.domain_input_size != tuple(HD2S_INPUT_SIZE):
            self.config = {**self.config, "domain_input_size": [H, W]}
        self.grl = GradientReversal()
        stride = {5: 32, 4: 32, 3: 16, 2: 8}  # the decoder-input grid of each level (DA_INPUT_HW at 128×192)
        for level in LEVELS:
            chans = DA_REDUCTION[level]
            h, w = H // stride[level], W // stride[level]
            self.add_module(f"featureReduction{level}", FeatureReduction(chans))
            self.add_module(f"domainClassifier{level}", DomainClassifier(chans[-1] * h * w, DA_HIDDEN[level]))

    def forward(self, x: torch.Tensor, lambda_: float | None = None) -> HD2SDAOutput:  # type: ignore[override]
        """``lambda_`` = the GRL factor (use :func:`grl_lambda`); None skips the domain branch (inference)."""
        feats = self.reduced_features(x)
        maps = {lv: getattr(self, f"decoder{lv}")(feats[lv]) for lv in LEVELS}
        domain = None
        if lambda_ is not None:
            if tuple(x.shape[-2:]) != self.domain_input_size:
                h, w = self.domain_input_size
                raise ValueError(f"HD2S_DA's domain classifiers take {h}×{w} clips (their input widths are fixed "
                                 f"by domain_input_size; the authors' weights: 128×192), got {x.shape[-2]}×{x.shape[-1]}")
            domain = torch.stack([
                getattr(self, f"domainClassifier{lv}")(getattr(self, f"featureReduction{lv}")(self.grl(feats[lv], lambda_)))
                for lv in (2, 3, 4, 5)], dim=1)  # B×4×2
        return HD2SDAOutput(self.fuse(maps), torch.cat([maps[lv] for lv in (2, 3, 4, 5)], dim=1), domain)


def da_loss(model: HD2S_DA, source_clip: torch.Tensor, source_gt: torch.Tensor, target_clip: torch.Tensor,
            progress: float, multilevel: bool = True) -> dict[str, torch.Tensor]:
    """One domain-adaptation objective (§3.5): saliency loss on the labelled source clips + the four domain
    classifiers' NLL on source (label 0) and target (label 1) clips, through the gradient reversal with
    λ = :func:`grl_lambda` (``progress`` = p ∈ [0, 1], the fraction of training done).

    ``multilevel=True`` uses the paper's multi-level loss (Eq. 1); the authors' ``train_DA.py`` uses the final map
    only (``multilevel=False``; sheet §10). Clips in [−1, 1], 128×192 (the classifiers' fixed input widths).
    Returns ``{"saliency", "domain", "lambda", "domain_acc", "total"}``; ``domain_acc`` is the fraction of the
    (clip, classifier) pairs whose domain the four classifiers get right (no gradient; 0.5 = fooled).
    """
    from tinyhd.losses import hd2s_kl, hd2s_multilevel_loss

    lam = grl_lambda(progress)
    src = model(source_clip, lambda_=lam)
    tgt = model(target_clip, lambda_=lam)
    if multilevel:
        sal = hd2s_multilevel_loss(src.saliency, src.conspicuity, source_gt)
    else:
        sal = hd2s_kl(src.saliency[:, 0], source_gt)
    zeros = torch.zeros(src.domain.shape[0] * 4, dtype=torch.long, device=src.domain.device)
    ones = torch.ones(tgt.domain.shape[0] * 4, dtype=torch.long, device=tgt.domain.device)
    # summed over the four classifiers, as the authors sum the four NLL terms
    dom = 4 * (F.nll_loss(src.domain.reshape(-1, 2), zeros) + F.nll_loss(tgt.domain.reshape(-1, 2), ones))
    with torch.no_grad():
        right = torch.cat([src.domain.reshape(-1, 2).argmax(1) == 0, tgt.domain.reshape(-1, 2).argmax(1) == 1])
    return {"saliency": sal, "domain": dom, "lambda": torch.tensor(lam), "domain_acc": right.float().mean(),
            "total": sal + dom}


# --------------------------------------------------------------------------------------------------------------
# Domain-specific learning (§3.6)
# --------------------------------------------------------------------------------------------------------------

class DomainBatchNorm2d(nn.Module):
    """One BatchNorm2d per domain, named ``bn_{Domain}``; ``self.domain`` picks the one in use.

    As in the authors' code every per-domain BN uses eps 1e-5, momentum 0.01 whatever the unit it replaces.
    """

    def __init__(self, channels: int, domains: Sequence[str]) -> None:
        super().__init__()
        self.domains = list(domains)
        self.domain = self.domains[0]
        for d in self.domains:
            self.add_module(f"bn_{d}", nn.BatchNorm2d(channels, eps=1e-5, momentum=0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"bn_{self.domain}")(x)


def gaussian_prior_init(n: int = 16) -> torch.Tensor:
    """The 16 initial priors (sheet §11): n×2×2 = [gaussian, (y, x), (μ, log σ)]."""
    if n != 16:
        raise ValueError("the authors' prior initialisation defines exactly 16 Gaussians")
    q = (0.25, 0.5, 0.75)
    rows = [((my, mx), (-1.5, -1.5)) for my in q for mx in q]       # 9 small blobs on a 3×3 grid
    rows += [((0.5, mx), (0.0, -1.5)) for mx in q]                  # 3 tall ones (wide in y)
    rows += [((my, 0.5), (-1.5, 0.0)) for my in q]                  # 3 wide ones (wide in x)
    rows += [((0.5, 0.5), (0.0, 0.0))]                              # 1 broad centre bias
    p = torch.zeros(16, 2, 2)
    for g, ((my, mx), (sy, sx)) in enumerate(rows):
        p[g, 0] = torch.tensor([my, sy])
        p[g, 1] = torch.tensor([mx, sx])
    return p


def render_priors(params: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """n×2×2 prior parameters -> n×h×w maps, 6 · exp(−((y−μy)/σy)²/2) · exp(−((x−μx)/σx)²/2), y, x ∈ [0, 1]."""
    y = torch.linspace(0, 1, h, device=params.device, dtype=params.dtype).view(1, h, 1)
    x = torch.linspace(0, 1, w, device=params.device, dtype=params.dtype).view(1, 1, w)
    mu, sigma = params[:, :, 0], params[:, :, 1].exp()  # n×2 each
    gy = torch.exp(-0.5 * ((y - mu[:, 0].view(-1, 1, 1)) / sigma[:, 0].view(-1, 1, 1)) ** 2)
    gx = torch.exp(-0.5 * ((x - mu[:, 1].view(-1, 1, 1)) / sigma[:, 1].view(-1, 1, 1)) ** 2)
    return 6.0 * gy * gx


class LearnedGaussianSmoothing(nn.Module):
    """Domain-specific smoothing (§3.6): a Gaussian blur parameterised by σ only (initial max_sigma/2).

    Kernel size ⌈6·max_sigma⌉ rounded up to odd, zero padding. σ is clamped to [0.5, max_sigma] in the forward
    pass (our choice: the authors' layer lets σ drift freely [sheet §11]).
    """

    def __init__(self, max_sigma: float = 10.0) -> None:
        super().__init__()
        self.max_sigma = float(max_sigma)
        self.sigma = nn.Parameter(torch.tensor(self.max_sigma / 2))
        k = math.ceil(6 * self.max_sigma)
        self.kernel_size = k + 1 if k % 2 == 0 else k

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×1×H×W
        r = self.kernel_size // 2
        d = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        sigma = self.sigma.clamp(0.5, self.max_sigma)
        g = torch.exp(-(d.view(-1, 1) ** 2 + d.view(1, -1) ** 2) / (2 * sigma**2))
        return F.conv2d(x, (g / g.sum()).view(1, 1, *g.shape), padding=r)


def quantize_straight_through(x: torch.Tensor, levels: int = 255) -> torch.Tensor:
    """⌊x·255⌋/255 in the forward pass, identity gradient in the backward pass.

    The authors quantise with an integer cast, which cuts the autograd graph and leaves the per-domain fusion
    conv without any gradient (sheet §11 "side effect"); the straight-through estimator keeps the forward
    values and lets the gradient through, so every domain-specific parameter is trained.
    """
    return x + (torch.floor(x * levels) / levels - x).detach()


class HD2S_DSL(HD2S):
    """HD2S with domain-specific priors, BatchNorm, fusion and smoothing (§3.6, sheet §11).

    ``forward(x, domain)`` uses the named domain's priors (16 Gaussians concatenated to each decoder's input),
    its BatchNorms inside the four conspicuity networks, its fusion ``last_block__{domain}`` and its smoothing
    ``GL__{domain}``. Backbone and temporal reducers are shared. 30,042,282 parameters with three domains.
    """

    def __init__(self, domains: Sequence[str] = ("DHF1K", "Hollywood", "UCFSports"), n_gaussians: int = 16,
                 max_sigma: float = 10.0, pretrained_backbone: bool = False) -> None:
        self.domains = list(domains)
        self.n_gaussians = n_gaussians
        self.max_sigma = max_sigma
        super().__init__(pretrained_backbone)
        self.config = {"domains": self.domains, "n_gaussians": n_gaussians, "max_sigma": max_sigma,
                       "pretrained_backbone": False}
        for d in self.domains:
            for level in (2, 3, 4, 5):
                self.register_parameter(f"gaussians{level}__{d.lower()}", nn.Parameter(gaussian_prior_init(n_gaussians)))

    def _decoder_kwargs(self) -> dict:
        return {"extra_in": self.n_gaussians, "domains": self.domains}

    def _build_fusion(self) -> None:
        for d in self.domains:
            self.add_module(f"last_block__{d.lower()}", nn.Sequential(nn.Conv2d(4, 1, 1, bias=True), nn.Sigmoid()))
            self.add_module(f"GL__{d.lower()}", LearnedGaussianSmoothing(self.max_sigma))

    def forward(self, x: torch.Tensor, domain: str | None = None) -> HD2SOutput:  # type: ignore[override]
        domain = self.domains[0] if domain is None else domain
        if domain not in self.domains:
            raise ValueError(f"unknown domain {domain!r}; this HD2S_DSL knows {self.domains}")
        for m in self.modules():
            if isinstance(m, DomainBatchNorm2d):
                m.domain = domain
        key = domain.lower()
        feats = self.reduced_features(x)
        maps = {}
        for lv in LEVELS:
            f = feats[lv]                                                                  # B×C×h×w
            priors = render_priors(getattr(self, f"gaussians{lv}__{key}"), *f.shape[-2:])  # 16×h×w
            f = torch.cat([f, priors.unsqueeze(0).expand(f.shape[0], -1, -1, -1)], dim=1)  # B×(C+16)×h×w
            maps[lv] = getattr(self, f"decoder{lv}")(f)
        fused = getattr(self, f"last_block__{key}")(torch.cat([maps[lv] for lv in LEVELS], dim=1))
        smoothed = getattr(self, f"GL__{key}")(quantize_straight_through(fused))
        return HD2SOutput(smoothed, torch.cat([maps[lv] for lv in (2, 3, 4, 5)], dim=1))


# --------------------------------------------------------------------------------------------------------------
# The authors' checkpoint layout
# --------------------------------------------------------------------------------------------------------------

def official_key_to_ours(key: str) -> str:
    """Authors' state-dict key -> ours. Only the backbone differs (see :mod:`tinyhd.s3d`)."""
    if key.startswith("featureExtractor."):
        return "featureExtractor." + official_backbone_key(key[len("featureExtractor."):])
    return key


def our_key_to_official(key: str) -> str:
    if key.startswith("featureExtractor."):
        return "featureExtractor." + our_backbone_key_to_official(key[len("featureExtractor."):])
    return key


def official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's state dict in the authors' layout (what ``torch.save(model.state_dict())`` gives there)."""
    return {our_key_to_official(k): v for k, v in model.state_dict().items()}


def _model_for_official_keys(keys: Sequence[str]) -> nn.Module:
    """Pick the variant from the keys: DA heads -> HD2S_DA; per-domain priors -> HD2S_DSL; else HD2S."""
    if any(k.startswith("featureReduction") or k.startswith("domainClassifier") for k in keys):
        return HD2S_DA()
    if any(k.startswith("last_block__") for k in keys):
        cased = {}
        for k in keys:
            m = re.search(r"\.bn_([A-Za-z0-9]+)\.weight$", k)
            if m:
                cased.setdefault(m.group(1).lower(), m.group(1))
        order = []  # keep the checkpoint's order of first appearance
        for k in keys:
            m = re.fullmatch(r"last_block__(\w+)\.0\.weight", k)
            if m and m.group(1) not in order:
                order.append(m.group(1))
        return HD2S_DSL(domains=[cased.get(d, d) for d in order])
    return HD2S()


def _official_name(key: str) -> str:
    """One of our state-dict keys as the authors' checkpoint names it (for error messages)."""
    try:
        return our_key_to_official(key)
    except KeyError:
        return key


def load_official_hd2s(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load the HD2S authors' checkpoint (a bare state dict, 868 entries for the base model) *strictly*.

    The variant (HD2S, HD2S_DA, HD2S_DSL with its domains) is read off the keys. Every key is renamed with the
    explicit map :func:`official_key_to_ours`, every shape is compared, and any missing or unexpected key stops
    the load with a :class:`~tinyhd.errors.CheckpointError` naming the file and the keys. Returns the model in
    eval mode.
    """
    from tinyhd.checkpoints import read_torch_file

    path = Path(path)
    sd = read_torch_file(path, map_location)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a bare state dict (name -> tensor) in the HD2S authors' layout")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}  # DataParallel saves
    model = _model_for_official_keys(list(sd))
    ours = model.state_dict()
    renamed, source, unknown = {}, {}, []
    for k, v in sd.items():
        try:
            ours_k = official_key_to_ours(k)
        except KeyError:
            unknown.append(k)
            continue
        renamed[ours_k], source[ours_k] = v, k
    # both lists in the authors' names, as they are (or should be) in the file
    missing = sorted(_official_name(k) for k in set(ours) - set(renamed))
    unexpected = sorted(unknown + [source[k] for k in renamed if k not in ours])
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not an HD2S checkpoint in the authors' layout for {type(model).__name__}: "
            f"{len(missing)} missing key(s) {missing[:5]}{' …' if len(missing) > 5 else ''}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
    bad = [f"{our_key_to_official(k)}: file {tuple(v.shape)} vs model {tuple(ours[k].shape)}"
           for k, v in renamed.items() if tuple(v.shape) != tuple(ours[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) with the wrong shape, e.g. {bad[:3]}")
    model.load_state_dict(renamed, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Our own checkpoints (the weights in the authors' layout, plus which variant it is)
# --------------------------------------------------------------------------------------------------------------

VARIANTS = {"HD2S": HD2S, "HD2S_DA": HD2S_DA, "HD2S_DSL": HD2S_DSL}


def save_hd2s(model: HD2S, path: str | Path, **extra) -> None:
    """``{"format": "hd2s", "variant", "config", "model": state dict in the authors' layout, **extra}``, atomic."""
    from tinyhd.paths import atomic_torch_save

    config = {k: v for k, v in getattr(model, "config", {}).items() if k != "pretrained_backbone"}
    atomic_torch_save({"format": "hd2s", "variant": type(model).__name__, "config": config,
                       "model": official_state_dict(model), **extra}, path)


def load_hd2s(path: str | Path, map_location: str | torch.device = "cpu") -> HD2S:
    """Load an HD2S written by :func:`save_hd2s` or, failing that, the authors' bare state dict
    (:func:`load_official_hd2s`). Strict either way; returns the model in eval mode."""
    from tinyhd.checkpoints import read_torch_file

    path = Path(path)
    obj = read_torch_file(path, map_location)
    if isinstance(obj, dict) and (obj.get("format") == "tinyhd" or "student_model" in obj
                                  or isinstance(obj.get("train_config"), dict)
                                  and obj["train_config"].get("model", "tinyhd") == "tinyhd"):
        raise CheckpointError(f"{path}: a TinyHD checkpoint (a student), not an HD2S one: load it with "
                              f"tinyhd.load_checkpoint, or use it as a teacher (teacher: student:PATH)")
    if not (isinstance(obj, dict) and obj.get("format") == "hd2s"):
        return load_official_hd2s(path, map_location)
    cls = VARIANTS.get(obj.get("variant", ""))
    if cls is None:
        raise CheckpointError(f"{path}: unknown HD2S variant {obj.get('variant')!r} (expected one of {list(VARIANTS)})")
    model = cls(**obj.get("config", {}))
    ours = model.state_dict()
    try:
        sd = {official_key_to_ours(k): v for k, v in obj["model"].items()}
    except KeyError as exc:
        raise CheckpointError(f"{path}: unknown key {exc} for {cls.__name__}") from None
    missing = sorted(_official_name(k) for k in set(ours) - set(sd))
    unexpected = sorted(_official_name(k) for k in set(sd) - set(ours))
    if missing or unexpected:
        raise CheckpointError(f"{path}: {len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected "
                              f"key(s) {unexpected[:5]} for {cls.__name__}")
    bad = [f"{_official_name(k)}: file {tuple(sd[k].shape)} vs model {tuple(ours[k].shape)}"
           for k in sd if tuple(sd[k].shape) != tuple(ours[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) with the wrong shape, e.g. {bad[:3]}")
    model.load_state_dict(sd, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# HD2S as the teacher of a student (TinyHD §3.3, sheet §12)
# --------------------------------------------------------------------------------------------------------------

WINDOW = 16  # HD2S's clip length


def window_indices(frame_index: Sequence[int] | torch.Tensor, clip_len: int = WINDOW) -> torch.Tensor:
    """For each target frame t, the indices of the ``clip_len`` frames ending at t; before frame 0, frame 0
    repeats (the padding of :func:`tinyhd.data.clip_frame_indices`, so a MISO clip *is* its window). The
    HD2S paper time-reverses these first windows and its code swaps colours instead (sheet §9); we pad like
    TinyHD's inference and data loaders so that teacher and student see the same frames.

    ``len(frame_index)`` × ``clip_len`` int64.
    """
    t = torch.as_tensor(frame_index, dtype=torch.int64).view(-1, 1)
    return (t + torch.arange(-clip_len + 1, 1).view(1, -1)).clamp_min(0)


class OnlineTeacher:
    """The teacher contract on the fly: ``teacher(batch) -> {"final": B×T'×H×W, "conspicuity": B×4×T'×H×W}``.

    For every target frame of the batch (``frame_index``, T' = 1 for MISO, 16 for MIMO) HD2S sees the 16-frame
    window ending at that frame, at the student's resolution and flipped like the batch (the authors' wrapper
    feeds the teacher the student's clip, only normalised to [−1, 1]; sheet §12).

    * MISO: the window is the batch's clip itself.
    * MIMO: target frame t gets the window that *ends at t*. The sheet (§12, marked uncertain) reads the authors'
      loader as giving window i frames i…i+15 for student output i = frame 16+i, i.e. the teacher map of the
      frame before; we align teacher and student on the same frame, as the paper's Eq. 2 compares them.
      The window of target frame j needs the 15 frames before it, and the clip only holds the frames of the
      clip. With ``frames`` (a callable ``video id -> N×H×W×3 uint8 RGB``, e.g. ``SaliencyClipDataset.frames``)
      the missing frames are decoded and preprocessed exactly like the clip (``tinyhd.preprocess`` at the clip's
      size, then the batch's flip): the maps are then identical to :class:`tinyhd.teacher_cache.CachedTeacher`'s.
      Without it, frames before the clip are padded with the clip's first frame — exact when the clip starts
      the video (how the data loaders pad), an approximation otherwise. We chose padding as the default so the
      wrapper works on any batch without touching the disk.

    Conspicuity maps are ordered shallowest first (HD2S levels 2, 3, 4, 5), matching the student's D1 maps
    (sheet §12: D1 map k ↔ teacher level k+2). Windows are evaluated ``chunk`` at a time, without gradients.
    """

    def __init__(self, hd2s: HD2S, device: str | torch.device = "cpu", frames=None, chunk: int = 16) -> None:
        self.model = hd2s.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.frames = frames
        self.chunk = int(chunk)
        self._video: tuple[str, object] | None = None  # last decoded video (MIMO batches revisit videos)

    def _decoded(self, video: str):
        if self._video is None or self._video[0] != video:
            self._video = (video, self.frames(video))
        return self._video[1]

    def _windows(self, clip: torch.Tensor, frame_index: torch.Tensor, video: str | None, flip: bool) -> torch.Tensor:
        """One sample's windows: T'×3×16×H×W student-normalised clips."""
        from tinyhd.preprocess import preprocess

        T = clip.shape[1]
        tgt = frame_index.view(-1).cpu()
        if len(tgt) == 1:
            if T != WINDOW:
                raise ValueError(f"OnlineTeacher: a MISO clip must have {WINDOW} frames, got {T}")
            return clip.unsqueeze(0)
        win = window_indices(tgt)                                      # T'×16 video frame indices
        if self.frames is not None and video is not None:
            frames = self._decoded(video)
            uniq, inverse = torch.unique(win.view(-1), return_inverse=True)
            x = preprocess(frames[uniq.numpy()], tuple(clip.shape[-2:]))  # 3×U×H×W
            x = x.flip(-1) if flip else x
            return x[:, inverse.view(win.shape)].permute(1, 0, 2, 3, 4).to(clip)   # T'×3×16×H×W
        if len(tgt) != T:
            raise ValueError(f"OnlineTeacher: MIMO targets must be the clip's {T} frames, got {len(tgt)} targets")
        # no decoder: video frame v sits at the last clip position whose index is <= v; earlier frames -> position 0
        pos = (torch.searchsorted(tgt, win, right=True) - 1).clamp_min(0)  # T'×16 positions inside the clip
        return clip[:, pos].permute(1, 0, 2, 3, 4)

    @torch.no_grad()
    def __call__(self, batch) -> dict[str, torch.Tensor]:
        from tinyhd.preprocess import student_to_teacher_input

        clip = batch["clip"]                                            # B×3×T×H×W, ImageNet-normalised
        frame_index = torch.as_tensor(batch["frame_index"]).view(clip.shape[0], -1)
        videos = batch.get("video") or [None] * clip.shape[0]
        flips = torch.as_tensor(batch.get("flip", torch.zeros(clip.shape[0], dtype=torch.bool))).view(-1)
        B, Tp = frame_index.shape
        wins = torch.cat([self._windows(clip[b], frame_index[b], videos[b], bool(flips[b])) for b in range(B)])
        finals, consps = [], []
        for i in range(0, len(wins), self.chunk):
            out = self.model(student_to_teacher_input(wins[i:i + self.chunk].to(self.device)))
            finals.append(out.saliency[:, 0])
            consps.append(out.conspicuity)
        H, W = clip.shape[-2:]
        final = torch.cat(finals).view(B, Tp, H, W).float()
        consp = torch.cat(consps).view(B, Tp, 4, H, W).transpose(1, 2).float()   # B×4×T'×H×W
        return {"final": final, "conspicuity": consp}


# --------------------------------------------------------------------------------------------------------------
# Training HD2S (§4.2, sheet §7-8): a thin wrapper over the one trainer, tinyhd.training.train
# --------------------------------------------------------------------------------------------------------------

def train_hd2s(model: HD2S, data_root: str | Path, steps: int, size: Sequence[int] = (128, 192), batch_size: int = 8,
               accumulation: int = 1, lr: float = 1e-3, weight_decay: float = 2e-7, dataset: str = "dhf1k",
               seed: int = 0, out_dir: str | Path | None = None, checkpoint_every: int = 100,
               device: str | torch.device = "cpu", progress: bool = True, domain: str | None = None,
               val_every: int | None = None, val_clips_per_video: int = 2, head_lr_mult: float = 1.0) -> list[float]:
    """Train ``model`` (HD2S, or HD2S_DSL on one ``domain``) in place with the multi-level KL loss (HD2S Eq. 1,
    sheet §7) for ``steps`` optimiser steps; returns the per-step losses.

    A thin wrapper over :func:`tinyhd.training.train` (``model: hd2s`` / ``hd2s_dsl`` with one source; the
    same loop as ``tinyhd train``): Adam (``lr``, ``weight_decay``), ``accumulation`` mini-batches of
    ``batch_size`` clips per step with their losses summed, 16-frame clips at ``size`` whose target is the last
    frame's GT, random flips, clips drawn from a stream of shuffled passes over the train videos (a pure function
    of ``seed``). The authors' recipe (sheet §8): lr 1e-3, weight decay 2e-7, 8 (base script: 16) × 25
    accumulated, 2,500–5,000 steps at 128×192. ``head_lr_mult`` scales the lr of the 1×1 output convolutions
    (``last_conv*``; 1 = the authors' recipe; the reduced-scale teacher of the notebooks uses it so that a few
    hundred steps from scratch give maps with contrast).

    With ``out_dir`` the trainer's ``last.pt`` (every ``checkpoint_every`` steps and at the end; :func:`load_hd2s`
    reads it) and ``log.jsonl`` are written there and an existing run is resumed; otherwise a temporary folder is
    used. With ``val_every``, the mean KL of the final map over ``val_clips_per_video`` evenly spaced clips of
    each val video is computed every ``val_every`` steps (and at the end) and the best model is kept as
    ``out_dir/best.pt``, as the authors keep the checkpoint with the lowest validation KL (sheet §8).
    """
    import tempfile

    from tinyhd.errors import UserError
    from tinyhd.training import TrainConfig, train

    if isinstance(model, HD2S_DSL):
        name = domain or model.domains[0]
        if name not in model.domains:
            raise ValueError(f"unknown domain {name!r}; this HD2S_DSL knows {model.domains}")
        kind = {"model": "hd2s_dsl", "dsl_sources": ({"name": name, "root": str(data_root), "dataset": dataset},)}
    elif type(model) is HD2S:
        kind = {"model": "hd2s", "data_root": str(data_root), "dataset": dataset}
    else:
        raise ValueError(f"train_hd2s trains HD2S or HD2S_DSL; for {type(model).__name__} use "
                         f"tinyhd.training.train with model: hd2s_da")
    cfg = TrainConfig(**kind, size=tuple(int(s) for s in size), batch_size=batch_size, accumulation=accumulation,
                      lr=lr, weight_decay=weight_decay, head_lr_mult=head_lr_mult, seed=seed, epochs=10**9,
                      max_steps=steps, checkpoint_every=checkpoint_every, device=str(device), progress=progress,
                      val_every=val_every or 0, val_clips_per_video=val_clips_per_video, amp=False)
    try:
        cfg.validate("train_hd2s")
    except UserError as exc:
        raise ValueError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="hd2s_train_") as tmp:
        result = train(cfg, Path(out_dir) if out_dir is not None else tmp, model=model)
    model.eval()
    return [row["total"] for row in result.history if row.get("kind") == "train"]
