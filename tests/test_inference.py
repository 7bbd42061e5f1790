"""Whole-video inference: window plans, post-processing, stand-in models, and the released checkpoint on the
authors' video against their post-processed maps (fixture README)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tinyhd
from tinyhd.inference import mimo_windows, miso_window, plan_windows, postprocess, postprocess_u8, predict_video
from tinyhd.preprocess import IMAGENET_MEAN, IMAGENET_STD


# ------------------------------------------------------------------------------------------------------
# stand-in models: their maps encode which frames they saw, so window plans can be checked exactly
# ------------------------------------------------------------------------------------------------------
class _Out:
    def __init__(self, saliency):
        self.saliency = saliency


class FrameEcho(nn.Module):
    """MIMO: map t = channel 0 of window frame t. MISO: map = channel 0 of the window's last (or first) frame."""

    def __init__(self, output: str, pick: int = -1):
        super().__init__()
        self.output = output
        self.pick = pick
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, clip):  # B×3×T×H×W
        if self.output == "multi":
            return _Out(clip[:, 0] * self.scale)  # B×T×H×W
        return _Out(clip[:, 0, self.pick][:, None] * self.scale)  # B×1×H×W


class WindowStart(nn.Module):
    """MIMO: every output map of a window is constant = channel 0 of the window's first frame."""

    output = "multi"

    def forward(self, clip):
        first = clip[:, 0, 0, :, :].mean(dim=(-2, -1))  # B
        return _Out(first[:, None, None, None].expand(-1, clip.shape[2], clip.shape[3], clip.shape[4]).clone())


def _indexed_video(n: int, h: int = 24, w: int = 40) -> np.ndarray:
    """Frame k is a flat grey of value 3k (so a preprocessed value identifies its frame)."""
    return np.stack([np.full((h, w, 3), 3 * k, dtype=np.uint8) for k in range(n)])


def _frame_of(value: float) -> int:
    """Invert channel 0 of tinyhd.preprocess on a flat frame of value 3k."""
    return int(round((value * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255 / 3))


# ------------------------------------------------------------------------------------------------------
# window plans
# ------------------------------------------------------------------------------------------------------
def test_mimo_windows_of_the_fixture_video():
    wins = mimo_windows(540)
    starts = [int(idx[0]) for idx, _, _ in wins]
    assert starts == list(range(0, 513, 16)) + [524]  # 0, 16, …, 512, then N−16 (fixture README)
    owner = {}
    for idx, pos, fr in wins:
        assert np.array_equal(idx[pos], fr)
        for f in fr:
            assert f not in owner
            owner[int(f)] = int(idx[0])
    assert sorted(owner) == list(range(540))
    assert owner[523] == 512 and owner[524] == 524 and owner[527] == 524  # the last window overwrites


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 32, 33])
def test_mimo_windows_cover_every_frame_once(n):
    wins = mimo_windows(n)
    frames = np.concatenate([fr for _, _, fr in wins])
    assert sorted(frames.tolist()) == list(range(n))
    for idx, pos, fr in wins:
        assert len(idx) == 16 and np.array_equal(idx[pos], fr)
    if n < 16:  # padded at the start with frame 0
        (idx, pos, fr), = wins
        assert idx.tolist() == [0] * (16 - n) + list(range(n))


def test_miso_windows_pad_and_reverse():
    assert miso_window(0, 100).tolist() == [0] * 16
    assert miso_window(3, 100).tolist() == [0] * 12 + [0, 1, 2, 3]  # frame0 repeated 15−i times + frames 0..i
    assert miso_window(15, 100).tolist() == list(range(16))
    assert miso_window(40, 100).tolist() == list(range(25, 41))
    assert miso_window(3, 100, first_frames="reverse").tolist() == list(range(18, 2, -1))  # ends on frame 3
    assert miso_window(3, 10, first_frames="reverse").tolist() == [9] * 9 + list(range(9, 2, -1))
    assert miso_window(20, 100, first_frames="reverse").tolist() == list(range(5, 21))
    with pytest.raises(ValueError):
        miso_window(0, 10, first_frames="mirror")


