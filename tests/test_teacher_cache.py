"""The teacher wrapper (MISO/MIMO windows) and the teacher-map cache (issue 5, item 4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinyhd.errors import DataError, UserError
from tinyhd.teacher import HD2S, OnlineTeacher, save_hd2s, window_indices
from tinyhd.teacher_cache import (FLIP_SUFFIX, CachedTeacher, build_teacher_cache, cli_main, decode_maps,
                                  encode_maps, ensure_reduced_teacher)

SIZE = (32, 64)  # HD2S needs multiples of 32; the smallest useful frame keeps these tests fast
# uint8 storage is exact to 1/512; float32 results also differ by ~1e-5 between batch compositions
TOL = 1 / 512 + 2e-4




@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from tinyhd.synth import build

    # 3 videos -> train 001 (20 frames), val 002, test 003
    return build(tmp_path_factory.mktemp("synth") / "dhf1k", "dhf1k", videos=3, frames=[20, 17, 17],
                 size=(48, 64), seed=0, progress=False)


@pytest.fixture(scope="module")
def hd2s():
    torch.manual_seed(0)
    model = HD2S()
    # random BN statistics and a stronger last conv so the maps vary across frames and pixels
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_var.uniform_(0.05, 0.2)
                m.bias.normal_(0.0, 0.5)
            if "last_conv" in name and isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, 3.0)
    return model.eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, hd2s, data_root):
    return build_teacher_cache(hd2s, data_root, tmp_path_factory.mktemp("cache") / "c", size=SIZE, progress=False)


def dataset(data_root, output):
    from tinyhd.data import SaliencyClipDataset

    return SaliencyClipDataset(data_root, split="train", size=SIZE, output=output, sampling="all", flip=False)


def batch_of(items):
    from tinyhd.training import collate

    return collate(items)


def flipped(item):
    return {**item, "clip": item["clip"].flip(-1), "flip": torch.tensor(True)}


def test_window_indices_pad_with_frame_zero():
    w = window_indices([0, 3, 20])
    assert w.shape == (3, 16)
    assert w[0].tolist() == [0] * 16
    assert w[1].tolist() == [0] * 13 + [1, 2, 3]
    assert w[2].tolist() == list(range(5, 21))


def test_uint8_and_float16_encodings_round_trip():
    m = torch.rand(3, 5, 8, 8)
    back = decode_maps(encode_maps(m, "uint8"))
    assert (back - m).abs().max() <= 1 / 512 + 1e-7
    assert float(back.min()) > 0 and float(back.max()) < 1
    assert (decode_maps(encode_maps(m, "float16")) - m).abs().max() < 1e-3
    with pytest.raises(UserError, match="dtype"):
        encode_maps(m, "int8")


def test_cache_layout(cache, data_root):
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["size"] == list(SIZE) and meta["dtype"] == "uint8" and meta["splits"] == ["train"]
    arr = np.load(cache / "001.npy", mmap_mode="r")
    assert arr.shape == (20, 5, *SIZE) and arr.dtype == np.uint8
    assert (cache / "complete").is_file()


def test_miso_cache_equals_online_teacher(cache, hd2s, data_root):
    ds = dataset(data_root, "single")
    online, cached = OnlineTeacher(hd2s), CachedTeacher(cache)
    items = [ds[0], ds[2], ds[4]]  # clips ending at frames 15, 17, 19
    batch = batch_of(items)
    a, b = online(batch), cached(batch)
    assert a["final"].shape == b["final"].shape == (3, 1, *SIZE)
    assert a["conspicuity"].shape == b["conspicuity"].shape == (3, 4, 1, *SIZE)
    for k in ("final", "conspicuity"):
        assert (a[k] - b[k]).abs().max() <= TOL
    assert a["final"].std() > 1e-3  # the maps are not constant, so the comparison means something
    # flip: the cache holds HD2S's maps of the mirrored video, i.e. what the online teacher (and the authors'
    # wrapper) computes on the flipped clip, not the mirrored maps of the unflipped one
    flipped_batch = batch_of([flipped(it) for it in items])
    fa, fb = online(flipped_batch), cached(flipped_batch)
    for k in ("final", "conspicuity"):
        assert (fa[k] - fb[k]).abs().max() <= TOL
    assert (fb["final"] - b["final"].flip(-1)).abs().max() > 0.01   # mirroring would be another answer here


def test_mimo_targets_have_documented_shapes_and_match_the_cache(cache, hd2s, data_root):
    ds = dataset(data_root, "multi")
    item_late = ds[4]                                       # clip = frames 4..19, targets 4..19
    assert item_late["frame_index"].tolist() == list(range(4, 20))
    online = OnlineTeacher(hd2s, frames=ds.frames)          # decodes the 15 frames before the clip
    cached = CachedTeacher(cache)
    batch = batch_of([ds[0], item_late])
    a, b = online(batch), cached(batch)
    assert a["final"].shape == (2, 16, *SIZE)
    assert a["conspicuity"].shape == (2, 4, 16, *SIZE)
    for k in ("final", "conspicuity"):
        assert (a[k] - b[k]).abs().max() <= TOL
    # flipped batch: both run HD2S on the mirrored windows (the cache stored them), the 15 frames before the
    # late clip included
    flipped_batch = batch_of([flipped(ds[0]), flipped(item_late)])
    fa, fb = online(flipped_batch), cached(flipped_batch)
    for k in ("final", "conspicuity"):
        assert (fa[k] - fb[k]).abs().max() <= TOL
    # without a frame decoder, frames before the clip are padded with its first frame: exact for a clip that
    # starts the video, and the last window (= the clip itself) is exact in any case
    pad = OnlineTeacher(hd2s)(batch)
    assert (pad["final"][0] - b["final"][0]).abs().max() <= TOL
    assert (pad["final"][1, -1] - b["final"][1, -1]).abs().max() <= TOL
    assert (pad["final"][1, 0] - b["final"][1, 0]).abs().max() > 1e-4  # padded ≠ real history


def test_cache_resumes_and_refuses_other_settings(tmp_path, hd2s, data_root, cache):
    out = tmp_path / "c"
    import shutil

    shutil.copytree(cache, out)
    (out / "complete").unlink()
    (out / "001.npy").unlink()
    with pytest.raises(DataError, match="unfinished"):
        CachedTeacher(out)
    build_teacher_cache(hd2s, data_root, out, size=SIZE, progress=False)
    assert np.array_equal(np.load(out / "001.npy"), np.load(cache / "001.npy"))
    with pytest.raises(UserError, match="size"):
        build_teacher_cache(hd2s, data_root, out, size=(64, 64), progress=False)


def test_cached_teacher_errors_name_the_cache(cache, data_root, tmp_path):
    ct = CachedTeacher(cache)
    with pytest.raises(DataError, match="no teacher maps for video '999'"):
        ct({"video": ["999"], "frame_index": torch.tensor([[3]]), "flip": torch.tensor([False])})
    with pytest.raises(DataError, match="32×64"):
        ct({"clip": torch.zeros(1, 3, 16, 64, 64), "video": ["001"], "frame_index": torch.tensor([[3]])})
    with pytest.raises(DataError, match="frame 25"):
        ct({"video": ["001"], "frame_index": torch.tensor([[25]])})
    with pytest.raises(DataError, match="not a teacher cache"):
        CachedTeacher(tmp_path)


def test_cli_builds_a_cache(tmp_path, hd2s, data_root, monkeypatch):
    import tinyhd.fast

    kept = []  # on a CPU the command keeps freed pages, as tinyhd predict does (HD2S re-faulted GBs per batch)
    monkeypatch.setattr(tinyhd.fast, "keep_freed_memory", lambda: kept.append(True) or True)
    ckpt = tmp_path / "hd2s.pt"
    save_hd2s(hd2s, ckpt)
    rc = cli_main([str(ckpt), str(data_root), "--out", str(tmp_path / "c"), "--size", "32x64", "--splits", "val",
                   "--dtype", "float16", "--device", "cpu"])
    assert rc == 0 and kept == [True]
    arr = np.load(tmp_path / "c" / "002.npy")
    assert arr.shape == (17, 5, 32, 64) and arr.dtype == np.float16
    with pytest.raises(UserError, match="no split 'nope'"):
        cli_main([str(ckpt), str(data_root), "--out", str(tmp_path / "d"), "--size", "32x64", "--splits", "nope"])


def test_reduced_teacher_is_built_once(tmp_path, monkeypatch, data_root):
    from tinyhd.synth import build

    monkeypatch.setenv("TINYHD_CACHE", str(tmp_path / "cache"))
    aux = build(tmp_path / "kin", "kinetics", videos=1, frames=17, size=(48, 64), seed=0, progress=False)
    r = ensure_reduced_teacher(data_root, aux, size=SIZE, steps=1, batch_size=1, aux_videos=1, progress=False)
    ckpt, cache = r
    assert ckpt.is_file() and (cache / "target" / "complete").is_file() and (cache / "aux" / "complete").is_file()
    stamp = ckpt.stat().st_mtime_ns
    again = ensure_reduced_teacher(data_root, aux, size=SIZE, steps=1, batch_size=1, aux_videos=1, progress=False)
    assert again == r and ckpt.stat().st_mtime_ns == stamp  # reused, not rebuilt
    # the result is itself a teacher (CachedTeacher over target + aux)
    ds = dataset(data_root, "single")
    out = r(batch_of([ds[1]]))
    assert out["final"].shape == (1, 1, *SIZE) and out["conspicuity"].shape == (1, 4, 1, *SIZE)


def test_train_hd2s_checkpoints_and_resumes(tmp_path, data_root):
    from tinyhd.teacher import load_hd2s, train_hd2s

    torch.manual_seed(0)
    model = HD2S()
    before = model.last_conv.weight.detach().clone()
    losses = train_hd2s(model, data_root, steps=1, size=SIZE, batch_size=1, accumulation=2, out_dir=tmp_path,
                        progress=False)
    assert len(losses) == 1 and np.isfinite(losses[0]) and losses[0] > 0
    assert not torch.equal(model.last_conv.weight, before)  # Adam moved the fusion
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 1 and "featureExtractor.block1.0.conv_s.weight" in state["model"]  # authors' layout
    # resuming continues from step 1 with the saved weights: the first loss is kept, one new step is added
    fresh = HD2S()
    more = train_hd2s(fresh, data_root, steps=2, size=SIZE, batch_size=1, accumulation=2, out_dir=tmp_path,
                      progress=False, val_every=1, val_clips_per_video=1)
    assert len(more) == 2 and more[0] == losses[0]
    best = torch.load(tmp_path / "best.pt", weights_only=True)   # validated at step 2: the best so far
    assert best["format"] == "hd2s" and best["step"] == 2 and np.isfinite(best["val_kl"])
    save_hd2s(fresh, tmp_path / "h.pt")
    assert torch.equal(load_hd2s(tmp_path / "h.pt").last_conv.weight, fresh.last_conv.weight)


def test_pretrained_backbone_offline_message(monkeypatch):
    import torchvision.models.video as tvv

    def offline(*args, **kwargs):
        if kwargs.get("weights") is not None:
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        return tvv.S3D()

    monkeypatch.setattr(tvv, "s3d", offline)
    with pytest.raises(UserError, match="Kinetics-400 S3D weights.*pretrained_backbone=False"):
        HD2S(pretrained_backbone=True)


def test_similarity_matrix_and_prediction_folders(tmp_path, data_root):
    import cv2

    from tinyhd.data import SaliencyClipDataset
    from tinyhd.similarity import agreement_summary, load_prediction_dirs, similarity_matrix

    ds = SaliencyClipDataset(data_root, split="val", size=None)
    gt = ds.ground_truth("002").maps                                     # 17×48×64
    # a "model" that predicted the GT exactly (saved as PNGs, 0001.png = first frame) and one that is its mirror
    for name, maps in (("exact", gt), ("mirror", gt[:, :, ::-1])):
        (tmp_path / name / "002").mkdir(parents=True)
        for t, m in enumerate(maps):
            cv2.imwrite(str(tmp_path / name / "002" / f"{t + 1:04d}.png"), np.round(m * 255).astype(np.uint8))
    preds, g = load_prediction_dirs({"exact": tmp_path / "exact", "mirror": tmp_path / "mirror"}, data_root,
                                    split="val", every=2)
    assert g.shape == (9, 48, 64) and preds["exact"].shape == (9, 48, 64)
    for metric in ("cc", "sim"):
        mat = similarity_matrix(preds, g, metric=metric)
        assert list(mat.index) == ["exact", "mirror", "ground truth"]
        assert np.allclose(mat.to_numpy(), mat.to_numpy().T)
        assert mat.loc["exact", "ground truth"] > 0.99                    # PNG rounding only
        assert mat.loc["mirror", "ground truth"] < mat.loc["exact", "ground truth"] - 0.05
        assert mat.loc["exact", "mirror"] == pytest.approx(mat.loc["mirror", "ground truth"], abs=0.02)
    s = agreement_summary(similarity_matrix(preds, g, "cc"))
    assert s["model_vs_model"] < s["model_vs_gt"]
    with pytest.raises(DataError, match="no predictions for video 001"):     # a split the folders do not cover
        load_prediction_dirs({"exact": tmp_path / "exact"}, data_root, split="train")
    with pytest.raises(UserError, match="same frames"):
        similarity_matrix({"a": g, "b": g[:3]})


def test_recalibrate_batchnorm_resets_running_stats(data_root):
    """BN statistics become the average over the train clips (not the init's 0/1), and the model ends in eval mode."""
    from tinyhd.teacher import HD2S
    from tinyhd.teacher_cache import recalibrate_batchnorm

    torch.manual_seed(0)
    model = HD2S(pretrained_backbone=False)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    momentum = bn.momentum  # S3D's are 0.001: a few hundred steps barely move the running statistics
    recalibrate_batchnorm(model, data_root, SIZE, clips_per_video=1, batch_size=2)
    assert not model.training and bn.momentum == momentum      # momentum restored
    assert bn.running_mean.abs().max() > 0 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert int(bn.num_batches_tracked) >= 1


# -- inputs checked before anything is written, damaged caches named, help -----------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(splits=("trian",)), UserError, "no split 'trian'"),
    (dict(splits=()), UserError, "no split given"),
    (dict(max_videos=0), UserError, "max videos .per split. must be at least 1, not 0"),
    (dict(batch_size=0), UserError, "batch size must be at least 1, not 0"),
    (dict(size=(32, 0)), UserError, "positive multiples of 32"),
    (dict(dataset="kinetics"), UserError, r"manifest\.yaml: .* own manifest, for 'synthetic-dhf1k', .* 'kinetics'"),
], ids=["split", "no-split", "max-videos", "batch-size", "size", "dataset"])
def test_failed_runs_write_nothing(tmp_path, hd2s, data_root, kwargs, error, message):
    out = tmp_path / "c"
    with pytest.raises(error, match=message):
        build_teacher_cache(hd2s, data_root, out, **{"size": SIZE, "progress": False, **kwargs})
    assert not out.exists()  # nothing written: the corrected command can use the same folder


