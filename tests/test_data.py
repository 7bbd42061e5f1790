"""tinyhd.data: the item contract, determinism, the shared flip, short/odd/grayscale videos, layouts."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tinyhd.data import (MixedClipDataset, SaliencyClipDataset, UnlabeledClipDataset, clip_frame_indices,
                         fixation_cells, list_videos, resize_fixations)
from tinyhd.errors import DataError, UserError
from tinyhd.preprocess import IMAGENET_MEAN, IMAGENET_STD
from tinyhd.synth import generate_video, write_dhf1k, write_kinetics

SIZE = (48, 64)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Frames 58×82 (resized to 48×64); video 002 is short (10 frames < 16); video 003 is grayscale and, like
    DHF1K's test videos, has no annotations."""
    root = tmp_path_factory.mktemp("data") / "dhf1k"
    write_dhf1k(root, videos=3, frames=[20, 10, 18], size=(58, 82), seed=5, progress=False, gray=[3])
    return root


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "kinetics"
    write_kinetics(root, videos=3, frames=[20, 12, 30], size=(40, 52), seed=1, progress=False)
    return root


def _ds(tree, **kw) -> SaliencyClipDataset:
    kw.setdefault("size", SIZE)
    return SaliencyClipDataset(tree, **kw)


def test_item_contract_single_and_multi(tree):
    for output, t_out in (("single", 1), ("multi", 16)):
        ds = _ds(tree, split="train", output=output)
        assert len(ds) == 1 and ds.video_ids == ["001"]  # 3 videos -> 1 train, 1 val, 1 test
        item = ds[0]
        assert set(item) == {"clip", "saliency", "fixation", "has_sal", "video", "frame_index", "flip"}
        assert item["clip"].shape == (3, 16, *SIZE) and item["clip"].dtype == torch.float32
        assert item["saliency"].shape == (t_out, *SIZE) and item["saliency"].dtype == torch.float32
        assert item["fixation"].shape == (t_out, *SIZE) and item["fixation"].dtype == torch.float32
        assert item["has_sal"].dtype == torch.bool and bool(item["has_sal"])
        assert item["video"] == "001"
        assert item["frame_index"].dtype == torch.int64 and item["frame_index"].shape == (t_out,)
        assert item["flip"].dtype == torch.bool and item["flip"].ndim == 0
        sal, fix = item["saliency"], item["fixation"]
        assert 0 <= sal.min() and sal.max() <= 1 and sal.max() > 0.5
        assert set(fix.unique().tolist()) <= {0.0, 1.0} and fix.sum() > 0
        # MISO targets the last frame of the clip; MIMO all 16 consecutive frames
        fi = item["frame_index"]
        assert torch.equal(fi, torch.arange(int(fi[-1]) - t_out + 1, int(fi[-1]) + 1))


def test_targets_match_the_png_files_and_the_decoded_frames(tree):
    ds = _ds(tree, split="train", output="multi", size=None, flip=False)
    item = ds[0]
    gt = ds.ground_truth("001")
    assert gt.maps.shape == (20, 58, 82) and gt.fixations.dtype == bool and gt.path == tree / "video/001.AVI"
    fi = item["frame_index"].numpy()
    assert np.allclose(item["saliency"].numpy(), gt.maps[fi])
    assert np.array_equal(item["fixation"].numpy() > 0, gt.fixations[fi])
    png = cv2.imread(str(tree / f"annotation/0001/maps/{fi[-1] + 1:04d}.png"), cv2.IMREAD_GRAYSCALE)
    assert np.allclose(gt.maps[fi[-1]], png / 255.0)
    frames = ds.frames("001")[fi]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    rgb = (item["clip"] * std + mean) * 255
    assert torch.allclose(rgb, torch.from_numpy(frames).permute(3, 0, 1, 2).float(), atol=1e-3)


def test_random_clips_are_a_pure_function_of_seed_epoch_index(tree):
    a, b = _ds(tree, split="train", seed=7), _ds(tree, split="train", seed=7)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        x, y = a[0], b[0]
        assert torch.equal(x["frame_index"], y["frame_index"]) and bool(x["flip"]) == bool(y["flip"])
        assert torch.equal(x["clip"], y["clip"])
    placements = set()
    for epoch in range(12):
        a.set_epoch(epoch)
        item = a[0]
        placements.add((int(item["frame_index"][-1]), bool(item["flip"])))
    assert len(placements) > 3  # epochs see different clips and flips
    ends = {p[0] for p in placements}
    assert min(ends) >= 15 and max(ends) <= 19  # full 16-frame clips inside a 20-frame video
    assert {p[1] for p in placements} == {True, False}


