"""``tinyhd.evaluate``: the seven metrics over a split of the synthetic DHF1K set, both aggregations, the
seeded sAUC draw, the prediction cache and the ``tinyhd evaluate`` command."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import tinyhd
from tinyhd import metrics as M
from tinyhd.cli import main as cli
from tinyhd.data import SaliencyClipDataset
from tinyhd.evaluate import evaluate, format_table, summarise


@pytest.fixture(scope="module")
def synth():
    return tinyhd.synth.ensure_synthetic("dhf1k", progress=False)


@pytest.fixture(scope="module")
def val_gt(synth):
    ds = SaliencyClipDataset(synth, split="val", dataset="dhf1k", size=None, flip=False)
    return {v: ds.ground_truth(v) for v in ds.video_ids}


def test_gt_as_prediction_is_perfect_and_centre_bias_is_not(synth, val_gt):
    perfect = {v: g.maps for v, g in val_gt.items()}
    per_frame, summary = evaluate(None, synth, "val", predictions=perfect, progress=False)
    assert list(per_frame.columns) == ["video", "frame", *M.METRIC_NAMES]
    assert len(per_frame) == sum(len(g.maps) for g in val_gt.values())
    assert summary["pooled"]["cc"] == pytest.approx(1.0, abs=1e-9)
    assert summary["pooled"]["sim"] == pytest.approx(1.0, abs=1e-9)
    assert abs(summary["pooled"]["kld"]) < 1e-6
    assert summary["pooled"]["auc_judd"] > 0.85
    h, w = next(iter(val_gt.values())).maps.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    centre = np.exp(-((xx - w / 2) ** 2 / (2 * (0.2 * w) ** 2) + (yy - h / 2) ** 2 / (2 * (0.25 * h) ** 2)))
    centre_preds = {v: np.repeat(centre[None], len(g.maps), 0) for v, g in val_gt.items()}
    _, cs = evaluate(None, synth, "val", predictions=centre_preds, progress=False)
    for k in ("auc_judd", "cc", "nss", "sim", "auc_shuffled"):
        assert cs["pooled"][k] < summary["pooled"][k], k
    assert cs["pooled"]["kld"] > summary["pooled"]["kld"]


def test_frames_match_compute_all_and_other_frames_are_seeded(synth, val_gt):
    preds = {v: (g.maps * 255).astype(np.uint8)[:, ::2, ::2] for v, g in val_gt.items()}  # half size, uint8
    a, sa = evaluate(None, synth, "val", predictions=preds, seed=3, frame_step=3, progress=False)
    b, sb = evaluate(None, synth, "val", predictions=preds, seed=3, frame_step=3, progress=False)
    c, _ = evaluate(None, synth, "val", predictions=preds, seed=4, frame_step=3, progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["auc_shuffled"], c["auc_shuffled"])
    np.testing.assert_allclose(a["cc"], c["cc"])  # deterministic metrics do not depend on the seed
    row = a.iloc[5]
    g = val_gt[row["video"]]
    f = int(row["frame"])
    assert row["cc"] == pytest.approx(M.cc(preds[row["video"]][f], g.maps[f]), abs=1e-12)
    assert row["nss"] == pytest.approx(M.nss(preds[row["video"]][f], g.fixations[f]), abs=1e-12)
    assert row["kld"] == pytest.approx(M.kld(preds[row["video"]][f], g.maps[f]), abs=1e-12)


def test_per_video_and_pooled_aggregations_differ_as_defined(synth, val_gt):
    # video 1: 3 frames, video 2: 20 frames -> the two means weigh the videos differently
    v1, v2 = sorted(val_gt)
    rng = np.random.default_rng(0)
    preds = {v1: ([0, 1, 2], rng.random((3, 96, 128))), v2: (list(range(20)), rng.random((20, 96, 128)))}
    per_frame, s = evaluate(None, synth, "val", predictions=preds, progress=False)
    assert per_frame.groupby("video").size().to_dict() == {v1: 3, v2: 20}
    for k in M.METRIC_NAMES:
        col = per_frame[k]
        assert s["pooled"][k] == pytest.approx(col.mean())
        assert s["per_video"][k] == pytest.approx(per_frame.groupby("video")[k].mean().mean())
    assert s["per_video"]["cc"] != pytest.approx(s["pooled"]["cc"])
    # NaN frames are skipped by both (as DHF1K drops NaN frames)
    df = pd.DataFrame({"video": ["a", "a", "b"], **{k: [1.0, float("nan"), 3.0] for k in M.METRIC_NAMES}})
    s2 = summarise(df)
    assert s2["pooled"]["cc"] == pytest.approx(2.0) and s2["per_video"]["cc"] == pytest.approx(2.0)


def test_cheap_mode_reduced_gt_and_frame_step(synth, val_gt):
    preds = {v: g.maps for v, g in val_gt.items()}
    per_frame, s = evaluate(None, synth, "val", predictions=preds, frame_step=8, gt_size=(48, 64), progress=False)
    assert sorted(per_frame["frame"].unique().tolist()) == [0, 8, 16, 24, 32, 40]
    assert s["pooled"]["cc"] > 0.95 and s["gt_size"] == [48, 64]
    with pytest.raises(ValueError, match="no predictions"):
        evaluate(None, synth, "val", predictions={}, progress=False)


class CountingEcho(nn.Module):
    """MIMO stand-in: map t = channel 0 of frame t; counts forward calls."""

    output = "multi"

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, clip):
        self.calls += 1
        return clip[:, 0] * self.w


def test_predictions_are_cached_and_reused(synth, tmp_path):
    model = CountingEcho()
    a, _ = evaluate(model, synth, "val", max_videos=1, frame_step=6, cache=tmp_path, progress=False)
    calls = model.calls
    assert calls > 0
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1
    b, _ = evaluate(model, synth, "val", max_videos=1, frame_step=6, cache=tmp_path, progress=False)
    assert model.calls == calls  # second evaluation read the cache
    pd.testing.assert_frame_equal(a, b)
    with torch.no_grad():
        model.w.fill_(2.0)  # other weights -> other key -> the model runs again
    evaluate(model, synth, "val", max_videos=1, frame_step=6, cache=tmp_path, progress=False)
    assert model.calls > calls
    files[0].write_bytes(b"damaged")  # a damaged entry is recomputed, not trusted
    with torch.no_grad():
        model.w.fill_(1.0)
    c, _ = evaluate(model, synth, "val", max_videos=1, frame_step=6, cache=tmp_path, progress=False)
    pd.testing.assert_frame_equal(a, c)


def test_table_lists_the_seven_metrics():
    df = pd.DataFrame({"video": ["a"], **{k: [0.5] for k in M.METRIC_NAMES}})
    table = format_table(summarise(df))
    for name in ("AUC-J", "AUC-B", "sAUC", "CC", "NSS", "SIM", "KLD", "per video", "pooled"):
        assert name in table


def test_cli_evaluate_prints_table_and_writes_files(synth, tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    tinyhd.save_checkpoint(tinyhd.TinyHD(output="multi", decoders=("d3",), reduction=4), ckpt)
    out = tmp_path / "results"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--data", str(synth), "--split", "val", "--max-videos", "1",
            "--frame-step", "4", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert cli(argv) == 0
    text = capsys.readouterr().out
    for name in ("AUC-J", "AUC-B", "sAUC", "CC", "NSS", "SIM", "KLD"):
        assert name in text
    per_frame = pd.read_csv(out / "per_frame.csv", dtype={"video": str})
    assert len(per_frame) == 12 and set(M.METRIC_NAMES) <= set(per_frame.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_frames"] == 12 and summary["pooled"]["cc"] == pytest.approx(per_frame["cc"].mean())
    assert all(math.isfinite(summary["pooled"][k]) for k in ("auc_judd", "cc", "nss", "sim", "kld"))
    assert (out / "per_video.csv").is_file()


def test_cli_evaluate_bad_input(tmp_path, synth, capsys):
    rc = cli(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(synth)])
    assert rc == 2 and "none.pt" in capsys.readouterr().err
    rc = cli(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path / "nodata")])
    assert rc == 2 and "nodata" in capsys.readouterr().err
    ckpt = tmp_path / "m.pt"
    tinyhd.save_checkpoint(tinyhd.TinyHD(output="multi", decoders=("d3",), reduction=4), ckpt)
    rc = cli(["evaluate", "--checkpoint", str(ckpt), "--data", str(synth), "--split", "nosuchsplit"])
    err = capsys.readouterr().err
    assert rc == 2 and "nosuchsplit" in err and len(err.strip().splitlines()) == 1