def test_meta_of_a_run_that_stored_no_maps_does_not_block_the_folder(tmp_path, hd2s, data_root):
    # older versions wrote meta.json before checking the splits: a folder holding only that is reused
    out = tmp_path / "c"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"format": "tinyhd-teacher-cache/1", "splits": ["trian"]}))
    build_teacher_cache(hd2s, data_root, out, size=SIZE, splits=("val",), progress=False)
    assert json.loads((out / "meta.json").read_text())["splits"] == ["val"]
    assert CachedTeacher(out).maps("002").shape == (17, 5, *SIZE)
    # once it holds maps, other settings are refused as before
    with pytest.raises(UserError, match="different splits"):
        build_teacher_cache(hd2s, data_root, out, size=SIZE, splits=("test",), progress=False)


def test_missing_root_and_missing_videos_are_reported_up_front(tmp_path, hd2s, data_root):
    import shutil

    with pytest.raises(DataError, match=f"^{tmp_path / 'nosuch'}: dataset folder does not exist$"):
        build_teacher_cache(hd2s, tmp_path / "nosuch", tmp_path / "c", size=SIZE, progress=False)
    assert not (tmp_path / "c").exists()
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    (root / "video" / "002.AVI").unlink()
    with pytest.raises(DataError, match=r"1 of the 2 videos .* are missing \(first: .*002\.AVI\).*--max-videos N"):
        build_teacher_cache(hd2s, root, tmp_path / "c", size=SIZE, splits=("train", "val"), progress=False)
    assert not (tmp_path / "c").exists()  # refused before caching video 001