def test_flip_is_shared_by_clip_maps_and_fixations(tree):
    flipped, plain = _ds(tree, split="train", output="multi"), _ds(tree, split="train", output="multi", flip=False)
    for epoch in range(20):
        flipped.set_epoch(epoch)
        plain.set_epoch(epoch)
        x = flipped[0]
        if bool(x["flip"]):
            break
    else:
        pytest.fail("no flipped clip in 20 epochs")
    y = plain[0]
    assert not bool(y["flip"]) and torch.equal(x["frame_index"], y["frame_index"])
    for key in ("clip", "saliency", "fixation"):
        assert torch.equal(x[key], y[key].flip(-1)), key
        assert not torch.equal(x[key], y[key]), key


def test_short_video_is_padded_with_its_first_frame(tree):
    ds = _ds(tree, split="val", output="multi", sampling="uniform", flip=False)
    assert ds.video_ids == ["002"] and len(ds) == 1  # 10 frames: a single (padded) clip
    item = ds[0]
    assert item["frame_index"].tolist() == [0] * 6 + list(range(10))
    clip, sal = item["clip"], item["saliency"]
    for t in range(1, 7):
        assert torch.equal(clip[:, t], clip[:, 0]) and torch.equal(sal[t], sal[0])
    assert not torch.equal(clip[:, 7], clip[:, 0])
    single = _ds(tree, split="val", output="single", flip=False)
    assert single[0]["frame_index"].tolist() == [9] and single[0]["clip"].shape == (3, 16, *SIZE)
    assert clip_frame_indices(2, 5).tolist() == [0, 0, 0, 1, 2]


def _unnormalise(clip: torch.Tensor) -> torch.Tensor:
    return clip * torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)


def test_grayscale_video_gives_three_channels(tree):
    ds = _ds(tree, split="test", flip=False)
    assert ds.video_ids == ["003"]
    rgb = _unnormalise(ds[0]["clip"])
    # a grey AVI decodes to three nearly equal channels (MJPG's YUV round trip moves them by ~2 levels);
    # exact equality for grey frame images is checked in test_frame_folder_layout_ucf
    assert (rgb[0] - rgb[1]).abs().max() < 0.03 and (rgb[1] - rgb[2]).abs().max() < 0.03
    colour = _unnormalise(_ds(tree, split="train", flip=False)[0]["clip"])
    assert (colour[0] - colour[1]).abs().max() > 0.3


def test_uniform_and_all_sampling(tree):
    ds = _ds(tree, split="train", sampling="uniform", clips_per_video=3, flip=False)
    assert [int(ds[i]["frame_index"][-1]) for i in range(len(ds))] == [15, 17, 19]
    every = _ds(tree, split="train", sampling="all", flip=False)
    assert len(every) == 5 and [int(every[i]["frame_index"][-1]) for i in range(5)] == [15, 16, 17, 18, 19]
    with pytest.raises(IndexError):
        every[5]


def test_fixations_survive_downsizing():
    fix = np.zeros((2, 97, 131), bool)
    rng = np.random.default_rng(0)
    pts = rng.integers(0, [97, 131], (20, 2))
    fix[0, pts[:, 0], pts[:, 1]] = True
    fix[1, 96, 130] = True
    out = resize_fixations(fix, (24, 32))
    assert out.shape == (2, 24, 32) and set(out.unique().tolist()) == {0.0, 1.0}
    cells = set(zip(*(c.tolist() for c in fixation_cells(pts[:, 0], pts[:, 1], (97, 131), (24, 32)))))
    assert int(out[0].sum()) == len(cells)  # no fixation vanishes (coincident ones merge)
    assert out[1, 23, 31] == 1 and int(out[1].sum()) == 1
    up = resize_fixations(fix, (194, 262))
    assert int(up[0].sum()) == int(fix[0].sum())