def test_plan_subset_uses_whole_video_windows():
    full = {int(f): idx[0] for idx, pos, fr in plan_windows(40, "multi") for f in fr}
    sub = plan_windows(40, "multi", frames=[3, 30, 39])
    assert {int(f): idx[0] for idx, pos, fr in sub for f in fr} == {3: full[3], 30: full[30], 39: full[39]}
    with pytest.raises(ValueError, match="0..39"):
        plan_windows(40, "multi", frames=[40])


# ------------------------------------------------------------------------------------------------------
# predict_video with stand-in models
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 16, 40])
def test_mimo_maps_belong_to_their_frames(n):
    raw = predict_video(FrameEcho("multi"), _indexed_video(n), postprocess=False, progress=False, batch_size=3)
    assert raw.shape == (n, 192, 256) and raw.dtype == np.float32
    assert [_frame_of(m.mean()) for m in raw] == list(range(n))


def test_mimo_overlap_is_overwritten_by_the_last_window():
    raw = predict_video(WindowStart(), _indexed_video(40), postprocess=False, progress=False)
    starts = [_frame_of(m.mean()) for m in raw]
    assert starts == [0] * 16 + [16] * 8 + [24] * 16  # windows 0, 16, 24 (= N−16)


def test_miso_first_frames_padded_or_reversed():
    video = _indexed_video(40)
    last = predict_video(FrameEcho("single", pick=-1), video, postprocess=False, progress=False, batch_size=7)
    assert [_frame_of(m.mean()) for m in last] == list(range(40))  # each window ends on its frame
    first = predict_video(FrameEcho("single", pick=0), video, postprocess=False, progress=False)
    assert [_frame_of(m.mean()) for m in first] == [0] * 16 + list(range(1, 25))
    rev = predict_video(FrameEcho("single", pick=0), video, postprocess=False, progress=False,
                        first_frames="reverse")
    assert [_frame_of(m.mean()) for m in rev] == [i + 15 for i in range(15)] + list(range(0, 25))


def test_batch_size_and_frame_subset_do_not_change_maps():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(21, 30, 50, 3), dtype=np.uint8)
    model = FrameEcho("multi")
    a = predict_video(model, video, batch_size=1, progress=False)
    b = predict_video(model, video, batch_size=5, progress=False)
    c = predict_video(model, video, frames=[2, 17, 20], progress=False)
    assert np.array_equal(a, b)
    assert np.array_equal(a[[2, 17, 20]], c)


def test_postprocessed_maps_at_original_size_grayscale_odd_size():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(7, 37, 53), dtype=np.uint8)  # short, grayscale, odd-sized
    maps = predict_video(FrameEcho("multi"), gray, progress=False)
    assert maps.shape == (7, 37, 53) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert np.allclose(maps * 255, np.round(maps * 255), atol=1e-4)  # = uint8 / 255
    model = FrameEcho("multi")
    model.train()
    predict_video(model, gray, progress=False)
    assert model.training  # mode restored


def test_predict_video_rejects_bad_frames_and_models():
    with pytest.raises(ValueError, match="uint8"):
        predict_video(FrameEcho("multi"), np.zeros((4, 8, 8, 3), np.float32), progress=False)
    with pytest.raises(ValueError, match="single"):
        predict_video(nn.Identity(), np.zeros((4, 8, 8, 3), np.uint8), progress=False)
    with pytest.raises(ValueError, match="expected"):
        predict_video(FrameEcho("multi"), np.zeros((4, 8, 8, 3), np.uint8), output="single", progress=False)
    with pytest.raises(tinyhd.errors.DataError, match="no such"):
        predict_video(FrameEcho("multi"), "/nonexistent/video.avi", progress=False)