def test_meta_records_the_manifest_used_and_accepts_names_of_the_same_dataset(tmp_path, hd2s, data_root, cache):
    """(A dataset name that contradicts the root's own manifest is refused: test_failed_runs_write_nothing.)"""
    import shutil

    # meta.json records the manifest actually used
    assert json.loads((cache / "meta.json").read_text())["dataset"] == "synthetic-dhf1k"
    # a name of the same dataset is accepted, and a cache whose meta.json recorded the name given (older versions)
    # still resumes
    out = tmp_path / "c"
    shutil.copytree(cache, out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "dataset": "dhf1k"}))
    stamp = (out / "001.npy").stat().st_mtime_ns
    build_teacher_cache(hd2s, data_root, out, dataset="dhf1k", size=SIZE, progress=False)
    assert (out / "001.npy").stat().st_mtime_ns == stamp  # resumed, nothing recomputed


def _damaged_copy(cache, out, array=None, raw=None, **meta_changes):
    """A copy of ``cache`` at ``out`` whose 001.npy is ``array`` (or the bytes ``raw``) and meta.json changed."""
    import shutil

    shutil.copytree(cache, out)
    if raw is not None:
        (out / "001.npy").write_bytes(raw((cache / "001.npy").read_bytes()))
    elif array is not None:
        np.save(out / "001.npy", array(np.load(cache / "001.npy")))
    meta = json.loads((cache / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, **meta_changes}))
    return out


