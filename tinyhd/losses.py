"""Losses: KL divergence between sum-normalised saliency maps (TinyHD paper §3.3, Eq. 1–3).

TinyHD compares every pair of maps as probability distributions over pixels (paper Eq. 1):

    L_KL(x, y) = Σ_i y_i log(y_i / x_i),   x = student map / Σ student,   y = target / Σ target.

The authors' ``KLDLoss1vs1`` (architecture sheet (e) "Losses") sums over the pixels of each map and
**averages over maps** (batch entries, frames, D1 levels alike); :func:`kl_maps` does exactly that.
Their code has no epsilon: a map that sums to zero gives NaN. Ours is numerically safe:

* the prediction gets ``eps`` added before normalising, so an all-zero (or constant) prediction becomes
  the uniform distribution — finite loss, finite gradient. ``eps`` is 1e-7, far below a sigmoid output's
  resolution in float32, so on real (positive) predictions the value matches the authors' formula;
* a target pixel equal to 0 contributes 0 (``torch.xlogy``, PyTorch's ``kl_div`` convention);
* a target map that sums to 0 carries no information: it contributes 0 and is *not* counted in the mean.

The totals (paper Eq. 2 on the target set, Eq. 3 with the auxiliary set) are built by
:func:`distillation_loss`:

    L = KL(S_final(v), s)                    ground truth, labelled clips only (``has_sal``)
      + KL(S_final(·), T_final(·))           teacher's final map, on the clips chosen for distillation
      + Σ_j KL(D1_j(·), T_j(·))              D1 map j ↔ teacher conspicuity map j (j = 0 shallowest)

D2 and D3 get no intermediate supervision (sheet (f)). :func:`hd2s_multilevel_loss` is the teacher's own
loss (HD2S paper Eq. 1, HD2S sheet §7), used to train the reduced-scale teacher.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

EPS = 1e-7

__all__ = ["kl_per_map", "kl_maps", "distillation_loss", "hd2s_kl", "hd2s_multilevel_loss", "EPS"]


def kl_per_map(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """Eq. 1 for each map: ``Σ_pixels q (log q − log p)`` with p, q the sum-normalised maps.

    pred, target: ``...×H×W`` (same shape; any leading dims). Returns ``...`` (one value per map), float32.
    Maps whose target sums to 0 give 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"kl_per_map: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    p = pred.float().flatten(start_dim=-2).clamp_min(0) + eps            # ...×N, strictly positive
    q = target.float().flatten(start_dim=-2).clamp_min(0)                # ...×N, may contain zeros
    log_p = torch.log(p) - torch.log(p.sum(-1, keepdim=True))            # log of sum-normalised pred
    q_sum = q.sum(-1, keepdim=True)
    q = q / torch.where(q_sum > 0, q_sum, torch.ones_like(q_sum))        # all-zero target stays zero
    return (torch.xlogy(q, q) - q * log_p).sum(-1)                       # ...


def kl_maps(pred: Tensor, target: Tensor, mask: Tensor | None = None, eps: float = EPS) -> Tensor:
    """The authors' ``KLDLoss1vs1``: per-map KL (Eq. 1) averaged over maps. Returns a scalar.

    pred, target: ``B×...×H×W``. ``mask`` (bool, ``B``) selects the batch entries that count; maps whose
    target sums to 0 are left out of the mean too. With nothing left the result is a 0 that still carries a
    (zero) gradient to ``pred``, so callers can always add it to the total.
    """
    per_map = kl_per_map(pred, target, eps)                               # B×...
    valid = target.flatten(start_dim=-2).sum(-1) > 0                      # B×...
    if mask is not None:
        mask = mask.to(device=per_map.device, dtype=torch.bool)
        valid = valid & mask.view(-1, *([1] * (per_map.dim() - 1)))
    n = valid.sum()
    total = torch.where(valid, per_map, torch.zeros_like(per_map)).sum()
    return total / n.clamp_min(1)


def _as_maps(x: Tensor, like: Tensor) -> Tensor:
    """Bring a teacher target to the student map's shape (B×T'×H×W vs B×1×H×W etc.)."""
    if x.shape == like.shape:
        return x
    if x.numel() == like.numel():                                       # e.g. B×1×1×H×W vs B×1×H×W
        return x.reshape(like.shape)
    raise ValueError(f"teacher map {tuple(x.shape)} does not match the student map {tuple(like.shape)}")


