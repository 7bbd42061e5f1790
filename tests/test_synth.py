"""tinyhd.synth: deterministic, learnable synthetic sets; atomic, race-safe cache; the ``tinyhd synth`` CLI."""
from __future__ import annotations

import multiprocessing as mp
import re
from pathlib import Path

import numpy as np
import pytest

from tinyhd import cli, synth
from tinyhd.manifest import load_manifest, verify
from tinyhd.synth import baseline_scores, centre_bias, default_splits, ensure_synthetic, generate_video


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    return float((a * b).mean())


def _nss(pred: np.ndarray, fix: np.ndarray) -> float:
    return float(((pred - pred.mean()) / pred.std())[fix].mean())


def test_generation_is_deterministic_for_a_seed():
    a, b = generate_video(0, 1, 6, (32, 48)), generate_video(0, 1, 6, (32, 48))
    for field in ("frames", "maps", "fixations", "density"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    c = generate_video(1, 1, 6, (32, 48))
    assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.fixations, c.fixations)
    assert not np.array_equal(a.frames, generate_video(0, 2, 6, (32, 48)).frames)


def test_maps_are_blurred_fixations_normalised_to_one():
    v = generate_video(0, 3, 8, (48, 64), observers=12)
    assert v.frames.shape == (8, 48, 64, 3) and v.frames.dtype == np.uint8
    assert v.maps.shape == v.fixations.shape == v.density.shape == (8, 48, 64)
    assert (v.maps.reshape(8, -1).max(1) == 255).all()
    assert (v.fixations.reshape(8, -1).sum(1) >= 1).all() and (v.fixations.reshape(8, -1).sum(1) <= 12).all()
    assert (v.maps[v.fixations] > 0).all()  # every fixation lies under the map
    assert np.allclose(v.density.reshape(8, -1).sum(1), 1, atol=1e-4)
    assert v.frames.std() > 20  # cluttered background, not a flat field


def test_centre_bias_scores_clearly_below_the_generating_density():
    """Issue 2 item 7: fixations follow the objects, so a centre prior cannot explain them."""
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    centre = np.exp(-0.5 * (((y - h / 2) / (0.25 * h)) ** 2 + ((x - w / 2) / (0.25 * w)) ** 2))
    scores = {"density": {"cc": [], "nss": []}, "centre": {"cc": [], "nss": []}}
    for n in range(1, 5):
        v = generate_video(0, n, 24, (h, w))
        for t in range(0, 24, 3):
            gt, fix = v.maps[t].astype(float), v.fixations[t]
            for name, pred in (("density", v.density[t]), ("centre", centre)):
                scores[name]["cc"].append(_cc(pred, gt))
                scores[name]["nss"].append(_nss(pred, fix))
    dens = {k: np.mean(s) for k, s in scores["density"].items()}
    cent = {k: np.mean(s) for k, s in scores["centre"].items()}
    assert dens["cc"] > 0.6 and dens["cc"] > cent["cc"] + 0.3, (dens, cent)
    assert dens["nss"] > 2.0 and dens["nss"] > cent["nss"] + 1.0, (dens, cent)


def test_default_splits_follow_dhf1k_proportions():
    assert default_splits(12) == {"train": (1, 8), "val": (9, 10), "test": (11, 12)}
    assert default_splits(3) == {"train": (1, 1), "val": (2, 2), "test": (3, 3)}


def test_ensure_synthetic_caches_by_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYHD_CACHE", str(tmp_path))
    root = ensure_synthetic("dhf1k", videos=3, frames=6, size=(32, 40), seed=2, progress=False)
    assert root == tmp_path / "synth" / f"dhf1k_v3_f6_32x40_s2_g{synth.GENERATOR_VERSION}_l{synth.LAYOUT_VERSION}"
    assert synth.LAYOUT_VERSION >= 2  # layout 2: unannotated test split; caches of layout 1 are not reused
    stamp = (root / "manifest.yaml").stat().st_mtime_ns
    assert ensure_synthetic("dhf1k", videos=3, frames=6, size=(32, 40), seed=2) == root
    assert (root / "manifest.yaml").stat().st_mtime_ns == stamp  # not rebuilt
    report = verify(load_manifest(root), root)
    assert report.ok and report.checked == {"train": 1, "val": 1, "test": 1}
    kin = ensure_synthetic("kinetics", videos=2, frames=5, size=(32, 40), progress=False)
    files = sorted(p.relative_to(kin).as_posix() for p in kin.rglob("*.avi"))
    assert len(files) == 2
    assert all(re.fullmatch(r"train_256/[a-z_]+/[A-Za-z0-9_-]{11}_\d{6}_\d{6}\.avi", f) for f in files)
    assert verify(load_manifest(kin), kin).ok
    assert not list(tmp_path.glob("synth/.*")), "partial folders left behind"


