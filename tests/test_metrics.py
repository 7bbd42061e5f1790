"""The seven benchmark metrics against hand-computed cases, literal loop ports of the MATLAB code, the
metrics sheet's canonical values and invariances (``../shared/spec/metrics.md``)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinyhd import metrics as M

EPS = 2.220446049250313e-16


# ------------------------------------------------------------------------------------------------------
# literal, loop-by-loop transliterations of the MATLAB files (slow; used on small maps only)
# ------------------------------------------------------------------------------------------------------
def _norm(s):
    return (s - s.min()) / (s.max() - s.min())


def _judd_loop(s, f, rng):
    s = s.astype(np.float64) + rng.random(s.shape) / 10000000
    s = _norm(s).ravel()
    f = f.ravel()
    sth = s[f > 0]
    nfix, npix = len(sth), len(s)
    thr = sorted(sth, reverse=True)
    tp, fp = [0.0], [0.0]
    for i in range(1, nfix + 1):
        above = int(np.sum(s >= thr[i - 1]))
        tp.append(i / nfix)
        fp.append((above - i) / (npix - nfix))
    tp.append(1.0)
    fp.append(1.0)
    return sum((fp[j + 1] - fp[j]) * (tp[j + 1] + tp[j]) / 2 for j in range(len(tp) - 1))


def _grid_auc(sth, curfix, fp_den):
    top = max(max(sth), max(curfix))
    grid = [g for g in M.matlab_colon(0.0, 0.1, top)][::-1]
    tp, fp = [0.0], [0.0]
    for t in grid:
        tp.append(sum(1 for v in sth if v >= t) / len(sth))
        fp.append(sum(1 for v in curfix if v >= t) / fp_den)
    tp.append(1.0)
    fp.append(1.0)
    return sum((fp[j + 1] - fp[j]) * (tp[j + 1] + tp[j]) / 2 for j in range(len(tp) - 1))


def _borji_loop(s, f, rng, nsplits=100):
    s = _norm(s.astype(np.float64)).ravel()
    sth = s[f.ravel() > 0]
    r = rng.integers(0, s.size, size=(len(sth), nsplits))
    return float(np.mean([_grid_auc(sth, s[r[:, k]], len(sth)) for k in range(nsplits)]))


def _shuffled_loop(s, f, other, rng, nsplits=100):
    s = _norm(s.astype(np.float64)).ravel()
    sth = s[f.ravel() > 0]
    ind = np.flatnonzero(other.ravel() > 0)
    k = min(len(sth), len(ind))
    aucs = []
    for _ in range(nsplits):
        perm = ind if k == len(ind) else rng.permutation(ind)
        aucs.append(_grid_auc(sth, s[perm[:k]], k))
    return float(np.mean(aucs))


def _small_case(seed, h=12, w=15, nfix=9):
    rng = np.random.default_rng(seed)
    s = rng.random((h, w))
    f = np.zeros((h, w))
    idx = rng.choice(h * w, nfix, replace=False)
    f.flat[idx] = 1
    other = np.zeros((h, w))
    other.flat[rng.choice(h * w, 2 * nfix, replace=False)] = 1
    q = cv2.GaussianBlur(f, (0, 0), 2.0)
    return s, f, q / q.max(), other


# ------------------------------------------------------------------------------------------------------
# hand-computed small cases
# ------------------------------------------------------------------------------------------------------
def test_auc_judd_hand_case():
    # normalised map [0, 3/7; 5/14, 1]; thresholds 1 and 5/14 give (fp, tp) = (0, .5), (.5, 1): area .875
    s = np.array([[0.1, 0.4], [0.35, 0.8]])
    f = np.array([[0, 0], [1, 1]])
    assert M.auc_judd(s, f, jitter=False) == pytest.approx(0.875, abs=1e-12)
    assert M.auc_judd(s, f, rng=0) == pytest.approx(0.875, abs=1e-6)


def test_auc_judd_ties_without_jitter_lower_the_score():
    s = np.zeros((10, 10))
    s[:5] = 1.0  # two flat regions
    f = np.zeros((10, 10))
    f[0, 0] = f[9, 9] = 1
    nojit = M.auc_judd(s, f, jitter=False)
    jit = np.mean([M.auc_judd(s, f, rng=k) for k in range(20)])
    assert nojit < jit


def test_nss_uses_sample_std():
    s = np.array([[0.0, 0.0, 0.0, 4.0]])  # mean 1, sample std 2 -> z(4) = 1.5 (population std gives 1.732)
    f = np.array([[0, 0, 0, 1]])
    assert M.nss(s, f) == pytest.approx(1.5, abs=1e-12)


def test_cc_hand_case():
    a = np.array([[1.0, 2.0, 3.0]])
    b = np.array([[1.0, 2.0, 4.0]])
    assert M.cc(a, b) == pytest.approx(3.0 / math.sqrt(2.0 * 42.0 / 9.0), abs=1e-12)


def test_sim_min_max_then_sum():
    # pred [0,1,3] -> [0,.25,.75]; gt [1,2,3] -> [0,1/3,2/3]; SIM = .25 + 2/3 (sum-only would give .75)
    assert M.sim(np.array([[0.0, 1.0, 3.0]]), np.array([[1.0, 2.0, 3.0]])) == pytest.approx(0.25 + 2 / 3)


def test_sim_zero_and_constant_maps():
    q = np.array([[1.0, 2.0, 3.0]])
    assert M.sim(np.zeros((1, 3)), q) == 0.0
    assert math.isnan(M.sim(np.full((1, 3), 0.37), q))


def test_kld_hand_cases():
    q = np.array([[1.0, 3.0]])
    assert M.kld(np.array([[1.0, 1.0]]), q) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-12)
    # an exact zero where Q > 0 costs Q·log(Q/eps): ~36 nats per unit mass
    expect = 0.25 * math.log(EPS + 0.25 / EPS) + 0.75 * math.log(EPS + 0.75 / (1.0 + EPS))
    assert M.kld(np.array([[0.0, 1.0]]), q) == pytest.approx(expect, rel=1e-12)
    assert M.kld(np.array([[0.0, 1.0]]), q) > 8


def test_kld_direction_is_gt_given_pred():
    q = np.array([[0.0, 0.0, 1.0, 3.0]])
    p = np.array([[1.0, 1.0, 1.0, 1.0]])
    # KL(Q||P): zeros of Q contribute 0; reversed, P's mass where Q = 0 would cost ~36 nats
    assert M.kld(p, q) == pytest.approx(0.25 * math.log(1.0) + 0.75 * math.log(3.0), abs=1e-12)
    assert M.kld(q, p) > 10


def test_shuffled_auc_deterministic_hand_case_uses_inclusive_grid():
    # fixated 0.6, other 0.55; k = 1 so the score is deterministic. MATLAB's grid 0:0.1:0.6 holds exactly 0.6,
    # where tp = 1 and fp = 0 -> area 1. A np.arange grid (0.6000000000000001) would give 0.5.
    s = np.array([[0.0, 0.6, 1.0, 0.55]])
    f = np.array([[0, 1, 0, 0]])
    o = np.array([[0, 0, 0, 1]])
    assert M.auc_shuffled(s, f, o, rng=0) == pytest.approx(1.0, abs=1e-12)
    # fixated .75 and 1, other .5 and 1: (0,0)-(.5,.5)-(.5,1)-(1,1) -> .625
    s = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]])
    assert M.auc_shuffled(s, np.array([[0, 0, 0, 1, 1]]), np.array([[0, 0, 1, 0, 1]])) == pytest.approx(0.625)


def test_shuffled_fp_denominator_is_k_not_nfix():
    # 4 fixations, 1 other fixated pixel: fp must reach 1 (TinyHD's port divides by Nfix and inflates the score)
    s = np.array([[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]])
    f = np.array([[0, 0, 1, 1, 1, 1]])
    o = np.array([[0, 0, 0, 0, 0, 1]])
    # other at 1.0: at t = 1 the point is (fp, tp) = (1, 1/4), so the area is the triangle 0.125;
    # dividing fp by Nfix = 4 instead would give (0,0)-(.25,.25)-(.25,1)-(1,1) = 0.78125
    assert M.auc_shuffled(s, f, o) == pytest.approx(0.125)


def test_matlab_colon_grid():
    g = M.matlab_colon(0.0, 0.1, 1.0)
    assert len(g) == 11
    assert g[3] == 0.30000000000000004
    assert g[6] == 0.6 and g[7] == 0.7 and g[8] == 0.8 and g[10] == 1.0
    assert list(M.matlab_colon(0.0, 0.1, 0.95)) == pytest.approx([k / 10 for k in range(10)])
    assert M.matlab_colon(0.0, 0.1, 0.6)[-1] == 0.6
    assert len(M.matlab_colon(0.0, 0.1, 0.05)) == 1


# ------------------------------------------------------------------------------------------------------
# vectorised implementation == literal loop port (same random draws)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_aucs_match_literal_port(seed):
    s, f, _, other = _small_case(seed)
    assert M.auc_judd(s, f, rng=seed) == pytest.approx(_judd_loop(s, f, np.random.default_rng(seed)), abs=1e-12)
    assert M.auc_borji(s, f, rng=seed) == pytest.approx(_borji_loop(s, f, np.random.default_rng(seed)), abs=1e-12)
    assert M.auc_shuffled(s, f, other, rng=seed) == pytest.approx(
        _shuffled_loop(s, f, other, np.random.default_rng(seed)), abs=1e-12)


def test_uint8_values_on_the_grid():
    # a uint8 map has values k/255 on the 0.1 grid (51 -> 0.2, 153 -> 0.6): the inclusive grid must count them
    s = np.array([[0, 51, 102, 153, 204, 255]], dtype=np.uint8)
    f = np.array([[0, 0, 0, 1, 0, 0]])
    o = np.array([[0, 0, 1, 0, 0, 0]])
    assert M.auc_shuffled(s, f, o) == pytest.approx(_shuffled_loop(s, f, o, np.random.default_rng(0)))


# ------------------------------------------------------------------------------------------------------
# MATLAB imresize
# ------------------------------------------------------------------------------------------------------
def test_imresize_hand_case_upscale():
    # x2 along a row: output 1 samples u = 0.75; taps at -1,0,1,2 (mirrored to 2,1,1,2) with Keys(a=-.5)
    # weights -0.0234375, 0.2265625, 0.8671875, -0.0703125 -> 0.90625
    out = M.imresize(np.array([[1.0, 2.0, 3.0, 4.0]]), (1, 8))
    assert out[0, 0] == pytest.approx(0.90625)
    assert out[0, 3] == pytest.approx(2.25) and out[0, 4] == pytest.approx(2.75)  # interior: linear preserved
    assert out[0, ::-1] == pytest.approx(5.0 - out[0])  # symmetric


def test_imresize_identity_constant_and_pil_interior():
    from PIL import Image

    rng = np.random.default_rng(0)
    a = rng.random((40, 50))
    assert np.array_equal(M.imresize(a, a.shape), a)
    assert M.imresize(np.full((7, 9), 0.3), (20, 3)) == pytest.approx(np.full((20, 3), 0.3))
    for shape in [(20, 25), (90, 130)]:  # shrink by 2 (antialiased) and enlarge
        ours = M.imresize(a, shape)
        pil = np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(shape[::-1], Image.BICUBIC))
        inner = (slice(4, -4), slice(4, -4))
        assert np.abs(ours[inner] - pil[inner]).max() < 1e-5


def test_prediction_resized_to_gt_size():
    rng = np.random.default_rng(3)
    gt = cv2.GaussianBlur(rng.random((36, 64)), (0, 0), 3)
    small = cv2.resize(gt, (32, 18), interpolation=cv2.INTER_AREA)
    assert M.cc(small, gt) > 0.95
    assert M.cc(small, gt) == pytest.approx(M.cc(M.imresize(small, gt.shape), gt), abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        M.compute_all(gt, gt, np.zeros((10, 10)))


# ------------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------------
def test_no_fixation_and_single_fixation():
    s = np.random.default_rng(0).random((8, 8))
    none = np.zeros((8, 8))
    one = none.copy()
    one[2, 3] = 1
    for fn in (M.auc_judd, M.auc_borji, M.nss):
        assert math.isnan(fn(s, none))
    assert math.isnan(M.auc_shuffled(s, none, one))
    assert math.isnan(M.auc_borji(s, one))  # DHF1K: NaN with <= 1 fixation
    assert not math.isnan(M.auc_judd(s, one))
    assert not math.isnan(M.nss(s, one))
    assert not math.isnan(M.auc_shuffled(s, one, one))
    assert math.isnan(M.auc_shuffled(s, one, none))  # no other fixations


def test_constant_prediction_policy():
    rng = np.random.default_rng(0)
    f = (rng.random((30, 40)) > 0.97).astype(float)
    q = cv2.GaussianBlur(f, (0, 0), 3)
    c = np.full((30, 40), 0.37)
    for v in (M.auc_borji(c, f), M.auc_shuffled(c, f, f), M.cc(c, q), M.nss(c, f), M.sim(c, q)):
        assert math.isnan(v)
    aucs = [M.auc_judd(c, f, rng=k) for k in range(10)]
    assert 0.3 < np.mean(aucs) < 0.7  # the jitter turns a constant map into noise
    assert math.isnan(M.auc_judd(c, f, jitter=False))
    assert np.isfinite(M.kld(c, q)) and M.kld(c, q) > 0


def test_inputs_are_not_mutated_and_uint8_works():
    rng = np.random.default_rng(1)
    s, f, q, other = _small_case(1)
    s8 = (s * 255).astype(np.uint8)
    before = s8.copy()
    r8 = M.compute_all(s8, q, f, other, rng=0)
    assert np.array_equal(s8, before)
    sf = s.copy()
    M.compute_all(sf, q, f, other, rng=0)
    assert np.array_equal(sf, s)
    # uint8 and its float version give the same (deterministic) metrics
    rf = M.compute_all(s8.astype(np.float64), q, f, other, rng=0)
    for k in ("cc", "nss", "sim", "kld", "auc_borji", "auc_shuffled"):
        assert r8[k] == pytest.approx(rf[k], abs=1e-12)
    assert set(r8) == set(M.METRIC_NAMES)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="pred"):
        M.cc(np.zeros((2, 3, 4, 5)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="density"):
        M.cc(np.ones((3, 3)), np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="other_fixations"):
        M.auc_shuffled(np.ones((3, 3)), np.eye(3), np.eye(4))
    with pytest.raises(TypeError):
        M.auc_judd(np.eye(3), np.eye(3), rng="seed")


def test_other_fixation_map_union_and_rescale():
    a = np.zeros((4, 4))
    a[0, 0] = 1
    b = np.zeros((8, 8))
    b[7, 7] = 1
    u = M.other_fixation_map([a, b], (4, 4))
    assert u.dtype == bool and u[0, 0] and u[3, 3] and u.sum() == 2


# ------------------------------------------------------------------------------------------------------
# canonical frame of the metrics sheet (360x640, 60 fixations in 3 clusters + centre-biased background,
# GT = Gaussian blur sigma 25, min-max normalised). Our frame is drawn like the sheet's, not identical to it,
# so the sheet's exact identities are asserted exactly and its data-dependent values within a band.
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def canonical():
    rng = np.random.default_rng(2023)
    h, w = 360, 640
    pts = []
    for cy, cx in [(120, 180), (200, 420), (260, 300)]:
        pts.append(rng.normal([cy, cx], [15, 20], size=(15, 2)))
    pts.append(rng.normal([h / 2, w / 2], [0.25 * h, 0.2 * w], size=(15, 2)))
    pts = np.clip(np.round(np.concatenate(pts)), 0, [h - 1, w - 1]).astype(int)
    fix = np.zeros((h, w))
    fix[pts[:, 0], pts[:, 1]] = 1
    gt = cv2.GaussianBlur(fix, (0, 0), 25)
    gt = (gt - gt.min()) / (gt.max() - gt.min())
    other_pts = np.clip(rng.normal([h / 2, w / 2], [0.25 * h, 0.2 * w], size=(249, 2)).round(), 0,
                        [h - 1, w - 1]).astype(int)
    other = np.zeros((h, w))
    other[other_pts[:, 0], other_pts[:, 1]] = 1
    yy, xx = np.mgrid[:h, :w]
    center = np.exp(-((xx - w / 2) ** 2 / (2 * (0.2 * w) ** 2) + (yy - h / 2) ** 2 / (2 * (0.25 * h) ** 2)))
    return dict(fix=fix, gt=gt, other=other, center=center)


def test_canonical_uniform(canonical):
    c = canonical
    r = M.compute_all(np.full(c["gt"].shape, 0.5), c["gt"], c["fix"], c["other"], rng=0)
    for k in ("auc_borji", "auc_shuffled", "cc", "nss", "sim"):
        assert math.isnan(r[k]), k
    assert 0.4 < r["auc_judd"] < 0.6  # sheet: 0.51 +- 0.034
    # KL(Q || uniform) = log N - H(Q): an identity, checked independently
    q = c["gt"] / c["gt"].sum()
    nz = q[q > 0]
    assert r["kld"] == pytest.approx(math.log(q.size) + float((nz * np.log(nz)).sum()), abs=1e-9)


def test_canonical_perfect(canonical):
    c = canonical
    r = M.compute_all(c["gt"], c["gt"], c["fix"], c["other"], rng=0)
    assert r["cc"] == pytest.approx(1.0, abs=1e-12)
    assert r["sim"] == pytest.approx(1.0, abs=1e-12)
    assert abs(r["kld"]) < c["gt"].size * EPS  # sheet: -0.0000 (≈ -1e-15)
    assert 0.9 < r["auc_judd"] < 0.99  # a blurred GT is not AUC 1 (sheet: 0.9463)
    assert r["auc_shuffled"] < r["auc_borji"] < r["auc_judd"]  # sheet: 0.8354 < 0.9251 < 0.9463
    assert 2.0 < r["nss"] < 4.0  # sheet: 2.6741


def test_canonical_center_bias(canonical):
    c = canonical
    r = M.compute_all(c["center"], c["gt"], c["fix"], c["other"], rng=0)
    p = M.compute_all(c["gt"], c["gt"], c["fix"], c["other"], rng=0)
    assert 0.75 < r["auc_judd"] < p["auc_judd"]  # sheet: 0.8546
    assert r["auc_shuffled"] < 0.7 < r["auc_judd"]  # sheet: sAUC 0.6211, what sAUC is designed to show
    assert 0.4 < r["cc"] < 0.9 and 0.4 < r["sim"] < 0.8 and 0.2 < r["kld"] < 1.5  # sheet: .6681 .5500 .5996


def test_canonical_perfect_uint8(canonical):
    c = canonical
    png = np.round(c["gt"] * 255).astype(np.uint8)
    r = M.compute_all(png, c["gt"], c["fix"], c["other"], rng=0)
    p = M.compute_all(c["gt"], c["gt"], c["fix"], c["other"], rng=0)
    assert r["cc"] > 0.9999 and 0.99 < r["sim"] < 1.0 and 0 < r["kld"] < 0.05  # sheet: 1.0000 .9966 .0179
    assert r["auc_judd"] == pytest.approx(p["auc_judd"], abs=2e-3)  # sheet: .9462 vs .9463
    assert r["nss"] == pytest.approx(p["nss"], abs=2e-3)


def test_sauc_deterministic_when_other_smaller(canonical):
    c = canonical
    few = np.zeros_like(c["other"])
    few.flat[np.flatnonzero(c["other"])[:20]] = 1  # 20 other fixations < 60 fixations
    a = M.auc_shuffled(c["center"], c["fix"], few, rng=1)
    b = M.auc_shuffled(c["center"], c["fix"], few, rng=2)
    assert a == b


def test_seven_metrics_on_a_360x640_frame_are_vectorised(canonical):
    """Not a timing assertion: the literal loop port would take minutes here; this must finish promptly."""
    c = canonical
    r = M.compute_all(np.random.default_rng(0).random((192, 256)).astype(np.float32), c["gt"], c["fix"],
                      c["other"], rng=0)
    assert all(np.isfinite(v) for v in r.values())


# ------------------------------------------------------------------------------------------------------
# invariances (hypothesis)
# ------------------------------------------------------------------------------------------------------
_maps = arrays(np.float64, (6, 7), elements=st.floats(0.0, 1.0, allow_nan=False, width=32))
_fixs = arrays(np.bool_, (6, 7))
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _nonconstant(a):
    return np.ptp(a) > 1e-3


@_settings
@given(_maps, _maps, st.floats(0.1, 100.0), st.floats(-5.0, 5.0))
def test_cc_invariant_to_positive_affine(p, q, a, b):
    if not (_nonconstant(p) and _nonconstant(q)):
        assert math.isnan(M.cc(p, q)) or not _nonconstant(p) or not _nonconstant(q)
        return
    assert M.cc(a * p + b, q) == pytest.approx(M.cc(p, q), abs=1e-9)
    assert -1 - 1e-12 <= M.cc(p, q) <= 1 + 1e-12
    assert M.cc(p, q) == pytest.approx(M.cc(q, p), abs=1e-12)


@_settings
@given(_maps, _fixs, st.floats(0.1, 100.0), st.floats(-5.0, 5.0))
def test_nss_invariant_to_positive_affine(p, f, a, b):
    if not (_nonconstant(p) and f.any()):
        return
    assert M.nss(a * p + b, f) == pytest.approx(M.nss(p, f), abs=1e-8)


@_settings
@given(_maps, _fixs, st.integers(0, 2**31))
def test_auc_judd_invariant_to_monotone_transforms(p, f, seed):
    # jitter-free (exact ranks); with distinct values any strictly increasing transform keeps the ROC
    if not f.any() or f.all() or len(np.unique(p)) != p.size:
        return
    base = M.auc_judd(p, f, jitter=False)
    for q in (np.exp(3 * p), p ** 3 + 2):
        if len(np.unique(q)) == q.size:  # the transform kept the values distinct in floating point
            assert M.auc_judd(q, f, jitter=False) == pytest.approx(base, abs=1e-12)
    assert 0.0 <= base <= 1.0
    if np.diff(np.sort(p.ravel())).min() > 2e-7:  # jitter (< 1e-7) cannot reorder these values
        assert M.auc_judd(p, f, rng=seed) == pytest.approx(base, abs=1e-4)


@_settings
@given(_maps, _maps)
def test_sim_in_unit_interval_and_kld_nonnegative(p, q):
    s = M.sim(p, q)
    if not math.isnan(s):
        assert -1e-12 <= s <= 1 + 1e-12
    if q.any():
        assert M.kld(p, q) >= -q.size * EPS
        assert abs(M.kld(q, q)) <= q.size * EPS
    if _nonconstant(q):
        assert M.sim(q, q) == pytest.approx(1.0)
        assert M.sim(3 * q + 1, q) == pytest.approx(1.0)  # min-max makes SIM affine-invariant


@_settings
@given(_maps, _fixs, st.integers(0, 2**31))
def test_aucs_in_unit_interval(p, f, seed):
    for v in (M.auc_judd(p, f, rng=seed), M.auc_borji(p, f, rng=seed), M.auc_shuffled(p, f, ~f, rng=seed)):
        assert math.isnan(v) or 0.0 <= v <= 1.0


def test_imresize_equals_dense_weight_matrices():
    a = np.random.default_rng(5).random((45, 80))
    for shape in [(90, 160), (20, 33), (45, 200), (7, 80)]:
        dense = M._resize_matrix(45, shape[0]) @ a @ M._resize_matrix(80, shape[1]).T
        np.testing.assert_allclose(M.imresize(a, shape), dense, rtol=0, atol=1e-13)
        assert np.allclose(M._resize_matrix(45, shape[0]).sum(axis=1), 1.0)  # weights sum to one


def test_torch_tensors_are_accepted():
    import torch

    rng = np.random.default_rng(7)
    p, q = rng.random((12, 16)), rng.random((12, 16))
    f = q > 0.8
    assert M.cc(torch.from_numpy(p).float(), torch.from_numpy(q)) == pytest.approx(M.cc(p.astype(np.float32), q))
    assert M.nss(torch.from_numpy(p), torch.from_numpy(f)) == pytest.approx(M.nss(p, f))


def test_channel_first_and_singleton_axes_give_the_map_itself():
    import torch

    rng = np.random.default_rng(11)
    q = rng.random((20, 30))
    s = q + 0.3 * rng.random((20, 30))
    f = rng.random((20, 30)) < 0.05
    ref = M.compute_all(s, q, f, f, rng=0)
    layouts = {"1xHxW": s[None], "1x1xHxW": s[None, None], "HxWx1": s[..., None],
               "torch 1xHxW": torch.from_numpy(s)[None],
               "torch 1x1xHxW float32": torch.from_numpy(s).float()[None, None]}
    for name, x in layouts.items():
        got = M.compute_all(x, q[None], f[..., None], f[None], rng=0)
        for k in M.METRIC_NAMES:
            assert got[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-6), (name, k)
    # an RGB(A) image keeps channel 0 (DHF1K's result(:,:,1)), whatever the other channels hold
    for c in (3, 4):
        img = np.concatenate([s[..., None], rng.random((20, 30, c - 1))], axis=2)
        assert M.cc(img, q) == pytest.approx(M.cc(s, q), abs=1e-12)
    # half-precision tensors (autocast outputs) are read too
    assert M.cc(torch.from_numpy(s).to(torch.bfloat16)[None], q) == pytest.approx(M.cc(s, q), abs=1e-2)


@pytest.mark.parametrize("shape", [(3, 20, 30), (2, 20, 30), (20, 30, 2), (2, 1, 20, 30), (600,)])
def test_ambiguous_map_shapes_are_refused(shape):
    x = np.random.default_rng(0).random(shape)
    with pytest.raises(ValueError, match=r"pred: expected one 2-D map.*got shape"):
        M.cc(x, np.ones((20, 30)))
    with pytest.raises(ValueError, match="other fixation map: expected one 2-D map"):
        M.other_fixation_map([x > 0.5], (20, 30))


def test_negative_fixation_values_are_refused():
    # the sheet: AUCs test F > 0, NSS logical(F) (F != 0); they only differ on negative values, which no
    # fixation (binary or count) map has, so those are refused instead of scored two ways
    rng = np.random.default_rng(3)
    s, q = rng.random((10, 12)), rng.random((10, 12))
    f = np.zeros((10, 12))
    f[2, 3], f[5, 5] = 1.0, -1.0
    for fn in (M.nss, M.auc_judd, M.auc_borji):
        with pytest.raises(ValueError, match="fixations: has negative values"):
            fn(s, f)
    with pytest.raises(ValueError, match="fixations: has negative values"):
        M.compute_all(s, q, f)
    with pytest.raises(ValueError, match="other_fixations: has negative values"):
        M.auc_shuffled(s, np.abs(f), f)
    # binary and count maps: the same fixated pixels
    counts = np.abs(f) * 3
    assert M.nss(s, counts) == pytest.approx(M.nss(s, np.abs(f) > 0))