def test_unlabeled_items_collate_with_labeled_ones(tree, kinetics):
    aux = UnlabeledClipDataset(kinetics, size=SIZE, output="single")
    assert len(aux) == 3 and aux.video_ids[0].count("/") == 1
    item = aux[1]  # a 12-frame video: padded
    assert not bool(item["has_sal"]) and item["clip"].shape == (3, 16, *SIZE)
    assert item["saliency"].shape == (1, *SIZE) and not item["saliency"].any() and not item["fixation"].any()
    labeled = _ds(tree, split="train")
    mixed = MixedClipDataset(labeled, aux, ratio=2.0)
    assert len(mixed) == 3
    mixed.set_epoch(1)
    assert labeled.epoch == 1 and aux.epoch == 1
    batch = next(iter(DataLoader(mixed, batch_size=3, shuffle=False)))
    assert batch["clip"].shape == (3, 3, 16, *SIZE)
    assert batch["has_sal"].tolist() == [True, False, False]
    again = next(iter(DataLoader(mixed, batch_size=3, shuffle=False)))
    assert again["video"] == batch["video"] and torch.equal(again["clip"], batch["clip"])


def test_two_workers_give_the_same_items(tree):
    ds = _ds(tree, split="train", sampling="all", flip=True)
    one = [b["clip"] for b in DataLoader(ds, batch_size=2, num_workers=0)]
    two = [b["clip"] for b in DataLoader(ds, batch_size=2, num_workers=2)]
    assert len(one) == len(two) == 3 and all(torch.equal(a, b) for a, b in zip(one, two))


def test_frame_folder_layout_ucf(tmp_path):
    """UCF-Sports layout (frame folders); a 5-frame video and odd sizes load through dataset="ucf"."""
    for name, n in (("Diving-001", 5), ("Golf-002", 18), ("Kick-003", 16)):
        v = generate_video(0, len(name), n, (37, 53))
        for sub in ("images", "maps", "fixation"):
            (tmp_path / "training" / name / sub).mkdir(parents=True)
        for t in range(n):
            stem = f"{name}_{t + 1:03d}.png"
            image = cv2.cvtColor(v.frames[t], cv2.COLOR_RGB2GRAY) if name == "Kick-003" else v.frames[t][..., ::-1]
            cv2.imwrite(str(tmp_path / "training" / name / "images" / stem), image)
            cv2.imwrite(str(tmp_path / "training" / name / "maps" / stem), v.maps[t])
            cv2.imwrite(str(tmp_path / "training" / name / "fixation" / stem), v.fixations[t].astype(np.uint8) * 255)
    assert list_videos(tmp_path, "train", dataset="ucf") == ["Diving-001", "Golf-002", "Kick-003"]
    ds = SaliencyClipDataset(tmp_path, split="train", dataset="ucf", size=SIZE, output="multi", flip=False)
    short = ds[0]
    assert short["video"] == "Diving-001" and short["frame_index"].tolist() == [0] * 11 + [0, 1, 2, 3, 4]
    assert short["clip"].shape == (3, 16, *SIZE) and short["saliency"].shape == (16, *SIZE)
    gt = ds.ground_truth("Golf-002")
    assert gt.maps.shape == (18, 37, 53)  # odd sizes, native resolution
    assert np.array_equal(ds.frames("Golf-002")[3], generate_video(0, 8, 18, (37, 53)).frames[3])
    gray = _unnormalise(ds[2]["clip"])
    assert torch.allclose(gray[0], gray[1], atol=1e-5) and torch.allclose(gray[1], gray[2], atol=1e-5)
    native = SaliencyClipDataset(tmp_path, split="train", dataset="ucf", size=None, flip=False)
    assert native[1]["clip"].shape == (3, 16, 37, 53) and native[1]["fixation"].shape == (1, 37, 53)


def test_dhf1k_frame_folder_variant_is_detected(tree, tmp_path):
    """annotation/NNNN/images/FFFF.png instead of video/NNN.AVI: same items, layout detected."""
    import shutil

    root = tmp_path / "frames"
    shutil.copytree(tree, root)
    frames = SaliencyClipDataset(tree, split="train", size=None).frames("001")
    (root / "annotation/0001/images").mkdir()
    for t, f in enumerate(frames):
        cv2.imwrite(str(root / f"annotation/0001/images/{t + 1:04d}.png"), f[..., ::-1])
    (root / "manifest.yaml").unlink()  # use the shipped DHF1K manifest
    shutil.rmtree(root / "video")
    ds = SaliencyClipDataset(root, split="train", dataset="dhf1k", size=SIZE, max_videos=1)
    assert ds.variant == "frames" and ds.video_path("001") == root / "annotation/0001/images"
    ref = _ds(tree, split="train")
    assert torch.equal(ds[0]["clip"], ref[0]["clip"]) and torch.equal(ds[0]["saliency"], ref[0]["saliency"])