def test_losing_a_build_race_uses_the_winners_copy(tmp_path, monkeypatch):
    """Another process finishes the same dataset while we build ours: ours is discarded, no error."""
    root = tmp_path / "ds"
    real_writer = synth.write_dhf1k

    def racing_writer(tmp, **kw):
        real_writer(root, **kw)          # the "other process" wins: the final folder now exists
        (root / "winner").write_text("1")
        return real_writer(tmp, **kw)

    monkeypatch.setattr(synth, "write_dhf1k", racing_writer)
    got = synth.build(root, "dhf1k", videos=3, frames=4, size=(24, 32), progress=False)
    assert got == root and (root / "winner").exists() and (root / "manifest.yaml").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def _build_in_process(root: str) -> str:
    return str(synth.build(root, "dhf1k", videos=3, frames=4, size=(24, 32), progress=False))


def test_two_processes_building_at_once(tmp_path):
    root = tmp_path / "ds"
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_build_in_process, [str(root)] * 2)
    assert results == [str(root)] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert verify(load_manifest(root), root).ok


def test_cli_writes_a_dataset_that_verifies(tmp_path, capsys):
    root = tmp_path / "s"
    assert cli.main(["synth", str(root), "--videos", "3", "--frames", "5", "--size", "24x32", "--seed", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["verify-data", str(root / "manifest.yaml"), str(root)]) == 0
    assert "OK:" in capsys.readouterr().out
    assert cli.main(["synth", str(root)]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["synth", str(tmp_path / "t"), "--size", "big"]) == 2
    assert "--size must look like HxW" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    assert cli.main(["synth", str(tmp_path / "k"), "--kind", "kinetics", "--videos", "2", "--frames", "4",
                     "--size", "24x32"]) == 0
    assert len(list(Path(tmp_path / "k" / "train_256").rglob("*.avi"))) == 2


def test_baseline_scores_with_the_benchmark_metrics():
    scores = baseline_scores(videos=(1, 2), frames=12, size=(48, 64), every=3)
    assert scores["density"]["CC"] > scores["centre bias"]["CC"] + 0.3
    assert scores["density"]["NSS"] > scores["centre bias"]["NSS"] + 1.0
    assert centre_bias((48, 64)).argmax() in {23 * 64 + 31, 23 * 64 + 32, 24 * 64 + 31, 24 * 64 + 32}


def test_dhf1k_layout_test_split_is_unannotated_like_dhf1k(tmp_path):
    """DHF1K withholds its test annotations; the synthetic set does too, so those code paths run in tests."""
    import yaml

    from tinyhd.data import SaliencyClipDataset

    root = synth.write_dhf1k(tmp_path / "d", videos=6, frames=5, size=(16, 24), progress=False)
    raw = yaml.safe_load((root / "manifest.yaml").read_text())
    assert {k: v["annotated"] for k, v in raw["splits"].items()} == {"train": True, "val": True, "test": False}
    assert sorted(p.name for p in (root / "annotation").iterdir()) == ["0001", "0002", "0003", "0004", "0005"]
    assert (root / "video/006.AVI").is_file()
    assert verify(load_manifest(root), root).ok
    item = SaliencyClipDataset(root, split="test", size=(16, 24))[0]
    assert not bool(item["has_sal"]) and not item["saliency"].any()
    # the frames are those of the annotated version (the labels are still drawn, only not written)
    frames = SaliencyClipDataset(root, split="test", size=None).frames("006")
    assert np.abs(frames.astype(int) - generate_video(0, 6, 5, (16, 24)).frames.astype(int)).mean() < 8


def test_folder_layouts_and_kinetics_list_their_video_ids(tmp_path):
    ucf = synth.write_folder_layout(tmp_path / "u", "ucf", videos=4, frames=3, size=(16, 24), progress=False)
    m = load_manifest(ucf)
    assert m.splits["train"].videos == [p.name for p in sorted((ucf / "training").iterdir())]
    assert m.splits["test"].videos == ["Lifting-004"] and m.splits["test"].annotated
    kin = synth.write_kinetics(tmp_path / "k", videos=3, frames=3, size=(16, 24), progress=False)
    ids = load_manifest(kin).splits["train"].videos
    assert sorted(ids) == sorted(f"{p.parent.name}/{p.stem}" for p in (kin / "train_256").rglob("*.avi"))
    assert verify(load_manifest(kin), kin).ok and verify(m, ucf).ok
