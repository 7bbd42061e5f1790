"""tinyhd.similarity: predicted-map folders are aligned with the ground truth frame by frame, or refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinyhd.errors import DataError, UserError
from tinyhd.similarity import load_prediction_dirs, predict_maps, similarity_matrix


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from tinyhd.synth import build

    # 3 videos -> train 001, val 002 (17 frames at 48×64), test 003
    return build(tmp_path_factory.mktemp("synth") / "dhf1k", "dhf1k", videos=3, frames=[12, 17, 12], size=(48, 64),
                 seed=0, progress=False)


@pytest.fixture(scope="module")
def gt(data_root) -> np.ndarray:
    from tinyhd.data import SaliencyClipDataset

    return SaliencyClipDataset(data_root, split="val", size=None).ground_truth("002").maps     # 17×48×64


def _write(folder: Path, maps: np.ndarray, names) -> Path:
    import cv2

    folder.mkdir(parents=True)
    for m, name in zip(maps, names):
        cv2.imwrite(str(folder / name), np.round(np.clip(m, 0, 1) * 255).astype(np.uint8))
    return folder.parent


def _cc_with_gt(pred_dir: Path, data_root) -> float:
    preds, g = load_prediction_dirs({"m": pred_dir}, data_root, split="val")
    return float(similarity_matrix(preds, g, "cc").loc["m", "ground truth"])


@pytest.mark.parametrize("first", [0, 1])
def test_numbered_folders_align_with_the_ground_truth_from_0_or_1(tmp_path, data_root, gt, first):
    """A folder of the exact GT maps scores CC ≈ 1 whether it counts frames from 0 or from 1 (a 0-based folder
    was read one frame late: CC 0.95, no warning)."""
    d = _write(tmp_path / "m" / "002", gt, [f"{t + first:04d}.png" for t in range(len(gt))])
    assert _cc_with_gt(d, data_root) > 0.999


def test_unnumbered_folders_are_taken_in_name_order(tmp_path, data_root, gt):
    d = _write(tmp_path / "m" / "002", gt, [f"frame_{t + 1}.png" for t in range(len(gt))])    # natural order
    assert _cc_with_gt(d, data_root) > 0.999
    (d / "002" / "frame_99.png").write_bytes((d / "002" / "frame_1.png").read_bytes())
    with pytest.raises(DataError, match="holds 18 maps for a video with 17 annotated frames"):
        load_prediction_dirs({"m": d}, data_root, split="val")


@pytest.mark.parametrize("names, message", [
    ([f"{t + 1:04d}.png" for t in range(10)], r"holds 10 maps numbered 1–10 .* 17 annotated frames: no map numbered 11"),
    ([f"{t + 1:04d}.png" for t in range(18)], r"1 map\(s\) past the last frame, e\.g\. 0018\.png"),
    ([f"{t + 1:04d}.png" for t in range(16)] + ["0018.png"], r"no map numbered 17 \(frame 16\)"),
    ([f"{t + 5:04d}.png" for t in range(17)], r"numbered from 0005\.png; expected .* 0 or 1"),
    ([f"{t + 1:04d}.png" for t in range(17)] + ["1.png"], r"0001\.png and 1\.png both claim frame number 1"),
    ([], r"no image files"),
])
def test_a_folder_that_does_not_hold_one_map_per_frame_is_refused(tmp_path, data_root, gt, names, message):
    maps = np.concatenate([gt, gt])
    d = _write(tmp_path / "m" / "002", maps, names)
    with pytest.raises(DataError, match=message) as err:
        load_prediction_dirs({"m": d}, data_root, split="val")
    assert str(tmp_path / "m" / "002") in str(err.value)


def test_a_map_of_another_size_is_resized_to_its_ground_truth_frame(tmp_path, data_root, gt):
    import cv2

    d = _write(tmp_path / "m" / "002", gt, [f"{t + 1:04d}.png" for t in range(len(gt))])
    big = cv2.resize(np.round(gt[3] * 255).astype(np.uint8), (128, 96), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(d / "002" / "0004.png"), big)
    preds, g = load_prediction_dirs({"m": d}, data_root, split="val")
    assert isinstance(preds["m"], np.ndarray) and preds["m"].shape == g.shape == (17, 48, 64)
    assert np.corrcoef(preds["m"][3].ravel(), g[3].ravel())[0, 1] > 0.99


def test_similarity_matrix_takes_maps_of_different_sizes_and_refuses_no_frames(gt):
    import cv2

    up = [cv2.resize(m, (128, 96), interpolation=cv2.INTER_LINEAR) for m in gt]             # 96×128 maps
    mixed = up[:8] + list(gt[8:])
    mat = similarity_matrix({"up": up, "mixed": mixed}, gt, "cc")
    assert mat.loc["up", "ground truth"] > 0.99 and mat.loc["mixed", "ground truth"] > 0.99
    with pytest.raises(UserError, match="no frames"):
        similarity_matrix({"a": gt[:0], "b": gt[:0]})
    with pytest.raises(UserError, match="must be N×H×W"):
        similarity_matrix({"a": gt[0], "b": gt[0]})


@pytest.mark.parametrize("indices, message", [([25], r"frame index 25 is outside the video's 20 frames \(0–19\)"),
                                              ([3, -1], "frame index -1 is outside"),
                                              ([], "no frame indices")])
def test_predict_maps_refuses_frames_outside_the_video(indices, message):
    frames = np.zeros((20, 48, 64, 3), np.uint8)
    with pytest.raises(UserError, match=message):
        predict_maps(None, frames, (48, 64), indices)


@pytest.fixture(scope="module")
def four_val_videos(tmp_path_factory):
    """A DHF1K-layout root whose val split has 4 videos of different lengths, and two models' prediction folders:
    'exact' (the GT maps, 1-based names) and 'half' (half-size maps, 0-based names: resized on reading)."""
    import cv2

    from tinyhd.data import SaliencyClipDataset, list_videos
    from tinyhd.synth import build

    frames = [40 if 17 <= k <= 20 else 4 for k in range(1, 25)]               # val: 017–020, 40 frames each
    root = build(tmp_path_factory.mktemp("synth4") / "dhf1k", "dhf1k", videos=24, frames=frames, size=(96, 128),
                 seed=1, progress=False)
    ids = list_videos(root, "val")
    assert ids == ["017", "018", "019", "020"]
    ds = SaliencyClipDataset(root, split="val", size=None)
    preds = tmp_path_factory.mktemp("preds4")
    for vid in ids:
        g = ds.ground_truth(vid).maps
        _write(preds / "exact" / vid, g, [f"{t + 1:04d}.png" for t in range(len(g))])
        half = [cv2.resize(np.roll(m, 5, axis=1), (64, 48), interpolation=cv2.INTER_AREA) for m in g]
        _write(preds / "half" / vid, np.stack(half), [f"{t:04d}.png" for t in range(len(g))])
    return root, {"exact": preds / "exact", "half": preds / "half"}


def _centre(shape):
    from tinyhd.synth import centre_bias

    return centre_bias(shape)


@pytest.mark.parametrize("every", [1, 4])
def test_similarity_from_dirs_equals_the_matrix_of_all_frames_at_once(four_val_videos, every):
    """Streaming over videos gives the same matrices as loading the whole split and calling similarity_matrix
    (the per-frame mean over all frames, not a mean of per-video means), a baseline included."""
    from tinyhd.similarity import similarity_from_dirs

    root, dirs = four_val_videos
    mats = similarity_from_dirs(dirs, root, split="val", every=every, baselines={"centre bias": _centre},
                                progress=False)
    preds, g = load_prediction_dirs(dirs, root, split="val", every=every)
    preds["centre bias"] = np.stack([_centre(m.shape) for m in g])
    for metric in ("cc", "sim"):
        want = similarity_matrix(preds, g, metric)
        got = mats[metric]
        assert list(got.index) == list(want.index) == ["exact", "half", "centre bias", "ground truth"]
        np.testing.assert_allclose(got.to_numpy(float), want.to_numpy(float), rtol=1e-12, atol=1e-12)
    assert mats["cc"].attrs["frames"] == len(g) == 4 * len(range(0, 40, every))
    assert mats["cc"].loc["exact", "ground truth"] > 0.999
    assert mats["cc"].loc["half", "ground truth"] < 0.99                   # shifted maps: a real difference


def test_similarity_from_dirs_holds_one_video_at_a_time(four_val_videos, monkeypatch):
    """Peak memory: the streaming matrices allocate less than half of what loading the split does (4 videos)."""
    import tracemalloc

    from tinyhd import similarity as sim

    root, dirs = four_val_videos
    sizes = []
    real = sim._video_maps

    def recording(*args, **kwargs):
        p, g = real(*args, **kwargs)
        sizes.append(sum(m.nbytes for m in g) + sum(m.nbytes for v in p.values() for m in v))
        return p, g

    monkeypatch.setattr(sim, "_video_maps", recording)
    sim.similarity_from_dirs(dirs, root, split="val", metrics=("cc",), videos=["017"], progress=False)  # imports
    sizes.clear()
    tracemalloc.start()
    try:
        preds, g = sim.load_prediction_dirs(dirs, root, split="val")
        sim.similarity_matrix(preds, g, "cc")
        _, peak_all = tracemalloc.get_traced_memory()
        del preds, g
        tracemalloc.reset_peak()
        sim.similarity_from_dirs(dirs, root, split="val", metrics=("cc",), progress=False)
        _, peak_stream = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sizes) == 8                                                 # 4 videos, twice
    assert peak_stream < 0.5 * peak_all, (peak_stream, peak_all)


def test_similarity_from_dirs_refuses_bad_names_and_missing_videos(four_val_videos, tmp_path):
    from tinyhd.similarity import similarity_from_dirs

    root, dirs = four_val_videos
    with pytest.raises(UserError, match="'exact' is also a model"):
        similarity_from_dirs(dirs, root, baselines={"exact": _centre}, progress=False)
    with pytest.raises(UserError, match="every must be a positive"):
        similarity_from_dirs(dirs, root, every=0, progress=False)
    with pytest.raises(DataError, match="no predictions for video"):
        similarity_from_dirs({"none": tmp_path}, root, progress=False)
