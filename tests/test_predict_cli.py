"""``tinyhd predict``: PNG maps and the overlay video for tiny videos written here, and one clear error line
(non-zero exit, no traceback) for every kind of bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import tinyhd
from tinyhd.cli import main as cli
from tinyhd.video import write_image, write_video

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A small random TinyHD-M ×¼ checkpoint in our format (D3 only: the cheapest multi-output model)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_m_rc4.pt"
    tinyhd.save_checkpoint(tinyhd.TinyHD(output="multi", decoders=("d3",), reduction=4), path)
    return path


@pytest.fixture()
def avi(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(10, 48, 64, 3), dtype=np.uint8)
    return write_video(tmp_path / "clip.avi", frames, fps=25.0, fourcc="MJPG")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TINYHD_DEBUG="")
    env.pop("TINYHD_DEBUG")
    return subprocess.run([sys.executable, "-m", "tinyhd", "predict", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


# ------------------------------------------------------------------------------------------------------
# success paths (subprocess, as a user runs it)
# ------------------------------------------------------------------------------------------------------
def test_predict_video_file_with_overlay(tmp_path, avi, ckpt):
    out = tmp_path / "maps"
    r = _run(str(avi), "--checkpoint", str(ckpt), "--out", str(out), "--overlay", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in _pngs(out)] == [f"{k:04d}.png" for k in range(1, 11)]  # 1-based, like generate.py
    m = cv2.imread(str(out / "0001.png"), cv2.IMREAD_UNCHANGED)
    assert m.shape == (48, 64) and m.dtype == np.uint8 and m.max() > m.min()
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (48, 64, 3)
        n += 1
    cap.release()
    assert n == 10
    # the PNGs are predict_video's maps ×255; the CLI runs the optimised model (tinyhd.fast), whose raw maps
    # agree within 1e-5, so a grey level may flip where a value sits on a rounding boundary
    model = tinyhd.load_checkpoint(ckpt)
    maps = tinyhd.predict_video(model, avi, progress=False)
    plain = np.round(maps[0] * 255).astype(np.uint8)
    assert np.abs(plain.astype(int) - m.astype(int)).max() <= 1
    assert (plain != m).mean() < 0.01


def test_predict_plain_flag_gives_exactly_predict_video(tmp_path, avi, ckpt):
    out = tmp_path / "maps"
    r = _run(str(avi), "--checkpoint", str(ckpt), "--out", str(out), "--plain", "--no-progress")
    assert r.returncode == 0, r.stderr
    maps = tinyhd.predict_video(tinyhd.load_checkpoint(ckpt), avi, progress=False)
    for k in (0, 9):
        png = cv2.imread(str(out / f"{k + 1:04d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(np.round(maps[k] * 255).astype(np.uint8), png)


def test_predict_grayscale_odd_sized_frame_folder(tmp_path, ckpt):
    rng = np.random.default_rng(1)
    for k in range(7):  # short (< 16 frames), grayscale, odd size
        write_image(tmp_path / "frames" / f"frame{k + 1}.png", rng.integers(0, 256, (37, 53), dtype=np.uint8))
    out = tmp_path / "out"
    # in-process through the same dispatcher (a second interpreter start costs more than the run)
    assert cli(["predict", str(tmp_path / "frames"), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    pngs = _pngs(out)
    assert len(pngs) == 7
    assert cv2.imread(str(pngs[-1]), cv2.IMREAD_UNCHANGED).shape == (37, 53)


def test_bad_checkpoint_via_subprocess_is_one_line(tmp_path, avi):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    r = _run(str(avi), "--checkpoint", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(bad) in lines[0]


# ------------------------------------------------------------------------------------------------------
# bad input: one line naming the culprit, exit 2 (in-process through the same dispatcher)
# ------------------------------------------------------------------------------------------------------
def _fails(capsys, argv, culprit, *words):
    rc = cli(["predict", *argv, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert str(culprit) in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_missing_empty_and_non_video_files(tmp_path, ckpt, capsys):
    out = str(tmp_path / "o")
    missing = tmp_path / "nope.avi"
    _fails(capsys, [str(missing), "--checkpoint", str(ckpt), "--out", out], missing, "no such")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    _fails(capsys, [str(empty), "--checkpoint", str(ckpt), "--out", out], empty, "empty")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    _fails(capsys, [str(text), "--checkpoint", str(ckpt), "--out", out], text)
    empty_dir = tmp_path / "noframes"
    empty_dir.mkdir()
    _fails(capsys, [str(empty_dir), "--checkpoint", str(ckpt), "--out", out], empty_dir)
    assert not (tmp_path / "o").exists() or not _pngs(tmp_path / "o")


def test_truncated_video(tmp_path, avi, ckpt, capsys):
    data = avi.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    _fails(capsys, [str(cut), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")], cut, "truncated")


def test_unreadable_missing_and_foreign_checkpoints(tmp_path, avi, capsys):
    out = str(tmp_path / "o")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    _fails(capsys, [str(avi), "--checkpoint", str(garbage), "--out", out], garbage)
    missing = tmp_path / "missing.pth"
    _fails(capsys, [str(avi), "--checkpoint", str(missing), "--out", out], missing, "no such")
    foreign = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), foreign)  # another architecture's weights
    _fails(capsys, [str(avi), "--checkpoint", str(foreign), "--out", out], foreign)
    other_cfg = tmp_path / "wrong_shapes.pt"
    m = tinyhd.TinyHD(output="multi", decoders=("d3",), reduction=4)
    state = m.state_dict()
    tinyhd.save_checkpoint(tinyhd.TinyHD(output="multi", decoders=("d3",), reduction=2), other_cfg)
    obj = torch.load(other_cfg, weights_only=True)
    obj["config"] = dict(m.config)  # config says ×¼ but the tensors are ×½
    torch.save(obj, other_cfg)
    _fails(capsys, [str(avi), "--checkpoint", str(other_cfg), "--out", out], other_cfg)
    assert state  # the ×¼ model was built


class _Evil:
    """Unpickling this object would create the file at ``target`` (a stand-in for arbitrary code)."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_code_running_pickle_is_refused(tmp_path, avi, capsys):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"format": "tinyhd", "config": {}, "model": _Evil(marker)}, evil)
    line = _fails(capsys, [str(avi), "--checkpoint", str(evil), "--out", str(tmp_path / "o")], evil, "refused")
    assert "open" in line
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    control = tmp_path / "control.txt"
    torch.save({"model": _Evil(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()


def test_output_path_that_is_a_file(tmp_path, avi, ckpt, capsys):
    target = tmp_path / "maps.txt"
    target.write_text("keep me")
    _fails(capsys, [str(avi), "--checkpoint", str(ckpt), "--out", str(target)], target, "folder")
    assert target.read_text() == "keep me"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_files_predict_did_not_write_are_never_replaced(tmp_path, avi, ckpt, capsys):
    """A folder holding NNNN.png it did not write (0001–0012.png: a user's frames, DHF1K maps …) is refused
    before anything is written, whether the names collide (0001–0010) or lie past the video (0011, 0012, and a
    5-digit 12345.png); --overwrite replaces them and removes those past this video's end."""
    out = tmp_path / "maps"
    out.mkdir()
    for k in range(1, 13):
        (out / f"{k:04d}.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    _fails(capsys, [str(avi), "--checkpoint", str(ckpt), "--out", str(out)], out,
           "holds 12 file(s)", "did not write", "--overwrite")
    assert _snapshot(out) == before
    for k in range(1, 13):
        (out / f"{k:04d}.png").unlink()
    (out / "12345.png").write_bytes(b"old")  # not 4 digits, still a map name
    _fails(capsys, [str(avi), "--checkpoint", str(ckpt), "--out", str(out)], out, "12345.png")
    assert (out / "12345.png").read_bytes() == b"old"
    for k in range(1, 13):
        (out / f"{k:04d}.png").write_bytes(b"old")
    assert cli(["predict", str(avi), "--checkpoint", str(ckpt), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert "wrote 10 saliency maps (48×64, H×W)" in capsys.readouterr().out
    assert [p.name for p in _pngs(out)] == [f"{k:04d}.png" for k in range(1, 11)]  # 0011, 0012, 12345 removed
    assert cv2.imread(str(out / "0010.png")) is not None and (out / "notes.txt").read_text() == "mine"


def test_rerun_replaces_its_own_output_and_removes_its_stale_files(tmp_path, avi, ckpt, capsys):
    """predict's own earlier output (recorded in DIR/.tinyhd-predict.json) is replaced without a flag: a longer
    video's maps past this one's end and an overlay not asked for again are removed. A map edited since is
    the user's and is refused."""
    out = tmp_path / "maps"
    long_avi = write_video(tmp_path / "long.avi", np.random.default_rng(3).integers(0, 256, (13, 48, 64, 3), np.uint8),
                           fps=25.0, fourcc="MJPG")
    assert cli(["predict", str(long_avi), "--checkpoint", str(ckpt), "--out", str(out), "--overlay", "--no-progress"]) == 0
    assert len(_pngs(out)) == 13 and (out / "overlay.mp4").is_file()
    assert cli(["predict", str(avi), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    assert [p.name for p in _pngs(out)] == [f"{k:04d}.png" for k in range(1, 11)]
    assert not (out / "overlay.mp4").exists()  # a stale overlay of the longer video would pass for this one's
    capsys.readouterr()
    (out / "0003.png").write_bytes(b"edited by the user")
    _fails(capsys, [str(avi), "--checkpoint", str(ckpt), "--out", str(out)], out, "0003.png")
    assert (out / "0003.png").read_bytes() == b"edited by the user"


def test_input_frame_folder_is_never_the_output(tmp_path, ckpt, capsys):
    """Frames 0001–0020.png and --out pointing at the same folder (or a path that resolves to it): refused even
    with --overwrite, the frames untouched."""
    frames = tmp_path / "inplace"
    rng = np.random.default_rng(4)
    for k in range(1, 21):
        write_image(frames / f"{k:04d}.png", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    before = _snapshot(frames)
    for out in (frames, tmp_path / "inplace" / ".." / "inplace"):
        _fails(capsys, [str(frames), "--checkpoint", str(ckpt), "--out", str(out), "--overwrite"], out, "input frame folder")
    assert _snapshot(frames) == before


def test_input_video_in_out_named_like_an_output_is_refused(tmp_path, avi, ckpt, capsys):
    out = tmp_path / "maps"
    out.mkdir()
    video = out / "overlay.mp4"
    video.write_bytes(avi.read_bytes())
    _fails(capsys, [str(video), "--checkpoint", str(ckpt), "--out", str(out), "--overlay", "--overwrite"], out,
           "input video")
    assert video.read_bytes() == avi.read_bytes()


def test_overlay_of_an_odd_sized_frame_folder(tmp_path, ckpt, capsys):
    """101×77 frames: the overlay is padded to 102×78 (one replicated column/row), not refused after the maps."""
    rng = np.random.default_rng(5)
    for k in range(1, 21):
        write_image(tmp_path / "frames" / f"{k:04d}.png", rng.integers(0, 256, (77, 101, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert cli(["predict", str(tmp_path / "frames"), "--checkpoint", str(ckpt), "--out", str(out), "--overlay",
                "--no-progress"]) == 0
    assert "overlay video" in capsys.readouterr().out
    assert len(_pngs(out)) == 20 and cv2.imread(str(out / "0020.png"), cv2.IMREAD_UNCHANGED).shape == (77, 101)
    from tinyhd.video import read_video

    assert read_video(out / "overlay.mp4").shape == (20, 78, 102, 3)


def test_a_checkpoint_trained_at_another_size_gets_a_note(tmp_path, avi, ckpt, capsys):
    """predict runs the authors' 192×256 pipeline; a reduced-scale (32×64) checkpoint says so on stderr."""
    assert cli(["predict", str(avi), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert "note:" not in capsys.readouterr().err                     # no training size recorded: no note
    small = tmp_path / "small.pt"
    torch.save({**torch.load(ckpt, weights_only=True), "train_config": {"size": [32, 64]}}, small)
    assert cli(["predict", str(avi), "--checkpoint", str(small), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "small.pt was trained on 32×64 clips; predict runs the authors' pipeline at 192×256" in err
    assert tinyhd.load_checkpoint(small).trained_size == (32, 64)


def test_help_documents_frame_naming(capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["predict", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "%04d.png" in text and "%%" not in text and "1-based" in text and "--overlay" in text


@pytest.mark.official
def test_released_name_is_used_only_once_downloaded(tmp_path, avi, official_dir, monkeypatch, capsys):
    import shutil

    monkeypatch.setenv("TINYHD_CACHE", str(tmp_path / "cache"))
    name = "d123m_rc4_rc1T.pth"
    out = tmp_path / "o"
    _fails(capsys, [str(avi), "--checkpoint", name, "--out", str(out)], name, "not downloaded")
    _fails(capsys, [str(avi), "--checkpoint", "no_such_release.pth", "--out", str(out)], "no_such_release.pth")
    tinyhd.weights.default_dest().mkdir(parents=True, exist_ok=True)
    shutil.copy(official_dir / name, tinyhd.weights.default_dest() / name)  # as `tinyhd weights download` leaves it
    from tinyhd.inference import resolve_checkpoint

    assert resolve_checkpoint(name) == tinyhd.weights.default_dest() / name  # verified local copy is used
    (tinyhd.weights.default_dest() / name).write_bytes(b"damaged copy")
    _fails(capsys, [str(avi), "--checkpoint", name, "--out", str(out)], name)


def test_nan_weights_are_refused_not_turned_into_maps(tmp_path, avi, ckpt, capsys):
    """The default (fast) path clamps NaN through its fused ReLU6 into plausible maps: refuse at load instead."""
    bad = tmp_path / "diverged.pt"
    obj = torch.load(ckpt, weights_only=True)
    obj["model"]["encoder.features.0.0.weight"][0, 0, 0, 0, 0] = float("nan")
    torch.save(obj, bad)
    out = tmp_path / "o"
    _fails(capsys, [str(avi), "--checkpoint", str(bad), "--out", str(out)], bad, "NaN", "encoder.features.0.0.weight")
    assert not out.exists()


def test_frame_folder_with_a_numbering_gap_is_refused(tmp_path, ckpt, capsys):
    """0001…0019, 0021…0030: by position, frame 0021 would get map 0020.png, every later one shifted."""
    rng = np.random.default_rng(3)
    for k in [*range(1, 20), *range(21, 31)]:
        write_image(tmp_path / "frames" / f"{k:04d}.png", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    out = tmp_path / "o"
    _fails(capsys, [str(tmp_path / "frames"), "--checkpoint", str(ckpt), "--out", str(out)],
           tmp_path / "frames", "numbering jumps 0019.png → 0021.png")
    assert not out.exists()


def test_maps_of_a_numbered_frame_folder_carry_their_frames_numbers(tmp_path, ckpt, capsys):
    """Frames 0000…0019.png (numbered from 0) give maps 0000…0019.png, map k being the map of frame k."""
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (20, 32, 48, 3), dtype=np.uint8)
    for k, f in enumerate(frames):
        write_image(tmp_path / "frames" / f"{k:04d}.png", f)
        write_image(tmp_path / "from7" / f"img_{k + 7}.png", f)
    out = tmp_path / "o"
    assert cli(["predict", str(tmp_path / "frames"), "--checkpoint", str(ckpt), "--out", str(out), "--plain",
                "--no-progress"]) == 0
    assert "as 0000.png … 0019.png, named after the input frames' numbers" in capsys.readouterr().out
    assert [p.name for p in _pngs(out)] == [f"{k:04d}.png" for k in range(20)]
    maps = tinyhd.predict_video(tinyhd.load_checkpoint(ckpt), frames, progress=False)
    for k in (0, 5, 19):
        png = cv2.imread(str(out / f"{k:04d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(np.round(maps[k] * 255).astype(np.uint8), png)
    out7 = tmp_path / "o7"
    assert cli(["predict", str(tmp_path / "from7"), "--checkpoint", str(ckpt), "--out", str(out7), "--plain",
                "--no-progress"]) == 0
    assert [p.name for p in _pngs(out7)] == [f"{k:04d}.png" for k in range(7, 27)]
    assert np.array_equal(cv2.imread(str(out7 / "0007.png"), cv2.IMREAD_UNCHANGED), cv2.imread(str(out / "0000.png"),
                                                                                               cv2.IMREAD_UNCHANGED))
