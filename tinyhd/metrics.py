"""The seven saliency metrics exactly as the MIT / DHF1K MATLAB benchmark defines them.

Reference: the MIT saliency benchmark code (Judd, Bylinskii et al., ``code_forMetrics/*.m``) in the copy the
DHF1K benchmark ships (Wang et al., ``code_for_Metrics``: ``AUC_Judd.m``, ``AUC_Borji.m``, ``AUC_shuffled.m``,
``CC.m``, ``NSS.m``, ``similarity.m``, ``KLdiv.m``), as summarised in ``../shared/spec/metrics.md``. Every
function takes **one frame**: a prediction of any size and dtype (uint8 is fine) and a ground truth, and
returns a Python float.

Conventions shared by all metrics (the benchmark's, unless said otherwise):

* The prediction is converted to float64 first (the DHF1K evaluation reads PNGs with ``double(imread(...))``)
  and, if its size differs from the ground truth's, resized to the ground truth's size with MATLAB's
  ``imresize`` (bicubic, Keys a = −0.5, antialiased when shrinking, mirror boundary), implemented here in
  :func:`imresize`. Inputs are never modified.
* Fixations: a binary or count map, so values ≥ 0; a pixel is fixated when its value is positive. The MATLAB
  files test ``F > 0`` (AUC-J, AUC-B, sAUC) but ``logical(F)``, i.e. ``F ≠ 0``, in NSS: the two agree on every
  map without negative values, so a fixation map with a negative value is refused (ValueError) instead of
  letting the metrics disagree on which pixels are fixated.
* A map is one 2-D array: H×W, or with singleton axes around it (1×H×W and 1×1×H×W as models output them,
  H×W×1); an H×W×3/H×W×4 image keeps channel 0 (DHF1K's ``result(:,:,1)``). Other shapes are refused.
* ``eps`` is MATLAB's ``eps`` = 2.220446049250313e-16.
* Degenerate inputs return NaN where MATLAB does: no fixation (all fixation-based metrics), a constant
  prediction (AUC-B, sAUC, CC, NSS; SIM for a constant non-zero map), at most one fixated pixel (AUC-B, the
  DHF1K rule). A constant prediction in AUC-J is *not* NaN: the jitter turns it into noise (score ≈ 0.5).
* Random metrics (AUC-J's jitter, AUC-B's and sAUC's 100 splits) take ``rng``: ``None`` (fresh entropy, as
  MATLAB's ``rand``), an ``int`` seed, or a ``numpy.random.Generator``.

Two documented deviations, both where MATLAB's answer is not a real number: KLD clips the (resized)
prediction at 0, because bicubic overshoot would make MATLAB's logarithm complex; CC and NSS return NaN for a
constant map explicitly instead of MATLAB's 0/0 rounding garbage.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

EPS = float(np.finfo(np.float64).eps)  # MATLAB eps, 2.220446049250313e-16
N_SPLITS = 100  # AUC-B / sAUC random splits (AUC_Borji.m, AUC_shuffled.m default)
STEP_SIZE = 0.1  # AUC-B / sAUC threshold step (inclusive grid 0:0.1:max)
JITTER_SCALE = 1e-7  # AUC-J jitter: rand(size)/1e7, added in the raw value scale

METRIC_NAMES = ("auc_judd", "auc_borji", "auc_shuffled", "cc", "nss", "sim", "kld")

_trapz = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz


# ----------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------
def _rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _squeeze_map(a: np.ndarray, what: str) -> np.ndarray:
    """Reduce an array to one 2-D map: singleton axes before or after H×W are dropped (1×H×W, 1×1×H×W from a
    model, H×W×1), and an H×W×3 / H×W×4 image keeps channel 0 (DHF1K's ``result(:,:,1)``); any other shape
    is refused rather than guessed (a channel-first 3×H×W would otherwise be read as an H×W×C image)."""
    shape = a.shape
    while a.ndim > 2 and a.shape[0] == 1:  # leading batch/channel axes
        a = a[0]
    while a.ndim > 2 and a.shape[-1] == 1:  # trailing channel axis
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (3, 4):  # an RGB(A) image: channel 0, as DHF1K
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"{what}: expected one 2-D map (H×W; also 1×H×W, H×W×1 or an H×W×3/4 image, whose "
                         f"channel 0 is used), got shape {shape}")
    return a


def _as_map(x: Any, what: str) -> np.ndarray:
    """A 2-D float64 copy of a map (H×W; 1×H×W, 1×1×H×W, H×W×1; H×W×3/4 images: channel 0, as DHF1K's
    ``result(:,:,1)``; see :func:`_squeeze_map`).

    NumPy arrays, nested lists and torch tensors (any device) are accepted.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor (any device)
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()  # float64 also covers bfloat16/half
    try:
        a = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise ValueError(f"{what}: cannot be converted to an array ({exc})") from None
    a = _squeeze_map(a, what)
    if a.size == 0:
        raise ValueError(f"{what}: empty map (shape {a.shape})")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.number)):
        raise ValueError(f"{what}: expected a numeric map, got dtype {a.dtype}")
    a = a.astype(np.float64)  # always a copy: inputs are never mutated
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return a