def test_predict_video_reads_files_and_folders(tmp_path):
    from tinyhd.video import write_image, write_video

    video = np.random.default_rng(2).integers(0, 256, size=(6, 32, 48, 3), dtype=np.uint8)
    for k, f in enumerate(video):
        write_image(tmp_path / "frames" / f"{k + 1}.png", f)
    from_folder = predict_video(FrameEcho("multi"), tmp_path / "frames", progress=False)
    assert np.array_equal(from_folder, predict_video(FrameEcho("multi"), video, progress=False))
    write_video(tmp_path / "v.avi", video, fourcc="MJPG")
    assert predict_video(FrameEcho("multi"), tmp_path / "v.avi", progress=False).shape == (6, 32, 48)


# ------------------------------------------------------------------------------------------------------
# post-processing
# ------------------------------------------------------------------------------------------------------
@pytest.mark.official
def test_postprocess_reproduces_the_authors_pngs_from_their_raw_maps(official_dir):
    raw = np.load(official_dir / "m_raw_maps_f16.npy")
    raw_frames = np.load(official_dir / "m_raw_frames.npy").tolist()
    png = np.load(official_dir / "m_png_maps_u8.npy")
    png_frames = np.load(official_dir / "m_png_frames.npy").tolist()
    common = [f for f in png_frames if f in raw_frames]
    assert len(common) >= 10
    for f in common:
        m = raw[raw_frames.index(f)].astype(np.float32)
        ours = postprocess_u8(m, (360, 640))
        ref = png[png_frames.index(f)]
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1, f  # README: exact; f16 rounding ≤ 1
        assert np.array_equal(postprocess(m, (360, 640)), ours.astype(np.float32) / 255)


def test_postprocess_edge_cases():
    assert not postprocess(np.full((192, 256), 0.3), (10, 20)).any()  # constant map -> zeros, not NaN
    m = postprocess(torch.rand(1, 192, 256), (33, 47))
    assert m.shape == (33, 47) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    with pytest.raises(ValueError, match="one H×W map"):
        postprocess(np.zeros((2, 3, 4)), (5, 5))
    with pytest.raises(ValueError, match="NaN"):
        postprocess(np.full((4, 4), np.nan), (5, 5))


# ------------------------------------------------------------------------------------------------------
# the released checkpoint on the authors' video
# ------------------------------------------------------------------------------------------------------
def _compare_with_authors(official_dir, keep):
    model = tinyhd.load_official_checkpoint(official_dir / "d123m_rc4_rc1T.pth")
    png = np.load(official_dir / "m_png_maps_u8.npy")
    png_frames = np.load(official_dir / "m_png_frames.npy").tolist()
    frames = [f for f in png_frames if keep(f)]
    maps = predict_video(model, official_dir / "0068.AVI", frames=frames, progress=False)
    assert maps.shape == (len(frames), 360, 640)
    for k, f in enumerate(frames):
        ref = png[png_frames.index(f)].astype(np.float64) / 255
        ours = maps[k].astype(np.float64)
        cc = np.corrcoef(ours.ravel(), ref.ravel())[0, 1]
        assert cc >= 0.999, (f, cc)
        assert np.abs(ours - ref).mean() <= 1 / 255, f


@pytest.mark.official
def test_official_first_and_last_window_match_authors_maps(official_dir):
    # frames 0, 7, 14, 15 come from window 0..15 and 524, 528, 535, 539 from the last window (N−16 = 524):
    # the windows a whole-video run uses for them, so two forward passes suffice
    _compare_with_authors(official_dir, lambda f: f < 16 or f >= 524)


@pytest.mark.slow
@pytest.mark.official
def test_official_all_reference_frames_match_authors_maps(official_dir):
    _compare_with_authors(official_dir, lambda f: True)


