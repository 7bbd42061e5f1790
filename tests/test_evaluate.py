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
from tinyhd.evaluate import evaluate, format_table, summarise, write_results


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


def test_channel_first_predictions_score_as_the_maps(synth, val_gt):
    # N×1×H×W, as a model outputs them: the GT as prediction is still perfect (was CC -0.09 when 1×H×W was
    # read as an H×W×C image)
    preds = {v: g.maps[:, None] for v, g in val_gt.items()}
    _, s = evaluate(None, synth, "val", predictions=preds, frame_step=4, progress=False)
    assert s["pooled"]["cc"] == pytest.approx(1.0, abs=1e-9)
    assert s["pooled"]["auc_judd"] > 0.95
    tensors = {v: torch.from_numpy(g.maps)[:, None] for v, g in val_gt.items()}
    _, st = evaluate(None, synth, "val", predictions=tensors, frame_step=4, progress=False)
    assert st["pooled"]["cc"] == pytest.approx(1.0, abs=1e-6)


def test_prediction_count_and_indices_must_match_the_gt(synth, val_gt):
    v = sorted(val_gt)[0]
    n = len(val_gt[v].maps)
    full = {k: g.maps for k, g in val_gt.items()}
    for count in (n - 18, n + 2):
        maps = np.concatenate([val_gt[v].maps] * 2)[:count]
        with pytest.raises(ValueError, match=f"{count} maps but the GT of video {v} has {n} frames"):
            evaluate(None, synth, "val", predictions={**full, v: maps}, progress=False)
    with pytest.raises(ValueError, match="frame index 0 is given 2 times"):
        evaluate(None, synth, "val", predictions={**full, v: ([0, 0, 1], val_gt[v].maps[:3])}, progress=False)
    with pytest.raises(ValueError, match=f"frame index {n} is outside the {n} GT frames"):
        evaluate(None, synth, "val", predictions={**full, v: ([0, n], val_gt[v].maps[:2])}, progress=False)
    with pytest.raises(ValueError, match="must be integers"):
        evaluate(None, synth, "val", predictions={**full, v: ([0.0, 1.5], val_gt[v].maps[:2])}, progress=False)


def test_prediction_keys_outside_the_split_and_no_model(synth, val_gt, tmp_path):
    full = {k: g.maps for k, g in val_gt.items()}
    with pytest.raises(ValueError, match=r"split 'val' .*does not have: \['999'\]"):
        evaluate(None, synth, "val", predictions={**full, "999": full[sorted(full)[0]]}, progress=False)
    # predictions for the whole split, a subset evaluated: no model is needed, none is hashed for a cache
    per_frame, s = evaluate(None, synth, "val", predictions=full, max_videos=1, frame_step=8, cache=tmp_path,
                            progress=False)
    assert s["n_videos"] == 1 and s["model"] is None
    model = CountingEcho()  # a model given but every video predicted: it never runs and nothing is cached
    evaluate(model, synth, "val", predictions=full, max_videos=1, frame_step=8, cache=tmp_path, progress=False)
    assert model.calls == 0 and not list(tmp_path.rglob("*.npz"))


def test_nan_frames_are_counted_and_written_as_json_null(synth, val_gt, tmp_path):
    const = {v: np.full_like(g.maps, 0.5) for v, g in val_gt.items()}  # constant: CC, NSS, SIM, AUC-B NaN
    per_frame, s = evaluate(None, synth, "val", predictions=const, frame_step=4, progress=False)
    n = len(per_frame)
    assert s["n_frames"] == n
    assert s["n_valid"]["cc"] == 0 and s["n_valid"]["nss"] == 0 and math.isnan(s["pooled"]["cc"])
    assert s["n_valid"]["auc_judd"] == n and s["n_valid"]["kld"] == n
    assert s["n_valid_videos"]["cc"] == 0 and s["n_valid_videos"]["kld"] == len(val_gt)
    assert f"0/{n}" in format_table(s) and f"{n}/{n}" in format_table(s)
    write_results(per_frame, s, tmp_path)

    def refuse(token):
        raise AssertionError(f"summary.json holds {token}, which is not JSON")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert summary["pooled"]["cc"] is None and summary["per_video"]["nss"] is None
    assert summary["pooled"]["kld"] == pytest.approx(s["pooled"]["kld"]) and summary["n_valid"]["cc"] == 0
    per_video = pd.read_csv(tmp_path / "per_video.csv", dtype={"video": str})
    assert per_video["n_frames"].sum() == n and (per_video["n_valid_cc"] == 0).all()
    assert (per_video["n_valid_kld"] == per_video["n_frames"]).all()
    # a partly valid metric: the count is the non-NaN frames
    df = pd.DataFrame({"video": ["a", "a", "b"], **{k: [1.0, float("nan"), 3.0] for k in M.METRIC_NAMES}})
    assert summarise(df)["n_valid"]["cc"] == 2 and summarise(df)["n_frames"] == 3