def _d1_target(conspicuity: Tensor, d1: Tensor) -> Tensor:
    """Teacher conspicuity maps (B×4×T'×H×W) as targets for the student's D1 maps.

    D1 single-output (``B×4×H×W``) with T' = 1: the one window as is (target mode 'I', S model).
    D1 single-output with T' > 1 (the released M model): the **mean over the T' windows** (mode 'M', sheet (f)).
    D1 multi-output (``B×4×T'×H×W``): frame by frame.
    """
    if d1.dim() == 5:
        return conspicuity
    if conspicuity.dim() == 5:
        return conspicuity.mean(dim=2)
    return conspicuity


def distillation_loss(
    out: Any,
    batch: Mapping[str, Any],
    teacher_maps: Mapping[str, Tensor] | None = None,
    distill_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Paper Eq. 2/3: the three KL terms of TinyHD training and their sum.

    out: the student's ``TinyHDOutput`` (``saliency`` B×T'×H×W, ``d1`` B×4×H×W or B×4×T'×H×W).
    batch: a collated data batch; ``saliency`` B×T'×H×W and ``has_sal`` (B, bool) are used.
    teacher_maps: ``{"final": B×T'×H×W, "conspicuity": B×4×T'×H×W}`` or None (ground truth only).
    distill_mask: bool ``B``, the clips the teacher terms apply to (default: all).

    Returns ``{"gt", "kd_final", "kd_d1", "total"}`` (scalars). ``total`` is the unweighted sum.
    """
    sal = out.saliency                                                   # B×T'×H×W
    gt = batch["saliency"].to(sal.device)
    has_sal = torch.as_tensor(batch["has_sal"], device=sal.device).bool().view(-1)
    terms: dict[str, Tensor] = {"gt": kl_maps(sal, gt.reshape(sal.shape), mask=has_sal)}
    zero = sal.sum() * 0.0
    if teacher_maps is None:
        terms["kd_final"] = zero
        terms["kd_d1"] = zero
    else:
        mask = None if distill_mask is None else torch.as_tensor(distill_mask, device=sal.device).bool()
        t_final = _as_maps(teacher_maps["final"].to(sal.device).detach(), sal)
        terms["kd_final"] = kl_maps(sal, t_final, mask=mask)
        d1 = out.d1                                                      # B×4×H×W (or B×4×T'×H×W)
        t_d1 = _d1_target(teacher_maps["conspicuity"].to(sal.device).detach(), d1)
        t_d1 = _as_maps(t_d1, d1)
        # Σ over the four levels of the per-level mean: each level is one KLDLoss1vs1 call in the authors' code
        terms["kd_d1"] = sum(kl_maps(d1[:, j], t_d1[:, j], mask=mask) for j in range(d1.shape[1]))
    terms["total"] = terms["gt"] + terms["kd_final"] + terms["kd_d1"]
    return terms


def hd2s_kl(pred: Tensor, target: Tensor) -> Tensor:
    """HD2S's KL (HD2S sheet §7): ``Σ Q log(ε + Q/(P + ε))`` per map, averaged over the batch.

    pred, target: ``B×H×W`` (or ``B×1×H×W``). ε is Python's float epsilon as in the authors' code; a target
    summing to zero contributes 0 instead of NaN.
    """
    eps = 2.220446049250313e-16
    p = pred.float().flatten(start_dim=1)
    q = target.float().flatten(start_dim=1).clamp_min(0)
    p = p / p.sum(1, keepdim=True).clamp_min(eps)
    q = q / q.sum(1, keepdim=True).clamp_min(eps)
    return (q * torch.log(eps + q / (p + eps))).sum(1).mean()


def hd2s_multilevel_loss(saliency: Tensor, conspicuity: Tensor, target: Tensor) -> Tensor:
    """HD2S multi-level loss (HD2S paper Eq. 1; Table 3's caption calls it Equation 5): KL of the final map and
    of each of the 4 conspicuity maps against the same ground truth, weights 1. saliency ``B×1×H×W``,
    conspicuity ``B×4×H×W``, target ``B×H×W``."""
    target = target.reshape(target.shape[0], -1)
    loss = hd2s_kl(saliency.reshape(saliency.shape[0], -1), target)
    for j in range(conspicuity.shape[1]):
        loss = loss + hd2s_kl(conspicuity[:, j].reshape(target.shape), target)
    return loss