def _pred_to(pred: Any, shape: tuple[int, int]) -> np.ndarray:
    """The prediction as float64 at the ground truth's size (MATLAB ``imresize(double(S), size(GT))``)."""
    p = _as_map(pred, "pred")
    if p.shape != tuple(shape):
        p = imresize(p, shape)
    return p


# ----------------------------------------------------------------------------------------------------------
# MATLAB imresize (bicubic, antialiased) and colon operator
# ----------------------------------------------------------------------------------------------------------
def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = −0.5 (MATLAB ``imresize`` 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def _resize_taps(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (both out_len×taps) of MATLAB's ``imresize`` along one axis.

    This is ``contributions`` in imresize.m: output pixel x (1-based) samples input coordinate
    u = x/scale + (1 − 1/scale)/2; when shrinking the kernel is stretched by 1/scale (antialiasing); weights
    are normalised to sum 1; indices outside the image are mirrored (``[1:n, n:-1:1]``).
    """
    scale = out_len / in_len
    if scale < 1:
        width = 4.0 / scale

        def kernel(d: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * d)
    else:
        width = 4.0
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # out×taps, 1-based
    w = kernel(u[:, None] - idx)
    w /= w.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(1, in_len + 1), np.arange(in_len, 0, -1)])
    src = aux[np.mod(idx.astype(np.int64) - 1, aux.size)] - 1  # 0-based, mirrored
    keep = np.any(w != 0, axis=0)  # MATLAB drops all-zero weight columns
    return np.ascontiguousarray(src[:, keep]), np.ascontiguousarray(w[:, keep])


def _resize_matrix(in_len: int, out_len: int) -> np.ndarray:
    """The taps of :func:`_resize_taps` as a dense out_len×in_len matrix (mirrored taps accumulate)."""
    src, w = _resize_taps(in_len, out_len)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), src.shape[1]), src.ravel()), w.ravel())
    return mat


_RESIZE_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _resize_taps_cached(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    key = (in_len, out_len)
    taps = _RESIZE_CACHE.get(key)
    if taps is None:
        if len(_RESIZE_CACHE) > 64:
            _RESIZE_CACHE.clear()
        taps = _RESIZE_CACHE[key] = _resize_taps(in_len, out_len)
    return taps


def _resize_rows(a: np.ndarray, out_len: int) -> np.ndarray:
    """Resize along axis 0: each output row is a weighted sum of a few (mirrored) input rows."""
    src, wt = _resize_taps_cached(a.shape[0], out_len)
    out = wt[:, 0, None] * a[src[:, 0]]
    for t in range(1, src.shape[1]):
        out += wt[:, t, None] * a[src[:, t]]
    return out


def imresize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """MATLAB ``imresize(img, shape)`` for a 2-D double image: bicubic, antialiased when shrinking.

    Separable, rows then columns (the order only changes rounding, ~1e-16); each pass gathers the few taps of
    :func:`_resize_taps` (whole rows, so it needs no BLAS and stays fast on a busy machine). No clamping (as
    MATLAB for doubles), so bicubic overshoot can produce values outside the input range.
    H×W -> shape[0]×shape[1], float64.
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"imresize expects a 2-D map, got shape {a.shape}")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"imresize: invalid output size {shape}")
    if a.shape[0] != h:
        a = _resize_rows(a, h)  # h×W
    if a.shape[1] != w:
        a = _resize_rows(np.ascontiguousarray(a.T), w).T  # h×w
    return np.ascontiguousarray(a)