def _with_bad_values(good):
    maps = decode_maps(good).numpy().astype(np.float16)
    maps[3, 1, 5, 7], maps[9, 0, 0, 0] = 7.0, np.nan
    return maps


@pytest.mark.parametrize("damage, message", [
    (dict(raw=lambda b: b[: len(b) // 2]),
     r"001\.npy: unreadable teacher maps, truncated: its header describes a 20×5×32×64 uint8 array, \d+ bytes, "
     r"but the file has \d+"),
    (dict(raw=lambda b: b""), r"001\.npy: unreadable teacher maps, the file is empty"),
    (dict(array=lambda a: a[:, :, :16, :32]), r"001\.npy: maps are 16×32, expected 32×64"),
    (dict(array=lambda a: a[:, :3]), r"001\.npy: has 3 channels, expected 5 .*20×3×32×64 uint8 array"),
    (dict(array=lambda a: a[:, 0]), r"001\.npy: holds a 20×32×64 uint8 array, expected N×5×32×64 uint8"),
    (dict(array=lambda a: a.astype(np.float16)), r"001\.npy: dtype is float16, expected uint8"),
    (dict(array=_with_bad_values, dtype="float16"),
     r"001\.npy: maps outside \[0, 1\] in frame\(s\) 3 \(min .*, max 7\)"),
    (dict(size="32x64"), r"meta\.json: size is '32x64', expected \[H, W\]"),
], ids=["truncated", "empty", "spatial-size", "channels", "ndim", "dtype", "float16-range", "meta-size"])
def test_cached_teacher_names_damaged_files(tmp_path, cache, damage, message):
    out = _damaged_copy(cache, tmp_path / "c", **damage)
    with pytest.raises(DataError, match=message):
        CachedTeacher(out)({"video": ["001"], "frame_index": torch.tensor([[2, 3]])})


def test_cached_teacher_checks_float16_values_on_the_frames_read(tmp_path, cache):
    teacher = CachedTeacher(_damaged_copy(cache, tmp_path / "c", array=_with_bad_values, dtype="float16"))
    assert teacher({"video": ["001"], "frame_index": torch.tensor([[1, 2]])})["final"].shape == (1, 2, *SIZE)
    with pytest.raises(DataError, match=r"001\.npy: maps outside \[0, 1\] in frame\(s\) 3, 9 .*, NaN\)"):
        teacher({"video": ["001"], "frame_index": torch.tensor([[3, 9]])})


def test_cached_teacher_names_a_corrupt_meta_json(tmp_path, cache):
    out = _damaged_copy(cache, tmp_path / "c")
    (out / "meta.json").write_text('{"format": "tinyhd-teacher-cache/1", "size": [32, ')
    with pytest.raises(DataError, match=rf"^{out / 'meta.json'}: not valid JSON"):
        CachedTeacher(out)


def test_cli_help_documents_every_option_and_size_takes_either_sign(capsys, monkeypatch):
    import re

    from tinyhd.teacher_cache import _parse_size

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    blocks = {b.split()[0]: b for b in re.split(r"\n(?=  -)", text.split("options:")[1]) if b.strip()}
    for option in ("--dataset", "--splits", "--size", "--dtype", "--batch-size", "--device", "--max-videos"):
        assert len(blocks[option].split(None, 2)) == 3, f"{option} has no help text"  # option, metavar, help
    assert "(default: 192x256)" in blocks["--size"] and "each split" in blocks["--max-videos"]
    assert _parse_size("64×96") == _parse_size("64x96") == _parse_size("64X96") == (64, 96)
    with pytest.raises(UserError, match="HxW"):
        _parse_size("64*96")



def test_verify_sources_refuses_a_cache_built_from_another_copy_of_the_dataset(tmp_path, cache, data_root, hd2s):
    """Video ids alone do not tie maps to videos: a cache of another synthetic set (same ids) was used silently."""
    import shutil

    from tinyhd.data import SaliencyClipDataset

    def entries(root):
        return SaliencyClipDataset(root, split="train", size=SIZE).entries

    teacher = CachedTeacher(cache)
    teacher.verify_sources(entries(data_root))                      # built from these videos: fine
    copy = tmp_path / "copy"
    shutil.copytree(data_root, copy)
    teacher.verify_sources(entries(copy))                           # a byte-identical copy elsewhere: fine
    video = next((copy / "video").glob("001.*"))
    video.write_bytes(video.read_bytes() + b"\0")                  # another version of video 001
    with pytest.raises(DataError, match=r"001\.npy: cached from a video with \d+ bytes, 20 frames, but .*001\.\w+ "
                                        r"has \d+ bytes, 20 frames: the cache was built from another copy or version"):
        teacher.verify_sources(entries(copy))
    missing = entries(data_root)[0].__class__(id="999", split="train", source=video)
    with pytest.raises(DataError, match=r"no teacher maps for 1 of the 2 videos .*first: 999"):
        teacher.verify_sources([entries(data_root)[0], missing])
    # a cache from before sources.json: a warning that it cannot be checked, and a rerun records it
    old = tmp_path / "old"
    shutil.copytree(cache, old)
    (old / "sources.json").unlink()
    with pytest.warns(UserWarning, match="without sources.json"):
        CachedTeacher(old).verify_sources(entries(copy))
    stamp = (old / "001.npy").stat().st_mtime_ns
    build_teacher_cache(hd2s, data_root, old, size=SIZE, progress=False)
    assert (old / "001.npy").stat().st_mtime_ns == stamp and (old / "sources.json").is_file()
    CachedTeacher(old).verify_sources(entries(data_root))


def test_a_file_given_as_the_cache_folder_is_named(tmp_path):
    (tmp_path / "hd2s.pt").write_bytes(b"x")
    with pytest.raises(DataError, match=r"hd2s\.pt: a file, not a teacher cache folder"):
        CachedTeacher(tmp_path / "hd2s.pt")


# -- reruns check what each cached map was computed from; other folders are not ours; HD2S_DSL domains ----------

@pytest.fixture(scope="module")
def root4(tmp_path_factory):
    from tinyhd.synth import build

    # 4 short videos -> train 001, 002 (5 frames each: one can stand for the other), val 003, test 004 (4 frames;
    # windows pad with frame 0)
    return build(tmp_path_factory.mktemp("synth4") / "dhf1k", "dhf1k", videos=4, frames=[5, 5, 4, 4],
                 size=(48, 64), seed=1, progress=False)


def _train_entries(root):
    from tinyhd.data import SaliencyClipDataset

    return SaliencyClipDataset(root, split="train", size=SIZE).entries


def _video(root, vid):
    return next((root / "video").glob(f"{vid}.*"))


def test_a_rerun_on_another_copy_of_the_dataset_recomputes_the_maps_whose_video_changed(tmp_path, hd2s, root4,
                                                                                      capsys):
    """A rerun kept ``001.npy`` of the old video and recorded the new video's signature: the cache that
    verify_sources refused was accepted after one rerun, and training distilled on maps of another video."""
    import re
    import shutil

    root, out = shutil.copytree(root4, tmp_path / "data"), tmp_path / "c"
    build_teacher_cache(hd2s, root, out, size=SIZE, progress=False)
    maps002 = np.load(out / "002.npy")
    stamp002 = (out / "002.npy").stat().st_mtime_ns
    shutil.copyfile(_video(root, "002"), _video(root, "001"))      # another copy: id 001 is now another video
    with pytest.raises(DataError, match="another copy or version"):
        CachedTeacher(out).verify_sources(_train_entries(root))
    capsys.readouterr()
    build_teacher_cache(hd2s, root, out, size=SIZE, progress=False)
    new001 = np.load(out / "001.npy")
    assert new001.shape == maps002.shape                               # the maps of the video now called 001
    assert np.abs(new001.astype(int) - maps002.astype(int)).max() <= 1
    err = capsys.readouterr().err
    assert re.search(r"001\.npy: cached from a video with \d+ bytes, 5 frames, but .*001\.AVI has \d+ bytes .*; "
                     r"recomputing it", err), err
    assert "002.npy" not in err and (out / "002.npy").stat().st_mtime_ns == stamp002   # unchanged video: kept
    CachedTeacher(out).verify_sources(_train_entries(root))            # and its record says so
    # a map with fewer frames than recorded is recomputed, not re-recorded
    np.save(out / "002.npy", maps002[:3])
    build_teacher_cache(hd2s, root, out, size=SIZE, progress=False)
    assert "002.npy: holds 3 frames but sources.json recorded 5; recomputing it" in capsys.readouterr().err
    assert np.abs(np.load(out / "002.npy").astype(int) - maps002.astype(int)).max() <= 1
    # a map in the cache without a record is recomputed (nothing says what it was computed from)
    sources = json.loads((out / "sources.json").read_text())
    del sources["002"]
    (out / "sources.json").write_text(json.dumps(sources))
    np.save(out / "002.npy", np.zeros_like(maps002))
    build_teacher_cache(hd2s, root, out, size=SIZE, progress=False)
    assert "002.npy: not recorded in sources.json" in capsys.readouterr().err
    assert np.abs(np.load(out / "002.npy").astype(int) - maps002.astype(int)).max() <= 1
    assert set(json.loads((out / "sources.json").read_text())) == {"001", "002"}


def test_a_rerun_over_fewer_videos_keeps_the_other_records_and_unrecorded_maps_are_refused(tmp_path, hd2s, root4):
    """A rerun with a smaller --max-videos rewrote sources.json with its own videos only; verify_sources then
    skipped the others silently."""
    import os
    import shutil
    import stat

    root, out = shutil.copytree(root4, tmp_path / "data"), tmp_path / "c"
    umask = os.umask(0o022)
    try:
        build_teacher_cache(hd2s, root, out, size=SIZE, progress=False)
    finally:
        os.umask(umask)
    build_teacher_cache(hd2s, root, out, size=SIZE, max_videos=1, progress=False)
    assert set(json.loads((out / "sources.json").read_text())) == {"001", "002"}
    assert (out / "complete").read_text() == "2 videos\n"
    video = _video(root, "002")
    video.write_bytes(video.read_bytes() + b"\0")                      # another version of 002: still checked
    with pytest.raises(DataError, match=r"002\.npy: cached from a video with \d+ bytes, 5 frames, but"):
        CachedTeacher(out).verify_sources(_train_entries(root))
    # maps the cache's sources.json has no record of are named, not skipped
    sources = json.loads((out / "sources.json").read_text())
    del sources["002"]
    (out / "sources.json").write_text(json.dumps(sources))
    with pytest.raises(DataError, match=r"sources\.json: no record of what the maps of 1 of the 2 videos to distil "
                                        r"on were computed from \(first: .*002\.npy, .*--out"):
        CachedTeacher(out).verify_sources(_train_entries(root))
    for name in ("001.npy", "meta.json"):       # written under umask 022: readable by the lab, not mkstemp's 0600
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_a_folder_that_is_not_a_teacher_cache_is_refused_and_left_alone(tmp_path, hd2s, data_root):
    """``--out`` naming a folder of other files: its ``001.npy`` was taken for a damaged map and replaced."""
    import re

    out = tmp_path / "mine"
    out.mkdir()
    (out / "001.npy").write_bytes(b"someone's array")
    (out / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match=rf"^{re.escape(str(out))}: not empty and not a teacher cache \(no meta\.json\)"
                                        r"; it holds 001\.npy, notes\.txt"):
        build_teacher_cache(hd2s, data_root, out, size=SIZE, progress=False)
    (out / "meta.json").write_text(json.dumps({"format": "someone-else/2"}))
    with pytest.raises(UserError, match=r"meta\.json: not a teacher cache's \(format 'someone-else/2'"):
        build_teacher_cache(hd2s, data_root, out, size=SIZE, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["001.npy", "meta.json", "notes.txt"]
    assert (out / "001.npy").read_bytes() == b"someone's array"


@pytest.fixture(scope="module")
def dsl():
    from tinyhd.teacher import HD2S_DSL

    torch.manual_seed(0)
    model = HD2S_DSL()
    with torch.no_grad():  # as for hd2s, and per-domain fusions far apart so the domains' maps differ clearly
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_var.uniform_(0.05, 0.2)
                m.bias.normal_(0.0, 0.5)
        for d in model.domains:
            getattr(model, f"last_block__{d.lower()}")[0].weight.normal_(0.0, 3.0)
    return model.eval()


def test_an_hd2s_dsl_cache_runs_in_the_domain_named(tmp_path, dsl, hd2s, data_root, monkeypatch):
    """``model(clips)`` ran every HD2S_DSL in its first domain, whatever the data."""
    import re

    import tinyhd.fast
    from tinyhd.preprocess import preprocess, student_to_teacher_input
    from tinyhd.video import read_video

    out = tmp_path / "c"
    with pytest.raises(UserError, match="an HD2S_DSL with domains DHF1K, Hollywood, UCFSports; name the one to "
                                        "cache with --domain"):
        build_teacher_cache(dsl, data_root, out, size=SIZE, splits=("val",), progress=False)
    with pytest.raises(UserError, match="unknown domain 'Kinetics'; this HD2S_DSL has DHF1K, Hollywood, UCFSports"):
        build_teacher_cache(dsl, data_root, out, size=SIZE, splits=("val",), domain="Kinetics", progress=False)
    with pytest.raises(UserError, match="HD2S has no domains, but domain 'DHF1K' was given"):
        build_teacher_cache(hd2s, data_root, out, size=SIZE, splits=("val",), domain="DHF1K", progress=False)
    assert not out.exists()
    build_teacher_cache(dsl, data_root, out, size=SIZE, splits=("val",), domain="hollywood", progress=False)
    assert json.loads((out / "meta.json").read_text())["domain"] == "Hollywood"
    # frame 16's maps are the Hollywood model's on frames 1..16, not the first domain's
    x = student_to_teacher_input(preprocess(read_video(_video(data_root, "002")), SIZE))[:, 1:17]  # 3×16×H×W
    with torch.no_grad():
        want = {d: dsl(x.unsqueeze(0), d).saliency[0, 0] for d in ("Hollywood", "DHF1K")}
    got = CachedTeacher(out)({"video": ["002"], "frame_index": torch.tensor([[16]])})["final"][0, 0]
    assert (got - want["Hollywood"]).abs().max() <= TOL
    assert (want["DHF1K"] - want["Hollywood"]).abs().max() > 0.05    # the comparison tells the domains apart
    with pytest.raises(UserError, match=r"different model, domain .*domain='Hollywood'"):
        build_teacher_cache(dsl, data_root, out, size=SIZE, splits=("val",), domain="DHF1K", progress=False)
    # the command line: --domain required for a DSL checkpoint, named in the error with the checkpoint
    monkeypatch.setattr(tinyhd.fast, "keep_freed_memory", lambda: True)
    ckpt = tmp_path / "dsl.pt"
    save_hd2s(dsl, ckpt)
    args = [str(ckpt), str(data_root), "--size", "32x64", "--splits", "val", "--device", "cpu"]
    with pytest.raises(UserError, match=rf"^{re.escape(str(ckpt))}: an HD2S_DSL with domains DHF1K, Hollywood"):
        cli_main(args + ["--out", str(tmp_path / "d")])
    stamp = (out / "002.npy").stat().st_mtime_ns
    assert cli_main(args + ["--out", str(out), "--domain", "HOLLYWOOD"]) == 0
    assert (out / "002.npy").stat().st_mtime_ns == stamp             # same weights and domain: resumed


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask):
    """``atomic_open`` made every file 0600 (mkstemp), ``atomic_directory`` every folder 0700 (mkdtemp)."""
    import os
    import stat

    from tinyhd.paths import atomic_directory, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        atomic_write_text(tmp_path / "new.json", "{}")               # and when replacing a file
        with atomic_directory(tmp_path / "dir") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o777 & ~umask


def test_current_umask_is_read_without_changing_it(monkeypatch, tmp_path):
    import os

    import tinyhd.paths as paths

    old = os.umask(0o027)
    try:
        assert paths.current_umask() == 0o027                          # from /proc/self/status
        monkeypatch.setattr(paths, "_PROC_STATUS", str(tmp_path / "absent"))
        assert paths.current_umask() == 0o027                          # elsewhere: set and restored
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_a_cache_without_mirrored_maps_mirrors_with_a_warning_and_resumes_only_as_such(tmp_path, hd2s, data_root,
                                                                                      cache):
    """--no-flipped: half the work and space; a flipped clip then gets the mirrored maps of the unflipped video
    (warned once per cache), and the cache cannot be resumed as a flipped one (the hint says how)."""
    out = build_teacher_cache(hd2s, data_root, tmp_path / "plain", size=SIZE, flipped=False, max_videos=1,
                              progress=False)
    assert not list(out.glob("*" + FLIP_SUFFIX)) and json.loads((out / "meta.json").read_text())["flipped"] is False
    assert np.array_equal(np.load(out / "001.npy"), np.load(cache / "001.npy"))
    ds = dataset(data_root, "single")
    items = [it for it in (ds[i] for i in range(len(ds))) if it["video"] == "001"][:2]
    plain = CachedTeacher(out)
    with pytest.warns(UserWarning, match="mirrored videos' maps"):
        fb = plain(batch_of([flipped(it) for it in items]))
    b = plain(batch_of(items))
    torch.testing.assert_close(fb["final"], b["final"].flip(-1))
    exact = CachedTeacher(cache)(batch_of([flipped(it) for it in items]))
    assert (exact["final"] - fb["final"]).abs().max() > 0.01
    with pytest.raises(UserError, match="flipped=False.*--no-flipped"):
        build_teacher_cache(hd2s, data_root, out, size=SIZE, max_videos=1, progress=False)


def test_a_missing_mirrored_file_is_recomputed_on_rerun_and_named_when_read(tmp_path, hd2s, data_root, cache):
    import shutil

    out = tmp_path / "c"
    shutil.copytree(cache, out)
    want = np.load(out / ("001" + FLIP_SUFFIX))
    (out / ("001" + FLIP_SUFFIX)).unlink()
    ds = dataset(data_root, "single")
    item = next(it for it in (ds[i] for i in range(len(ds))) if it["video"] == "001")
    with pytest.raises(DataError, match=r"001\.flip\.npy: missing"):
        CachedTeacher(out)(batch_of([flipped(item)]))
    build_teacher_cache(hd2s, data_root, out, size=SIZE, progress=False)
    assert np.array_equal(np.load(out / ("001" + FLIP_SUFFIX)), want)