# ------------------------------------------------------------------------------------------------------
# torch.hub entry points (hubconf.py)
# ------------------------------------------------------------------------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_hub_entry_points_build_models_without_network():
    s = torch.hub.load(str(REPO), "tinyhd_s", source="local", reduction=4)
    m = torch.hub.load(str(REPO), "tinyhd_m", source="local", reduction=2, decoders=("d3",))
    assert isinstance(s, tinyhd.TinyHD) and s.config["output"] == "single" and s.config["reduction"] == 4
    assert m.config["output"] == "multi" and m.config["reduction"] == 2 and m.config["decoders"] == ("d3",)
    with pytest.raises(ValueError):
        torch.hub.load(str(REPO), "tinyhd_m", source="local", reduction=3)
    # the entry point fixes output: the other mode is refused with a pointer, not a bare TypeError
    with pytest.raises(ValueError, match=r"tinyhd_s builds TinyHD-S \(output='single'\); for output='multi' use the "
                                         r"'tinyhd_m' entry point"):
        torch.hub.load(str(REPO), "tinyhd_s", source="local", output="multi")
    with pytest.raises(ValueError, match="use the 'tinyhd_s' entry point"):
        torch.hub.load(str(REPO), "tinyhd_m", source="local", pretrained=True, output="single")
    assert torch.hub.load(str(REPO), "tinyhd_m", source="local", output="multi", reduction=4).config["output"] == "multi"