def test_sauc_pool_is_recorded_and_a_subset_is_flagged(synth, val_gt):
    preds = {v: g.maps for v, g in val_gt.items()}
    n_all = sum(len(g.maps) for g in val_gt.values())
    _, s = evaluate(None, synth, "val", predictions=preds, progress=False)
    assert s["sauc_pool"] == {"frames": n_all, "videos": len(val_gt), "split_videos": len(val_gt),
                              "whole_split": True}
    assert "not comparable" not in format_table(s)
    for kwargs in ({"max_videos": 1}, {"frame_step": 2}, {"videos": [sorted(val_gt)[1]]}):
        per_frame, sub = evaluate(None, synth, "val", predictions=preds, progress=False, **kwargs)
        assert sub["sauc_pool"]["frames"] == len(per_frame) and not sub["sauc_pool"]["whole_split"], kwargs
        assert "not comparable with a full-split sAUC" in format_table(sub)
    v = sorted(val_gt)[0]
    _, part = evaluate(None, synth, "val", predictions={**preds, v: ([0, 1], preds[v][:2])}, progress=False)
    assert not part["sauc_pool"]["whole_split"]


def test_summary_records_the_manifest_evaluated(synth, val_gt):
    preds = {v: g.maps for v, g in val_gt.items()}
    _, s = evaluate(None, synth, "val", predictions=preds, frame_step=8, progress=False)
    assert s["dataset"] == "synthetic-dhf1k"  # the root's own manifest, not the loader's default name
    assert s["manifest"] == str((synth / "manifest.yaml").resolve())


def _write_prediction_dir(val_gt, folder, half_size=()):
    from tinyhd.video import write_image

    for v, g in val_gt.items():
        for t, m in enumerate(g.maps):
            u8 = (m * 255).round().astype(np.uint8)
            if v in half_size:
                u8 = u8[::2, ::2]
            write_image(folder / v / f"{t + 1:04d}.png", u8)


def test_cli_evaluate_scores_a_folder_of_predicted_maps(synth, val_gt, tmp_path, capsys):
    preds = tmp_path / "preds"
    first, second = sorted(val_gt)
    _write_prediction_dir(val_gt, preds, half_size=(second,))  # one video's maps at half size: resized
    out = tmp_path / "results"
    argv = ["evaluate", "--predictions", str(preds), "--data", str(synth), "--split", "val",
            "--videos", f" {first}, {second} ", "--out", str(out), "--no-progress"]
    assert cli(argv) == 0
    text = capsys.readouterr().out
    assert "CC" in text and "not comparable" not in text
    summary = json.loads((out / "summary.json").read_text())
    n = sum(len(g.maps) for g in val_gt.values())
    assert summary["n_frames"] == n and summary["n_valid"]["cc"] == n
    assert summary["predictions"] == str(preds) and summary["model"] is None
    per_frame = pd.read_csv(out / "per_frame.csv", dtype={"video": str})
    assert per_frame[per_frame["video"] == first]["cc"].min() > 0.9999  # same size: the GT up to uint8
    assert per_frame[per_frame["video"] == second]["cc"].mean() > 0.97  # half size, resized back
    # the same numbers through the API with the maps in memory
    g = val_gt[first]
    assert per_frame[per_frame["video"] == first]["cc"].iloc[3] == pytest.approx(
        M.cc((g.maps[3] * 255).round().astype(np.uint8), g.maps[3]), abs=1e-12)


def test_cli_evaluate_prediction_folder_errors(synth, val_gt, tmp_path, capsys):
    first, second = sorted(val_gt)
    n = len(val_gt[first].maps)

    def run(folder, *extra):
        rc = cli(["evaluate", "--predictions", str(folder), "--data", str(synth), "--no-progress", *extra])
        return rc, capsys.readouterr().err

    rc, err = run(tmp_path / "nowhere")
    assert rc == 2 and "nowhere" in err and "does not exist" in err
    preds = tmp_path / "preds"
    _write_prediction_dir(val_gt, preds)
    (preds / first / f"{n // 2:04d}.png").unlink()  # a missing frame
    rc, err = run(preds)
    assert rc == 2 and str(preds / first) in err and f"no map numbered {n // 2}" in err
    _write_prediction_dir(val_gt, preds)
    (preds / first / f"{n + 1:04d}.png").write_bytes((preds / first / "0001.png").read_bytes())  # an extra one
    rc, err = run(preds)
    assert rc == 2 and str(preds / first) in err and "past the last frame" in err
    (preds / first / f"{n + 1:04d}.png").unlink()
    (preds / first / "1.png").write_bytes((preds / first / "0001.png").read_bytes())  # frame 1 twice
    rc, err = run(preds)
    assert rc == 2 and "both claim frame number 1" in err
    (preds / first / "1.png").unlink()
    import shutil

    shutil.rmtree(preds / second)  # a video without predictions
    rc, err = run(preds)
    assert rc == 2 and str(preds / second) in err and f"no predictions for video {second}" in err
    assert run(preds, "--videos", first)[0] == 0  # … fine when that video is not evaluated
    ckpt = tmp_path / "m.pt"
    with pytest.raises(SystemExit):  # --checkpoint and --predictions exclude each other
        cli(["evaluate", "--predictions", str(preds), "--checkpoint", str(ckpt), "--data", str(synth)])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one of them is required
        cli(["evaluate", "--data", str(synth)])
    assert "one of the arguments --checkpoint --predictions is required" in capsys.readouterr().err
    rc, err = run(preds, "--videos", " , ")
    assert rc == 2 and "--videos: no video id" in err