def matlab_colon(a: float, d: float, b: float) -> np.ndarray:
    """MATLAB's ``a:d:b`` (d > 0): end point included when reached within 2·eps, grid symmetric about the middle.

    MATLAB fills the first half as a + k·d and the second half as last − k·d, so ``0:0.1:1`` contains exactly
    0.6, 0.8 and 1.0 (while its 4th element is 0.30000000000000004). ``np.arange``/``np.r_`` differ.
    """
    if not (d > 0):
        raise ValueError("matlab_colon: step must be positive")
    if b < a:
        return np.zeros(0)
    tol = 2.0 * EPS * max(abs(a), abs(b))
    n = int(round((b - a) / d))
    if a + n * d - b > tol:
        n -= 1
    last = a + n * d
    if last - b > -tol:
        last = b
    v = np.empty(n + 1)
    k = np.arange(n // 2 + 1)
    v[k] = a + k * d
    v[n - k] = last - k * d
    if n % 2 == 0:
        v[n // 2] = (a + last) / 2.0
    return v


_GRID_CACHE: dict[float, np.ndarray] = {}


def _threshold_grid(top: float) -> np.ndarray:
    """``fliplr(0:0.1:top)`` of AUC_Borji.m / AUC_shuffled.m (descending)."""
    g = _GRID_CACHE.get(top)
    if g is None:
        g = matlab_colon(0.0, STEP_SIZE, top)[::-1].copy()
        if len(_GRID_CACHE) > 4096:
            _GRID_CACHE.clear()
        _GRID_CACHE[top] = g
    return g


def _minmax(s: np.ndarray) -> np.ndarray | None:
    """MATLAB ``(S − min)/(max − min)``; None where that is all-NaN (a constant map)."""
    lo, hi = s.min(), s.max()
    if not hi > lo:
        return None
    return (s - lo) / (hi - lo)


def _check_same_shape(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what_a} has shape {a.shape} but {what_b} has shape {b.shape}: they must match")


# ----------------------------------------------------------------------------------------------------------
# core metrics on prepared float64 maps (prediction already at the GT size)
# ----------------------------------------------------------------------------------------------------------
def _auc_judd(s: np.ndarray, fix: np.ndarray, rng: np.random.Generator, jitter: bool) -> float:
    if not fix.any():
        return float("nan")
    if jitter:
        s = s + rng.random(s.shape) * JITTER_SCALE  # raw value scale, before normalisation
    s = _minmax(s)
    if s is None:  # only possible without jitter
        return float("nan")
    s = s.ravel()
    sth = s[fix.ravel()]
    n_fix, n_pix = sth.size, s.size
    if n_pix == n_fix:  # every pixel fixated: no negatives, MATLAB's fp is 0/0
        return float("nan")
    thr = np.sort(sth)  # ascending; MATLAB walks them descending
    # above[j] = #{pixels with S >= thr[j]}: bin every pixel by how many thresholds it reaches
    reach = np.searchsorted(thr, s, side="right")  # number of thresholds <= pixel value
    counts = np.bincount(reach, minlength=n_fix + 1)
    above_asc = np.cumsum(counts[::-1])[::-1][1:]  # above_asc[j] = #{reach >= j+1} = #{S >= thr[j]}
    above = above_asc[::-1].astype(np.float64)  # descending thresholds, i = 1..Nfix
    i = np.arange(1, n_fix + 1, dtype=np.float64)
    tp = np.concatenate([[0.0], i / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - i) / (n_pix - n_fix), [1.0]])
    return float(_trapz(tp, fp))


def _auc_splits(sth: np.ndarray, randfix: np.ndarray, fp_den: int) -> float:
    """Mean over splits (columns of ``randfix``) of the 0.1-grid ROC area of AUC_Borji.m / AUC_shuffled.m."""
    sth_sorted = np.sort(sth)
    n_fix = sth.size
    smax = sth.max()
    aucs = np.empty(randfix.shape[1])
    for k in range(randfix.shape[1]):
        cur = randfix[:, k]
        grid = _threshold_grid(float(max(smax, cur.max())))  # descending thresholds
        tp = (n_fix - np.searchsorted(sth_sorted, grid, side="left")) / n_fix
        cur_sorted = np.sort(cur)
        fp = (cur.size - np.searchsorted(cur_sorted, grid, side="left")) / fp_den
        tp = np.concatenate([[0.0], tp, [1.0]])
        fp = np.concatenate([[0.0], fp, [1.0]])
        aucs[k] = _trapz(tp, fp)
    return float(aucs.mean())


def _auc_borji(s: np.ndarray, fix: np.ndarray, rng: np.random.Generator, n_splits: int) -> float:
    if np.count_nonzero(fix) <= 1:  # DHF1K's AUC_Borji.m: NaN with <= 1 fixation
        return float("nan")
    s = _minmax(s)
    if s is None:
        return float("nan")
    s = s.ravel()
    sth = s[fix.ravel()]
    # randi([1 Npixels], [Nfixations, Nsplits]): uniform with replacement over all pixels (fixated included)
    r = rng.integers(0, s.size, size=(sth.size, n_splits))
    return _auc_splits(sth, s[r], sth.size)


def _auc_shuffled(s: np.ndarray, fix: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                  n_splits: int) -> float:
    if not fix.any():
        return float("nan")
    s = _minmax(s)
    if s is None:
        return float("nan")
    s = s.ravel()
    sth = s[fix.ravel()]
    ind = np.flatnonzero(other.ravel())
    k = min(sth.size, ind.size)
    if k == 0:  # no other fixations: MATLAB's fp is 0/0
        return float("nan")
    # per split: randperm(ind), first k (without replacement); only the count k is used
    if k == ind.size:
        cols = np.repeat(ind[:, None], n_splits, axis=1)  # every split uses all of them (deterministic score)
    else:
        cols = np.stack([rng.permutation(ind)[:k] for _ in range(n_splits)], axis=1)
    return _auc_splits(sth, s[cols], k)


def _cc(s: np.ndarray, q: np.ndarray) -> float:
    if not (np.ptp(s) > 0 and np.ptp(q) > 0):
        return float("nan")
    a = s - s.mean()
    b = q - q.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _nss(s: np.ndarray, fix: np.ndarray) -> float:
    if not fix.any() or not np.ptp(s) > 0:
        return float("nan")
    z = (s - s.mean()) / s.std(ddof=1)  # MATLAB std: N-1
    return float(z[fix].mean())


def _sim_normalise(m: np.ndarray) -> np.ndarray:
    if m.any():
        lo, hi = m.min(), m.max()
        if not hi > lo:
            return np.full_like(m, np.nan)
        m = (m - lo) / (hi - lo)
        m = m / m.sum()
    return m


def _sim(s: np.ndarray, q: np.ndarray) -> float:
    p = _sim_normalise(s)
    q = _sim_normalise(q)
    return float(np.minimum(p, q).sum())


def _kld(s: np.ndarray, q: np.ndarray) -> float:
    p = np.maximum(s, 0.0)  # deviation: MATLAB would go complex on negative values (bicubic overshoot)
    if p.any():
        p = p / p.sum()
    if (q < 0).any():
        raise ValueError("density: the ground-truth map has negative values")
    if q.any():
        q = q / q.sum()
    return float((q * np.log(EPS + q / (p + EPS))).sum())


# ----------------------------------------------------------------------------------------------------------
# public API: one frame, numpy in, float out
# ----------------------------------------------------------------------------------------------------------
def _fixation_mask(fixations: Any, what: str) -> np.ndarray:
    """Fixated pixels (bool H×W) of a binary or count map; negative values are refused, see the module notes."""
    f = _as_map(fixations, what)
    if f.min() < 0:
        raise ValueError(f"{what}: has negative values (min {f.min():g}); a fixation map is binary or a count "
                         "map (>= 0), and the benchmark's F > 0 (AUC) and logical(F) (NSS) differ on negatives")
    return f > 0


def _fixations(fixations: Any) -> np.ndarray:
    return _fixation_mask(fixations, "fixations")


def auc_judd(pred: Any, fixations: Any, rng: Any = None, jitter: bool = True) -> float:
    """AUC-Judd (``AUC_Judd.m``): ROC area with the fixated pixels' saliency values as thresholds.

    The prediction is resized to the fixation map's size, jittered with U(0,1)·1e-7 *in its raw value scale*
    (before min-max normalisation; this breaks ties randomly), then min-max normalised. For the i-th highest
    fixated value t_i: tp = i/Nfix and fp = (#{S ≥ t_i} − i)/(Npix − Nfix) (negatives are the non-fixated
    pixels); the curve from (0,0) to (1,1) is integrated with the trapezoid rule. NaN without fixations.
    ``jitter=False`` reproduces the jitter-free variant (ties then lower the score).
    """
    fix = _fixations(fixations)
    return _auc_judd(_pred_to(pred, fix.shape), fix, _rng(rng), jitter)


def auc_borji(pred: Any, fixations: Any, rng: Any = None, n_splits: int = N_SPLITS) -> float:
    """AUC-Borji (DHF1K ``AUC_Borji.m``): fixated values against uniformly sampled pixels, 0.1 threshold grid.

    The resized prediction is min-max normalised (NaN if constant). In each of 100 splits, Nfix pixels are
    drawn uniformly *with replacement* from all pixels (fixated ones included); thresholds are MATLAB's
    inclusive grid ``fliplr(0:0.1:max)`` (max over the fixated and sampled values); tp = mean(Sfix ≥ t),
    fp = #(sampled ≥ t)/Nfix; trapezoid area, averaged over the splits. NaN with at most one fixated pixel
    (the DHF1K rule).
    """
    fix = _fixations(fixations)
    return _auc_borji(_pred_to(pred, fix.shape), fix, _rng(rng), n_splits)


def auc_shuffled(pred: Any, fixations: Any, other_fixations: Any, rng: Any = None,
                 n_splits: int = N_SPLITS) -> float:
    """Shuffled AUC (``AUC_shuffled.m``): fixated values against other frames' fixated pixels.

    ``other_fixations`` is a map of the GT's size whose positive pixels are the union of the other frames'
    fixations (DHF1K draws 10 random frames of the evaluated set; see :func:`other_fixation_map`). With
    k = min(Nfix, Nother), each of 100 splits takes k of the other fixated pixels *without replacement*
    (``randperm``); same 0.1 grid and trapezoid as AUC-Borji but fp is divided by k. If Nother ≤ Nfix every
    split uses all of them and the score is deterministic. NaN without fixations, without other fixations,
    or for a constant prediction.
    """
    fix = _fixations(fixations)
    other = _fixations_like(other_fixations, fix.shape, "other_fixations")
    return _auc_shuffled(_pred_to(pred, fix.shape), fix, other, _rng(rng), n_splits)


def cc(pred: Any, density: Any) -> float:
    """Linear correlation coefficient (``CC.m``): Pearson's r between the resized prediction and the GT map.

    Both maps are z-scored and correlated (``corr2``), which is scale- and ddof-free. NaN if either map is
    constant.
    """
    q = _as_map(density, "density")
    return _cc(_pred_to(pred, q.shape), q)


def nss(pred: Any, fixations: Any) -> float:
    """Normalized Scanpath Saliency (``NSS.m``): mean of the z-scored prediction at the fixated pixels.

    The z-score uses MATLAB's ``std`` (sample standard deviation, N−1). Each fixated pixel counts once. NaN
    without fixations or for a constant prediction.
    """
    fix = _fixations(fixations)
    return _nss(_pred_to(pred, fix.shape), fix)


def sim(pred: Any, density: Any) -> float:
    """Similarity / histogram intersection (``similarity.m``): Σ min(P, Q).

    Each map that is not all zero is min-max normalised to [0, 1] and then divided by its sum (the min-max step
    is the benchmark's; pysaliency omits it). An all-zero map stays zero (SIM 0); a constant non-zero map
    gives NaN, as in MATLAB. Result in [0, 1].
    """
    q = _as_map(density, "density")
    return _sim(_pred_to(pred, q.shape), q)


def kld(pred: Any, density: Any) -> float:
    """KL divergence KL(GT ‖ pred) (``KLdiv.m``): Σ Q·log(eps + Q/(P + eps)), eps = 2.2204e-16.

    P and Q are the prediction and GT each divided by its sum (when not all zero; no min-shift). The resized
    prediction is clipped at 0 first (MATLAB would return a complex number on bicubic overshoot). ≥ 0 up to
    rounding; 0 for identical maps.
    """
    q = _as_map(density, "density")
    return _kld(_pred_to(pred, q.shape), q)


def _fixations_like(other: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    o = _fixation_mask(other, what)
    if o.shape != tuple(shape):
        raise ValueError(f"{what} has shape {o.shape} but the fixation map has shape {tuple(shape)}; "
                         "build it at the GT size with tinyhd.metrics.other_fixation_map")
    return o


def other_fixation_map(fixation_maps: Iterable[Any], shape: tuple[int, int]) -> np.ndarray:
    """Union of other frames' fixated pixels at ``shape`` (the sAUC "other map").

    As DHF1K's evaluation does, fixation coordinates of a map of another size are rescaled to ``shape``
    (pixel-centre mapping, rounded to the nearest pixel) before ``makeFixationMap``; ``AUC_shuffled`` only
    uses ``other > 0``, so a boolean union is enough. Returns H×W bool.
    """
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), dtype=bool)
    for m in fixation_maps:
        f = _fixation_mask(m, "other fixation map")
        rows, cols = np.nonzero(f)
        if f.shape != (h, w):
            rows = np.clip(np.round((rows + 0.5) * h / f.shape[0] - 0.5), 0, h - 1).astype(np.int64)
            cols = np.clip(np.round((cols + 0.5) * w / f.shape[1] - 0.5), 0, w - 1).astype(np.int64)
        out[rows, cols] = True
    return out


def compute_all(pred: Any, density: Any, fixations: Any, other_fixations: Any = None,
                rng: Any = None) -> dict[str, float]:
    """All seven metrics of one frame; the prediction is converted and resized once.

    Keys: ``auc_judd, auc_borji, auc_shuffled, cc, nss, sim, kld`` (:data:`METRIC_NAMES`). ``auc_shuffled`` is
    NaN when ``other_fixations`` is None. ``density`` and ``fixations`` must have the same size.
    """
    g = _rng(rng)
    q = _as_map(density, "density")
    fix = _fixations(fixations)
    _check_same_shape(q, fix, "density", "fixations")
    s = _pred_to(pred, q.shape)
    out = {
        "auc_judd": _auc_judd(s, fix, g, True),
        "auc_borji": _auc_borji(s, fix, g, N_SPLITS),
        "auc_shuffled": (float("nan") if other_fixations is None else
                         _auc_shuffled(s, fix, _fixations_like(other_fixations, fix.shape, "other_fixations"),
                                       g, N_SPLITS)),
        "cc": _cc(s, q),
        "nss": _nss(s, fix),
        "sim": _sim(s, q),
        "kld": _kld(s, q),
    }
    return out