def test_bad_input_names_the_problem(tree, tmp_path):
    with pytest.raises(DataError, match="absent: dataset folder does not exist"):
        SaliencyClipDataset(tmp_path / "absent")
    with pytest.raises(UserError, match="no split 'bogus'"):
        _ds(tree, split="bogus")
    with pytest.raises(UserError, match="output must be one of"):
        _ds(tree, output="many")
    with pytest.raises(UserError, match="no video"):
        _ds(tree, split="train", videos=["042"])
    empty = tmp_path / "empty"
    empty.mkdir()
    for dataset in (None, "dhf1k"):  # no dataset named and no manifest.yaml: DHF1K's layout
        with pytest.raises(DataError, match="video/001.AVI: missing video .*partial copy.*max_videos"):
            SaliencyClipDataset(empty, dataset=dataset, split="train")


def test_unannotated_split_gives_zero_targets(tree):
    """Like DHF1K's test split (701-1000), the synthetic test split has no annotation folders: its videos load
    with has_sal False."""
    assert not (tree / "annotation/0003").exists() and (tree / "annotation/0002/maps").is_dir()
    ds = _ds(tree, split="test", output="multi")
    assert not ds.annotated
    item = ds[0]
    assert not bool(item["has_sal"]) and item["saliency"].shape == (16, *SIZE) and not item["saliency"].any()
    assert int(item["frame_index"][-1]) <= 17  # 18 frames, counted from the video header
    with pytest.raises(UserError, match="no annotations"):
        ds.ground_truth("003")


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    given = None

if given is not None:
    @settings(max_examples=40, deadline=None)
    @given(h=st.integers(8, 120), w=st.integers(8, 120), oh=st.integers(4, 96), ow=st.integers(4, 96),
           seed=st.integers(0, 2**16))
    def test_resized_fixations_keep_every_fixation(h, w, oh, ow, seed):
        rng = np.random.default_rng(seed)
        fix = rng.random((1, h, w)) < 0.02
        out = resize_fixations(fix, (oh, ow))
        ys, xs = np.nonzero(fix[0])
        assert out.shape == (1, oh, ow)
        # the output pixel whose centre is nearest the source pixel's centre (ties: round half to even)
        cy = [int(np.round((y + 0.5) * oh / h - 0.5)) for y in ys]
        cx = [int(np.round((x + 0.5) * ow / w - 0.5)) for x in xs]
        cy, cx = [min(max(c, 0), oh - 1) for c in cy], [min(max(c, 0), ow - 1) for c in cx]
        assert all(out[0, y, x] == 1 for y, x in zip(cy, cx))
        assert int(out.sum()) == len(set(zip(cy, cx)))


def test_video_shorter_than_its_maps_warns_and_clamps(tree, tmp_path):
    import shutil

    root = tmp_path / "extra"
    shutil.copytree(tree, root)
    for sub in ("maps", "fixation"):  # a 21st map for a 20-frame video
        shutil.copy(root / f"annotation/0001/{sub}/0020.png", root / f"annotation/0001/{sub}/0021.png")
    ds = _ds(root, split="train", sampling="all", flip=False)
    assert len(ds) == 6
    with pytest.warns(UserWarning, match=r"001\.AVI: 20 frames decode but .*0001/maps has 21 maps"):
        last = ds[5]
    assert int(last["frame_index"][-1]) == 19


def test_fixations_move_to_the_pixel_nearest_their_centre_as_the_evaluator_does():
    """4 rows -> 3: source row 1 (centre 1.5 -> 1.125 in the output) belongs to output row 1, not row 0 as
    flooring the top-left corner (1·3 // 4) would give; the rule is tinyhd.metrics' (used by evaluate)."""
    from tinyhd.metrics import other_fixation_map

    fix = np.zeros((1, 4, 4), bool)
    fix[0, 1, 1] = True
    out = resize_fixations(fix, (3, 3))
    assert out[0, 1, 1] == 1 and int(out.sum()) == 1
    rng = np.random.default_rng(3)
    for (h, w), size in (((97, 131), (24, 32)), ((36, 64), (48, 80)), ((45, 60), (30, 40))):
        f = rng.random((2, h, w)) < 0.03
        out = resize_fixations(f, size)
        for t in range(2):
            assert np.array_equal(out[t].numpy() > 0, other_fixation_map([f[t]], size)), (h, w, size)


