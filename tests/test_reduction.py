"""Kernel-averaging channel reduction (paper §3.3.2, spec sheet (d))."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyhd.errors import UserError
from tinyhd.reduction import average_kernels, reduce_state_dict


def test_depthwise_new_channel_is_mean_of_channels_strided_by_O_over_r():
    # depthwise kernel O×1×kt×kh×kw whose channel c is filled with the value c (and a spatial ramp)
    O, r = 8, 2
    ramp = torch.arange(27.0).view(1, 1, 3, 3, 3)
    w = torch.arange(O, dtype=torch.float32).view(O, 1, 1, 1, 1) * 100 + ramp
    new = average_kernels(w, (O // r, 1, 3, 3, 3))
    for c in range(O // r):
        expected = (w[c] + w[c + O // r]) / 2  # channels c' and c' + O/r, not c', c'+1
        assert torch.equal(new[c], expected)
    # by hand: channel 1 of the result is the mean of old channels 1 and 5 → value 300 + ramp
    assert torch.equal(new[1], 300 + ramp[0])


def test_depthwise_quarter_averages_four_strided_channels():
    O, r = 16, 4
    w = torch.randn(O, 1, 3, 3, 3)
    new = average_kernels(w, (O // r, 1, 3, 3, 3))
    for c in range(O // r):
        torch.testing.assert_close(new[c], torch.stack([w[c + j * O // r] for j in range(r)]).mean(0))


def test_stem_keeps_its_three_input_channels():
    w = torch.randn(32, 3, 3, 3, 3)
    new = average_kernels(w, (8, 3, 3, 3, 3))
    for c in range(8):
        torch.testing.assert_close(new[c], torch.stack([w[c + j * 8] for j in range(4)]).mean(0))


def test_pointwise_rule_mixes_rows_and_columns():
    # sheet (d): new[o', i'] = mean_q W_flat[q·O'I' + o'·I' + i'],  W_flat[n] = W[n // I, n % I]
    O, I, r = 6, 4, 2
    w = torch.arange(O * I, dtype=torch.float64).view(O, I, 1, 1, 1) ** 1.5  # distinct, non-linear values
    Op, Ip = O // r, I // r
    new = average_kernels(w, (Op, Ip, 1, 1, 1))
    for o in range(Op):
        for i in range(Ip):
            terms = []
            for q in range(r * r):
                n = q * Op * Ip + o * Ip + i
                terms.append(w[n // I, n % I, 0, 0, 0])
            assert new[o, i, 0, 0, 0].item() == pytest.approx(sum(terms).item() / len(terms), rel=1e-12)
    # a hand-checked entry: new[0, 0] averages flat indices 0, 6, 12, 18 = W[0,0], W[1,2], W[3,0], W[4,2]
    hand = (w[0, 0] + w[1, 2] + w[3, 0] + w[4, 2]).squeeze() / 4
    assert new[0, 0].squeeze().item() == pytest.approx(hand.item(), rel=1e-12)
    # ... which is *not* the block mean of adjacent rows/columns (what "consecutive" might suggest)
    block = w[0:2, 0:2].mean()
    assert new[0, 0].squeeze().item() != pytest.approx(block.item(), rel=1e-6)


@pytest.mark.parametrize("O, I, r", [(16, 32, 2), (32, 16, 2), (64, 24, 4), (320, 96, 4)])
def test_pointwise_closed_form(O, I, r):
    """When r² divides O: new[o', i'] = mean_q W[q·O/r² + o' // r, (o' % r)·I/r + i']."""
    w = torch.randn(O, I, 1, 1, 1, dtype=torch.float64)
    new = average_kernels(w, (O // r, I // r, 1, 1, 1))[..., 0, 0, 0]
    W = w[..., 0, 0, 0]
    for o in range(O // r):
        for i in range(I // r):
            rows = [q * O // r ** 2 + o // r for q in range(r * r)]
            assert new[o, i].item() == pytest.approx(W[rows, (o % r) * I // r + i].mean().item(), rel=1e-12)


def test_bn_vector_is_view_r_minus_one_mean():
    gamma = torch.randn(24)
    torch.testing.assert_close(average_kernels(gamma, (6,)), gamma.view(4, -1).mean(0))


@settings(max_examples=30, deadline=None)
@given(o=st.sampled_from([4, 8, 16]), i=st.sampled_from([1, 3, 4, 8]), kt=st.sampled_from([1, 2, 3]),
       depthwise=st.booleans())
def test_two_halvings_equal_one_quartering(o, i, kt, depthwise):
    """×1 → ×½ → ×¼ (the paper's successive students) gives the same kernels as ×1 → ×¼ directly."""
    in_per_group = 1 if depthwise else i
    w = torch.randn(o, in_per_group, kt, 3, 3, dtype=torch.float64)
    shrink_in = in_per_group in (1, 3)  # depthwise and stem keep I' (1 or 3); pointwise I' = I/r (i is 4 or 8)
    half = (o // 2, in_per_group if shrink_in else in_per_group // 2, kt, 3, 3)
    quarter = (o // 4, in_per_group if shrink_in else in_per_group // 4, kt, 3, 3)
    torch.testing.assert_close(average_kernels(average_kernels(w, half), quarter), average_kernels(w, quarter))


def test_average_kernels_rejects_bad_shapes():
    w = torch.randn(8, 1, 3, 3, 3)
    with pytest.raises(ValueError, match="kernel sizes differ"):
        average_kernels(w, (4, 1, 1, 3, 3))
    with pytest.raises(ValueError, match="larger"):
        average_kernels(w, (16, 1, 3, 3, 3))
    with pytest.raises(ValueError, match="not a multiple"):
        average_kernels(torch.randn(6), (4,))
    with pytest.raises(ValueError, match="number of dims"):
        average_kernels(w, (4, 3, 3, 3))


def test_reduce_state_dict_skips_running_stats_and_other_prefixes():
    src = {"encoder.conv.weight": torch.randn(8, 4, 1, 1, 1), "encoder.bn.weight": torch.randn(8),
           "encoder.bn.running_mean": torch.randn(8), "encoder.bn.num_batches_tracked": torch.tensor(3),
           "decoder.w": torch.randn(5)}
    dst = {"encoder.conv.weight": torch.zeros(4, 2, 1, 1, 1), "encoder.bn.weight": torch.zeros(4),
           "encoder.bn.running_mean": torch.zeros(4), "encoder.bn.num_batches_tracked": torch.tensor(0),
           "decoder.w": torch.zeros(7)}
    out = reduce_state_dict(src, dst, prefix="encoder.")
    assert set(out) == {"encoder.conv.weight", "encoder.bn.weight"}
    torch.testing.assert_close(out["encoder.bn.weight"], src["encoder.bn.weight"].view(2, -1).mean(0))


# ---------------------------------------------------------------------------------------------------------
# on the real model
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_s():
    tinyhd_model = pytest.importorskip("tinyhd.model")
    torch.manual_seed(0)
    return tinyhd_model.TinyHD(output="single", reduction=1)


@pytest.mark.parametrize("factor, reduction, params", [(2, 2, 1_370_291), (0.25, 4, 513_121)])
def test_reduce_channels_builds_the_reduced_student(full_s, factor, reduction, params):
    import tinyhd

    torch.manual_seed(1)
    student = tinyhd.reduce_channels(full_s, factor)
    assert student.config["reduction"] == reduction and student.config["output"] == "single"
    assert sum(p.numel() for p in student.parameters()) == params  # sheet: Table 5a variants, exact
    full_sd, new_sd = full_s.state_dict(), student.state_dict()
    enc_keys = [k for k in new_sd if k.startswith("encoder.")]
    assert enc_keys
    for key in enc_keys:
        if key.endswith("running_mean"):
            assert torch.count_nonzero(new_sd[key]) == 0
        elif key.endswith("running_var"):
            assert torch.all(new_sd[key] == 1)
        elif not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(new_sd[key], average_kernels(full_sd[key], new_sd[key].shape))
    # a depthwise kernel, checked by hand against the strided-channel rule
    dw = [k for k in enc_keys if k.endswith("weight") and new_sd[k].ndim == 5 and new_sd[k].shape[1] == 1][0]
    O = full_sd[dw].shape[0]
    torch.testing.assert_close(new_sd[dw][0], torch.stack([full_sd[dw][j * O // reduction]
                                                            for j in range(reduction)]).mean(0))


def test_reduced_student_runs_and_full_model_is_untouched(full_s):
    import tinyhd

    before = {k: v.clone() for k, v in full_s.state_dict().items()}
    student = tinyhd.reduce_channels(full_s, 2).eval()
    with torch.no_grad():
        out = student(torch.randn(1, 3, 16, 64, 96))
    assert out.saliency.shape == (1, 1, 64, 96)
    assert torch.all((out.saliency > 0) & (out.saliency < 1))
    for k, v in full_s.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reduce_channels_from_half_to_quarter_matches_direct_quarter(full_s):
    import tinyhd

    half = tinyhd.reduce_channels(full_s, 2)
    via_half = tinyhd.reduce_channels(half, 2).state_dict()
    direct = tinyhd.reduce_channels(full_s, 4).state_dict()
    for k in direct:
        if k.startswith("encoder.") and not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(via_half[k], direct[k])


def test_reduce_channels_rejects_bad_factors(full_s):
    import tinyhd

    with pytest.raises(UserError, match="2 or 4"):
        tinyhd.reduce_channels(full_s, 3)
    with pytest.raises(UserError, match="TinyHD"):
        tinyhd.reduce_channels(torch.nn.Linear(2, 2), 2)
    quarter = tinyhd.reduce_channels(full_s, 4)
    with pytest.raises(UserError, match="reductions 1, 2 and 4"):
        tinyhd.reduce_channels(quarter, 2)


def test_a_reduced_student_gets_the_default_fusion_order():
    """The reduced student's fusion is fresh: the default input order, as the authors' rc2/rc4 M models have
    (only their ×1 M model puts D1's maps last)."""
    from tinyhd import TinyHD, reduce_channels

    big = TinyHD(output="multi", fusion_order="d1_last")
    assert reduce_channels(big, 2).config["fusion_order"] == "default"
