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