def _copy(tree: Path, tmp_path: Path, name: str) -> Path:
    import shutil

    root = tmp_path / name
    shutil.copytree(tree, root)
    return root


def test_a_map_or_fixation_of_another_size_is_named(tree, tmp_path):
    """Every map/fixation must have its video's frame size: the loaders name the file (no bare np.stack error)."""
    root = _copy(tree, tmp_path, "sizes")
    cv2.imwrite(str(root / "annotation/0001/maps/0018.png"), np.zeros((50, 60), np.uint8))
    ds = _ds(root, split="train", output="multi", sampling="all", flip=False)
    with pytest.raises(DataError, match=r"0001/maps/0018\.png: map is 50×60 but the frames of .*001\.AVI are 58×82"):
        ds.ground_truth("001")
    assert int(ds[0]["frame_index"][-1]) == 15  # clips without frame 18 (index 17) still load
    with pytest.raises(DataError, match=r"0001/maps/0018\.png: map is 50×60"):
        ds[2]
    cv2.imwrite(str(root / "annotation/0002/fixation/0003.png"), np.zeros((58, 80), np.uint8))
    val = _ds(root, split="val", output="multi", sampling="uniform", flip=False)
    with pytest.raises(DataError, match=r"0002/fixation/0003\.png: fixation map is 58×80"):
        val.ground_truth("002")
    with pytest.raises(DataError, match=r"0002/fixation/0003\.png"):
        val[0]


@pytest.mark.parametrize("cache_videos", [4, 0])
def test_every_clip_of_a_video_shorter_than_its_maps_loads(tree, tmp_path, cache_videos):
    """After the first clip falls back to the frames that decode, later clips of that video (placed with the
    map count, as uniform/all sampling do) end there too instead of failing with a false message."""
    import shutil
    import warnings

    root = _copy(tree, tmp_path, "extra3")
    for sub in ("maps", "fixation"):  # 23 maps for a 20-frame video
        for k in (21, 22, 23):
            shutil.copy(root / f"annotation/0001/{sub}/0020.png", root / f"annotation/0001/{sub}/{k:04d}.png")
    ds = _ds(root, split="train", sampling="all", flip=False, cache_videos=cache_videos)
    assert len(ds) == 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ends = [int(ds[i]["frame_index"][-1]) for i in range(len(ds))]
    assert ends == [15, 16, 17, 18, 19, 19, 19, 19]
    messages = [str(w.message) for w in caught if "frames decode" in str(w.message)]
    assert len(messages) == 1 and "20 frames decode" in messages[0] and "has 23 maps" in messages[0]
    uni = _ds(root, split="train", sampling="uniform", clips_per_video=4, output="multi", flip=False,
              cache_videos=cache_videos)
    with pytest.warns(UserWarning, match="using the first 20"):
        items = [uni[i] for i in range(len(uni))]
    assert all(int(it["frame_index"].max()) <= 19 for it in items) and len(items) == 4


def test_a_named_dataset_must_match_the_folders_own_manifest(tree, kinetics):
    """ROOT/manifest.yaml describes ROOT: naming another dataset is refused (not silently overridden); naming
    the same dataset, or none, uses it."""
    with pytest.raises(UserError, match=r"manifest\.yaml: .*own manifest, for 'synthetic-dhf1k', .*'kinetics'"):
        SaliencyClipDataset(tree, dataset="kinetics")
    with pytest.raises(UserError, match=r"own manifest, for 'synthetic-dhf1k', .*'ucf'"):
        list_videos(tree, "train", dataset="ucf")
    with pytest.raises(UserError, match=r"own manifest, for 'synthetic-kinetics400', .*'dhf1k'"):
        UnlabeledClipDataset(kinetics, dataset="dhf1k")
    for dataset in (None, "dhf1k", "DHF1K"):
        assert _ds(tree, split="train", dataset=dataset).manifest.name == "synthetic-dhf1k"
    assert list_videos(tree, "val") == list_videos(tree, "val", dataset="dhf1k") == ["002"]
    assert UnlabeledClipDataset(kinetics, dataset="kinetics").manifest.name == "synthetic-kinetics400"


