"""Eq. 1–3 losses: values against the authors' formula, invariances, and numerical safety (no NaN)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyhd.losses import distillation_loss, hd2s_kl, hd2s_multilevel_loss, kl_maps, kl_per_map


def authors_kld_1vs1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' KLDLoss1vs1 as described in sheet (e): per-map sums, nn.KLDivLoss, mean over maps, no eps."""
    p = pred.flatten(1)
    q = target.flatten(1)
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True)
    kl = torch.nn.functional.kl_div(torch.log(p), q, reduction="none").sum(1)
    return kl.mean()


def test_matches_authors_formula_on_positive_maps():
    g = torch.Generator().manual_seed(0)
    pred = torch.sigmoid(torch.randn(6, 24, 32, generator=g, dtype=torch.float64)).float()
    target = torch.rand(6, 24, 32, generator=g)
    target[0, :5] = 0  # zeros in the target are fine for the authors too
    ours = kl_maps(pred, target)
    theirs = authors_kld_1vs1(pred.double(), target.double())
    assert torch.allclose(ours.double(), theirs, rtol=1e-5, atol=1e-6)


def test_eq1_known_value_and_identity():
    # two-pixel maps: p = (1/4, 3/4), q = (1/2, 1/2): KL = 1/2 log 2 + 1/2 log(2/3)
    pred = torch.tensor([[[1.0, 3.0]]])
    target = torch.tensor([[[5.0, 5.0]]])
    expected = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(2.0 / 3.0))
    assert torch.allclose(kl_maps(pred, target), expected, atol=1e-6)
    x = torch.rand(3, 8, 8) + 0.1
    assert kl_maps(x, 7 * x).abs() < 1e-5  # scale-invariant: sum-normalised
    assert kl_maps(x, x.flip(-1)) > 0


def test_mean_over_maps_not_pixels():
    pred = torch.rand(4, 16, 16) + 0.05
    target = torch.rand(4, 16, 16)
    per = kl_per_map(pred, target)
    assert per.shape == (4,)
    assert torch.allclose(kl_maps(pred, target), per.mean())
    # leading dims of any rank are maps
    assert torch.allclose(kl_maps(pred.view(2, 2, 16, 16), target.view(2, 2, 16, 16)), per.mean())