@pytest.mark.official
def test_hub_pretrained_uses_the_verified_registry_copy(official_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("TINYHD_CACHE", str(tmp_path))
    dest = tinyhd.weights.default_dest()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(official_dir / "d123m_rc4_rc1T.pth", dest / "d123m_rc4_rc1T.pth")  # already "downloaded"
    model = torch.hub.load(str(REPO), "tinyhd_m", source="local", pretrained=True, reduction=4)
    ref = tinyhd.load_official_checkpoint(official_dir / "d123m_rc4_rc1T.pth")
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------------------------------------
# streaming (tinyhd predict): bounded memory, the same maps as the whole-video path
# ------------------------------------------------------------------------------------------------------
def _whole_video_reference(model, video, output, batch_size, first_frames="pad"):
    """The whole-video computation predict used before streaming, written out: every frame decoded up front;
    per batch, the frames the previous batch did not already preprocess are preprocessed in one call."""
    from tinyhd.inference import _batches
    from tinyhd.preprocess import preprocess

    maps, cache = {}, {}
    with torch.inference_mode():
        for batch in _batches(plan_windows(len(video), output, first_frames=first_frames), batch_size):
            need = sorted({int(i) for idx, _, _ in batch for i in idx})
            missing = [i for i in need if i not in cache]
            x = preprocess(video[missing]) if missing else None  # 3×M×192×256
            cache = {i: cache[i] if i in cache else x[:, missing.index(i)] for i in need}
            clip = torch.stack([torch.stack([cache[int(i)] for i in idx], dim=1) for idx, _, _ in batch])
            sal = model(clip).saliency.numpy()
            for b, (_, pos, fr) in enumerate(batch):
                for p, f in zip(pos, fr):
                    maps[int(f)] = sal[b, int(p)]
    return np.stack([maps[f] for f in range(len(video))])


def _record_frames_held(monkeypatch) -> list[int]:
    """The number of decoded frames the stream holds after each load, recorded as iter_raw_maps runs."""
    from tinyhd import inference

    peak: list[int] = []

    class Recording(inference._FrameSource):
        def load_until(self, *args):
            super().load_until(*args)
            peak.append(len(self.rgb))

    monkeypatch.setattr(inference, "_FrameSource", Recording)
    return peak


@pytest.mark.parametrize("output,n,batch_size,first_frames", [("multi", 69, 2, "pad"), ("single", 40, 4, "reverse")])
def test_streamed_maps_equal_the_whole_video_path_with_bounded_memory(tmp_path, monkeypatch, output, n, batch_size,
                                                                      first_frames):
    from tinyhd import inference
    from tinyhd.video import read_video, write_video

    torch.manual_seed(0)
    model = tinyhd.TinyHD(output=output, decoders=("d3",), reduction=4).eval()
    rng = np.random.default_rng(6)
    path = write_video(tmp_path / "v.avi", rng.integers(0, 256, (n, 40, 56, 3), dtype=np.uint8), fourcc="MJPG")
    video = read_video(path)

    peak = _record_frames_held(monkeypatch)
    streamed = list(inference.iter_raw_maps(model, path, batch_size=batch_size, first_frames=first_frames,
                                            progress=False))
    assert [f for f, _, _ in streamed] == list(range(n))  # frame order
    for f, _, frame in streamed:
        assert np.array_equal(frame, video[f])
    ref = _whole_video_reference(model, video, output, batch_size, first_frames)
    assert np.array_equal(np.stack([m for _, m, _ in streamed]), ref)  # bit-identical
    raw, idx, rgb = inference.predict_raw(model, video, batch_size=batch_size, first_frames=first_frames,
                                          progress=False)
    assert np.array_equal(raw, ref) and idx.tolist() == list(range(n)) and rgb is video
    bound = (batch_size + 1) * 16 if output == "multi" else batch_size + 2 * 16
    assert max(peak) <= bound < n  # never the whole video


def test_stream_refuses_a_video_that_shrinks_between_passes(tmp_path):
    from tinyhd.inference import iter_raw_maps
    from tinyhd.video import write_image

    for k in range(20):
        write_image(tmp_path / "f" / f"{k:04d}.png", np.full((32, 32, 3), k, np.uint8))
    with pytest.raises(tinyhd.errors.DataError, match=r"only 20 frames decode this time, 30 before"):
        list(iter_raw_maps(FrameEcho("multi"), tmp_path / "f", n_frames=30, progress=False))


def test_stream_of_a_frame_subset_keeps_only_the_frames_its_windows_need(tmp_path, monkeypatch):
    from tinyhd import inference
    from tinyhd.video import write_image

    for k in range(80):
        write_image(tmp_path / "f" / f"{k:04d}.png", np.full((32, 32, 3), 3 * k, np.uint8))
    peak = _record_frames_held(monkeypatch)
    got = list(inference.iter_raw_maps(FrameEcho("single"), tmp_path / "f", frames=[3, 79], batch_size=1,
                                       progress=False))
    assert [f for f, _, _ in got] == [3, 79] and [_frame_of(m.mean()) for _, m, _ in got] == [3, 79]
    assert max(peak) <= 16 + 16  # not the 64 frames between the two windows


def test_a_gap_in_a_frame_folders_numbering_is_refused_not_shifted(tmp_path):
    """0001…0019, 0021…0040: by position frame 0021 would be map 20 and windows would join 0019 and 0021."""
    from tinyhd.inference import count_video_frames, iter_raw_maps
    from tinyhd.video import write_image

    video = _indexed_video(40, 16, 16)
    for k, f in enumerate(video):
        if k != 19:
            write_image(tmp_path / "gap" / f"{k + 1:04d}.png", f)
        write_image(tmp_path / "from0" / f"{k:04d}.png", f)
    for call in (lambda p: predict_video(FrameEcho("single"), p, progress=False),
                 lambda p: list(iter_raw_maps(FrameEcho("multi"), p, progress=False)),
                 lambda p: list(iter_raw_maps(FrameEcho("multi"), p, n_frames=39, progress=False)),
                 count_video_frames, lambda p: tinyhd.predict_video(FrameEcho("multi"), p, progress=False)):
        with pytest.raises(tinyhd.errors.DataError, match=r"gap: frame folder numbering jumps 0019\.png → 0021\.png"):
            call(tmp_path / "gap")
    # numbered from 0: used by position, the same maps as the frames in memory
    assert np.array_equal(predict_video(FrameEcho("multi"), tmp_path / "from0", progress=False),
                          predict_video(FrameEcho("multi"), video, progress=False))