def test_a_gap_in_the_frame_numbering_is_refused(tree, tmp_path):
    """maps/ and fixation/ missing 0005.png but holding an extra 0021.png: same count, same names in both, yet
    every map from frame 5 on would pair with the wrong frame. The manifest's frame_names catches it."""
    root = _copy(tree, tmp_path, "gap")
    for sub in ("maps", "fixation"):
        folder = root / "annotation/0001" / sub
        (folder / "0005.png").rename(folder / "0021.png")
    with pytest.raises(DataError, match=r"0001/maps: 20 files not named 0001\.png…0020\.png without gaps .*"
                                        r"missing 0005\.png; unexpected 0021\.png"):
        _ds(root, split="train")
    _ds(root, split="val")  # other videos are fine


def test_val_resize_then_centre_crop_equals_doing_it_by_hand(tree):
    """The authors' validation transform: resize to 200×355 (here scaled), then centre-crop to the clip size;
    clip, maps and fixations alike, fixations landing in the pixel nearest their centre, shifted by the crop."""
    from torchvision.transforms.functional import center_crop

    from tinyhd.data import VAL_RESIZE, resize_maps, val_resize_for
    from tinyhd.preprocess import preprocess

    assert VAL_RESIZE == (200, 355) and val_resize_for((192, 256)) == (200, 355)
    assert val_resize_for((96, 128)) == (100, 178) and val_resize_for(SIZE) == (50, 89)
    big = (53, 91)  # odd margins (5, 27): the crop's offsets round as torchvision's center_crop does
    ds = _ds(tree, split="train", output="multi", sampling="uniform", clips_per_video=2, flip=False,
             val_resize=big)
    plain = _ds(tree, split="train", output="multi", sampling="uniform", clips_per_video=2, flip=False)
    assert "val_resize=(53, 91)" in repr(ds)
    gt = ds.ground_truth("001")  # 20 frames of 58×82
    for k in range(len(ds)):
        item = ds[k]
        fi = item["frame_index"].numpy()
        assert item["clip"].shape == (3, 16, *SIZE) and item["saliency"].shape == (16, *SIZE)
        assert torch.equal(item["clip"], center_crop(preprocess(ds.frames("001")[fi], big), list(SIZE)))
        assert not torch.allclose(item["clip"], plain[k]["clip"])  # not the plain resize to 48×64
        want = center_crop(resize_maps(torch.from_numpy(gt.maps[fi]), big), list(SIZE))
        assert torch.allclose(item["saliency"], want, atol=1e-6)
        # fixations: source pixel (r, c) -> nearest pixel of its centre in 53×91, minus the crop's (2, 14)
        t, r, c = np.nonzero(gt.fixations[fi])
        y = np.clip(np.round((r + 0.5) * big[0] / 58 - 0.5), 0, big[0] - 1).astype(int) - 2
        x = np.clip(np.round((c + 0.5) * big[1] / 82 - 0.5), 0, big[1] - 1).astype(int) - 14
        inside = (y >= 0) & (y < SIZE[0]) & (x >= 0) & (x < SIZE[1])
        expected = {(int(a), int(b), int(d)) for a, b, d in zip(t[inside], y[inside], x[inside])}
        got = {tuple(map(int, p)) for p in torch.nonzero(item["fixation"]).tolist()}
        assert got == expected and len(got) > 0
    flipped = _ds(tree, split="train", output="multi", sampling="uniform", clips_per_video=2, flip=True, seed=3,
                  val_resize=big)
    k = next(i for i in range(len(flipped)) if bool(flipped[i]["flip"]))  # a flip mirrors the cropped window
    assert torch.equal(flipped[k]["clip"], ds[k]["clip"].flip(-1))
    assert torch.equal(flipped[k]["fixation"], ds[k]["fixation"].flip(-1))
    with pytest.raises(UserError, match=r"val_resize \(40, 91\) must be \(H, W\) at least as large as size"):
        _ds(tree, split="train", val_resize=(40, 91))
    with pytest.raises(UserError, match="at least as large as size None"):
        _ds(tree, split="train", size=None, val_resize=big)