@pytest.mark.parametrize("case", ["zero_pred", "const_pred", "zero_target", "const_target", "both_zero"])
def test_degenerate_maps_give_finite_loss_and_gradients(case):
    pred = torch.rand(3, 12, 12)
    target = torch.rand(3, 12, 12)
    if case in ("zero_pred", "both_zero"):
        pred = torch.zeros_like(pred)
    if case == "const_pred":
        pred = torch.full_like(pred, 0.37)
    if case in ("zero_target", "both_zero"):
        target = torch.zeros_like(target)
    if case == "const_target":
        target = torch.ones_like(target)
    pred.requires_grad_(True)
    loss = kl_maps(pred, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all()
    assert loss >= -1e-6
    if case in ("zero_target", "both_zero"):
        assert loss == 0  # nothing to learn from an empty target


def test_zero_target_maps_are_left_out_of_the_mean():
    pred = torch.rand(2, 8, 8) + 0.1
    target = torch.rand(2, 8, 8)
    target[1] = 0
    assert torch.allclose(kl_maps(pred, target), kl_per_map(pred[:1], target[:1]).mean())


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.0), st.booleans())
def test_never_nan_and_nonnegative(seed, sparsity, half):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(2, 3, 10, 10, generator=g)
    target = torch.rand(2, 3, 10, 10, generator=g)
    pred = pred * (torch.rand(pred.shape, generator=g) > sparsity)
    target = target * (torch.rand(target.shape, generator=g) > sparsity)
    if half:
        pred = pred.half()
    pred.requires_grad_(True)
    loss = kl_maps(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and loss >= -1e-5
    assert torch.isfinite(pred.grad).all()


def _student(b=3, t=1, h=8, w=8, d1_multi=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    sal = torch.rand(b, t, h, w, generator=g).requires_grad_(True)
    d1 = torch.rand(b, 4, t, h, w, generator=g) if d1_multi else torch.rand(b, 4, h, w, generator=g)
    return SimpleNamespace(saliency=sal, d1=d1.requires_grad_(True))


def test_distillation_loss_terms_eq3():
    out = _student()
    g = torch.Generator().manual_seed(1)
    batch = {"saliency": torch.rand(3, 1, 8, 8, generator=g), "has_sal": torch.tensor([True, False, True])}
    teacher = {"final": torch.rand(3, 1, 8, 8, generator=g), "conspicuity": torch.rand(3, 4, 1, 8, 8, generator=g)}
    terms = distillation_loss(out, batch, teacher)
    # GT term: labelled clips only
    assert torch.allclose(terms["gt"], kl_per_map(out.saliency, batch["saliency"])[[0, 2]].mean())
    # teacher final: all clips
    assert torch.allclose(terms["kd_final"], kl_maps(out.saliency, teacher["final"]))
    # D1 map j <-> teacher conspicuity j, summed over the four levels
    d1 = sum(kl_maps(out.d1[:, j], teacher["conspicuity"][:, j, 0]) for j in range(4))
    assert torch.allclose(terms["kd_d1"], d1)
    assert torch.allclose(terms["total"], terms["gt"] + terms["kd_final"] + terms["kd_d1"])
    terms["total"].backward()
    assert out.d1.grad.abs().sum() > 0 and out.saliency.grad.abs().sum() > 0


def test_distill_mask_and_gt_only():
    out = _student()
    batch = {"saliency": torch.zeros(3, 1, 8, 8), "has_sal": torch.tensor([False, False, False])}
    terms = distillation_loss(out, batch, None)
    assert terms["total"] == 0 and terms["total"].requires_grad  # no labels, no teacher: zero, still backprop-able
    teacher = {"final": torch.rand(3, 1, 8, 8), "conspicuity": torch.rand(3, 4, 1, 8, 8)}
    mask = torch.tensor([True, False, False])
    terms = distillation_loss(out, batch, teacher, distill_mask=mask)
    assert torch.allclose(terms["kd_final"], kl_per_map(out.saliency, teacher["final"])[0])


def test_mimo_d1_single_uses_mean_over_windows():
    out = _student(t=16)
    batch = {"saliency": torch.rand(3, 16, 8, 8), "has_sal": torch.ones(3, dtype=torch.bool)}
    teacher = {"final": torch.rand(3, 16, 8, 8), "conspicuity": torch.rand(3, 4, 16, 8, 8)}
    terms = distillation_loss(out, batch, teacher)
    mean_t = teacher["conspicuity"].mean(2)
    assert torch.allclose(terms["kd_d1"], sum(kl_maps(out.d1[:, j], mean_t[:, j]) for j in range(4)))
    out_m = _student(t=16, d1_multi=True)
    terms = distillation_loss(out_m, batch, teacher)
    assert torch.allclose(terms["kd_d1"], sum(kl_maps(out_m.d1[:, j], teacher["conspicuity"][:, j]) for j in range(4)))


def test_hd2s_loss_finite_and_matches_kl():
    pred = torch.rand(2, 1, 8, 8) + 0.1
    cons = torch.rand(2, 4, 8, 8) + 0.1
    gt = torch.rand(2, 8, 8)
    assert torch.allclose(hd2s_kl(pred, gt), kl_maps(pred.view(2, 8, 8), gt), atol=1e-5)
    loss = hd2s_multilevel_loss(pred, cons, torch.zeros_like(gt))
    assert torch.isfinite(loss)
    expected = hd2s_kl(pred, gt) + sum(hd2s_kl(cons[:, j], gt) for j in range(4))
    assert torch.allclose(hd2s_multilevel_loss(pred, cons, gt), expected)
