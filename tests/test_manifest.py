"""Manifests and ``tinyhd verify-data``: a good synthetic tree passes, every kind of breakage is listed."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tinyhd import cli
from tinyhd.errors import DataError, UserError
from tinyhd.manifest import load_manifest, parse_manifest, verify
from tinyhd.synth import write_dhf1k


@pytest.fixture(scope="module")
def good_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good") / "ds"
    write_dhf1k(root, videos=4, frames=[12, 9, 10, 8], size=(32, 40), seed=3, progress=False)
    return root


@pytest.fixture()
def broken_copy(good_tree, tmp_path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(good_tree, root)
    return root


def _run(*argv: str, capsys) -> tuple[int, list[str], str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err


def test_shipped_manifests_state_the_papers_splits():
    dhf = load_manifest("dhf1k")
    assert {k: (s.range, s.count, s.annotated) for k, s in dhf.splits.items()} == {
        "train": ((1, 600), 600, True), "val": ((601, 700), 100, True), "test": ((701, 1000), 300, False)}
    entry = dhf.videos("/data", "val")[0]
    assert entry.id == "601" and entry.source == Path("/data/video/601.AVI")
    assert entry.maps == Path("/data/annotation/0601/maps") and entry.fixations == Path("/data/annotation/0601/fixation")
    assert dhf.videos("/data", "test")[0].maps is None  # no annotations for 701-1000
    assert dhf.layout_for("frames")["source"] == "annotation/{n:04d}/images"
    ucf = load_manifest("ucf")
    assert (ucf.splits["train"].count, ucf.splits["test"].count) == (103, 47)
    holly = load_manifest("hollywood2")
    # TinyHD 823/884 videos, HD2S paper 3,100/3,559 clips, HD2S repository 1,714 + 190 training clips: uncertain
    assert sorted(holly.splits["train"].count) == [823, 1904, 3100]
    assert sorted(holly.splits["test"].count) == [884, 3559]
    assert holly.splits["train"].count_uncertain and holly.splits["test"].count_uncertain
    assert not ucf.splits["train"].count_uncertain
    assert dhf.frame_names == "{frame:04d}.png" and ucf.frame_names is None
    kin = load_manifest("kinetics")
    assert kin.kind == "unlabeled" and kin.splits["train"].classes == 400 and kin.splits["train"].dir == "train_256"


def test_bad_manifests_name_the_file(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("schema_version: 99\nname: x\n")
    with pytest.raises(UserError, match=r"m\.yaml: schema_version is 99"):
        load_manifest(p)
    p.write_text("schema_version: 1\nname: x\nkind: labeled\nids: range\nlayout: {source: a}\nsplits: {}\n")
    with pytest.raises(UserError, match="needs 'maps' and 'fixations'"):
        load_manifest(p)
    p.write_text("a: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_manifest(p)
    with pytest.raises(UserError, match="no such manifest"):
        load_manifest(tmp_path / "nope.yaml")
    raw = yaml.safe_load((Path(load_manifest("dhf1k").path)).read_text())
    raw["splits"]["train"]["count"] = 599
    with pytest.raises(UserError, match="count 599 disagrees with range"):
        parse_manifest(raw, Path("dhf1k.yaml"))


def test_verify_good_tree_passes(good_tree, capsys):
    report = verify(load_manifest(good_tree / "manifest.yaml"), good_tree)
    assert report.ok, [str(p) for p in report.problems]
    assert report.checked == {"train": 2, "val": 1, "test": 1}
    # by manifest path, and by dataset folder (its manifest.yaml is found)
    for manifest in (str(good_tree / "manifest.yaml"), str(good_tree)):
        code, lines, _ = _run("verify-data", manifest, str(good_tree), capsys=capsys)
        assert code == 0 and lines[-1].startswith("OK:") and "no problems" in lines[-1]
    code, lines, _ = _run("verify-data", str(good_tree), capsys=capsys)  # ROOT defaults to the dataset folder
    assert code == 0 and lines[-1].startswith("OK:")
    code, _, err = _run("verify-data", "dhf1k", capsys=capsys)
    assert code == 2 and "give ROOT" in err


def test_verify_lists_every_problem(broken_copy, capsys):
    root = broken_copy
    (root / "annotation/0001/maps/0005.png").unlink()                     # missing map
    data = (root / "video/002.AVI").read_bytes()
    (root / "video/002.AVI").write_bytes(data[: len(data) // 3])          # truncated video
    (root / "annotation/0003").rename(root / "annotation/0003_renamed")   # renamed folder
    (root / "video/099.AVI").write_bytes(b"")                              # extra item
    (root / "annotation/0002/fixation/0002.png").write_bytes(b"garbage")  # unreadable PNG
    code, lines, _ = _run("verify-data", str(root / "manifest.yaml"), str(root), capsys=capsys)
    text = "\n".join(lines)
    assert code == 1
    assert lines[-1].startswith("FAILED:") and "problem(s)" in lines[-1]
    assert f"{root}/video/001.AVI: 12 frames but 11 maps in {root}/annotation/0001/maps" in text
    assert "1 fixation(s) without map, e.g. " + f"{root}/annotation/0001/fixation/0005.png" in text
    truncated = [line for line in lines if line.startswith(f"{root}/video/002.AVI: ")]
    assert truncated and any(w in truncated[0] for w in ("cannot open", "no frame decodes", "frame table says 9"))
    assert f"{root}/annotation/0003/maps: missing map folder" in text
    assert f"{root}/annotation/0003_renamed: unexpected item" in text
    assert f"{root}/video/099.AVI: unexpected item" in text
    assert f"{root}/annotation/0002/fixation/0002.png: unreadable fixation image" in text
    assert f"{root}/annotation/0001/maps: map 11 files not named 0001.png…0011.png without gaps" in text
    # the problems are the lines before the summary, one per line, each "path: problem"
    assert all(": " in line and line.startswith(str(root)) for line in lines[:-1])


def test_verify_missing_root_is_one_line(good_tree, tmp_path, capsys):
    code, lines, err = _run("verify-data", str(good_tree / "manifest.yaml"), str(tmp_path / "absent"), capsys=capsys)
    assert code == 2 and lines == []
    assert err.strip().count("\n") == 0 and "absent: dataset folder does not exist" in err
    with pytest.raises(DataError, match="does not exist"):
        verify(load_manifest("dhf1k"), tmp_path / "absent")
    code, _, err = _run("verify-data", "no-such-dataset", str(good_tree), capsys=capsys)
    assert code == 2 and "no such manifest" in err


def test_verify_real_manifest_on_a_partial_copy(good_tree, tmp_path):
    """The DHF1K manifest on a copy holding only a few videos: every absent video is listed by path."""
    report = verify(load_manifest("dhf1k"), good_tree, splits=["val"], deep=False)
    missing = [p for p in report.problems if p.message == "missing video"]
    assert len(missing) == 100 and missing[0].path == good_tree / "video/601.AVI"
    # videos 001-004 exist on disk but not in the val split, so they are reported as not listed by "val"
    assert report.checked == {"val": 100}


def test_folder_layout_counts(tmp_path):
    """UCF-Sports layout: split folders with one sub-folder per video; wrong counts are reported."""
    for split, n in (("training", 2), ("testing", 1)):
        for i in range(n):
            for sub in ("images", "maps", "fixation"):
                (tmp_path / split / f"Run-{i}" / sub).mkdir(parents=True)
    report = verify(load_manifest("ucf"), tmp_path, deep=False)
    text = "\n".join(map(str, report.problems))
    assert "split 'train' has 2 videos, the manifest expects 103 (found: Run-0, Run-1)" in text
    assert "split 'test' has 1 videos, the manifest expects 47 (found: Run-0)" in text
    assert f"{tmp_path}/training/Run-0/images: frame folder has no images" in text


def test_good_tree_test_split_is_unannotated_like_dhf1ks(good_tree):
    m = load_manifest(good_tree)
    assert not m.splits["test"].annotated and m.videos(good_tree, "test")[0].maps is None
    assert not (good_tree / "annotation/0004").exists()


def test_verify_checks_the_size_of_every_map_and_fixation(broken_copy, capsys):
    """Not only the first map: any map or fixation of another size than the video's frames is named."""
    import cv2
    import numpy as np

    root = broken_copy
    cv2.imwrite(str(root / "annotation/0001/maps/0007.png"), np.zeros((30, 36), np.uint8))
    cv2.imwrite(str(root / "annotation/0002/fixation/0004.png"), np.zeros((32, 48), np.uint8))
    cv2.imwrite(str(root / "annotation/0002/fixation/0005.png"), np.zeros((32, 48), np.uint8))
    code, lines, _ = _run("verify-data", str(root), capsys=capsys)
    assert code == 1 and lines[-1].startswith("FAILED:") and "2 problem(s)" in lines[-1]
    assert f"{root}/annotation/0001/maps/0007.png: map is 30×36 but the video frames are 32×40" in lines
    assert any(line.startswith(f"{root}/annotation/0002/fixation/0004.png: fixation is 32×48 but the video frames "
                               f"are 32×40 (2 of the 9 fixation images") for line in lines)
    quick = verify(load_manifest(root), root, deep=False)  # --quick: the first image of each folder only
    assert quick.ok
    cv2.imwrite(str(root / "annotation/0003/maps/0001.png"), np.zeros((30, 36), np.uint8))
    assert [str(p) for p in verify(load_manifest(root), root, deep=False).problems] == [
        f"{root}/annotation/0003/maps/0001.png: map is 30×36 but the video frames are 32×40"]


def test_verify_finds_a_gap_in_the_frame_numbering(broken_copy):
    """0005.png missing and 0013.png extra in maps/ and fixation/: the names agree and the count is right, but
    every later map would pair with the wrong frame."""
    root = broken_copy
    for sub in ("maps", "fixation"):
        folder = root / "annotation/0001" / sub
        (folder / "0005.png").rename(folder / "0013.png")
    text = [str(p) for p in verify(load_manifest(root), root).problems]
    want = ("{} 12 files not named 0001.png…0012.png without gaps (frame_names '{{frame:04d}}.png'): "
            "missing 0005.png; unexpected 0013.png")
    assert text == [f"{root}/annotation/0001/maps: " + want.format("map"),
                    f"{root}/annotation/0001/fixation: " + want.format("fixation")]


def test_verify_uses_the_folders_own_manifest_like_the_loaders(good_tree, capsys):
    """A shipped manifest named for a ROOT with its own manifest.yaml: the same dataset -> ROOT's manifest, said
    on the first line; another dataset -> one line naming both, not a line per 'missing' video."""
    code, lines, _ = _run("verify-data", "dhf1k", str(good_tree), capsys=capsys)
    assert code == 0 and lines[-1].startswith("OK: synthetic-dhf1k") and len(lines) == 2
    assert lines[0].startswith(f"{good_tree}/manifest.yaml: checking the folder's own manifest ('synthetic-dhf1k')")
    code, lines, _ = _run("verify-data", "kinetics", str(good_tree), capsys=capsys)
    assert code == 1 and len(lines) == 2 and lines[-1].startswith("FAILED:")
    assert lines[0].startswith(f"{good_tree}/manifest.yaml: the dataset folder has its own manifest, for "
                               "'synthetic-dhf1k', not 'kinetics400'")
    code, lines, _ = _run("verify-data", str(good_tree / "manifest.yaml"), str(good_tree), capsys=capsys)
    assert code == 0 and len(lines) == 1  # its own manifest named: no note


def test_verify_names_missing_and_extra_videos_of_a_folder_layout(tmp_path, capsys):
    """The synthetic UCF-Sports set lists its ids, so a deleted and an added video are each named."""
    from tinyhd.synth import write_folder_layout

    root = write_folder_layout(tmp_path / "ucf", "ucf", videos=5, frames=4, size=(16, 24), progress=False)
    m = load_manifest(root)
    assert m.splits["train"].videos == ["Diving-Side-001", "Golf-Swing-Front-002", "Kicking-Front-003"]
    assert m.frame_names == "{frame:04d}.png" and verify(m, root).ok
    shutil.rmtree(root / "training/Golf-Swing-Front-002")
    shutil.copytree(root / "testing/Lifting-004", root / "testing/Extra-099")
    code, lines, _ = _run("verify-data", str(root), capsys=capsys)
    assert code == 1
    assert f"{root}/training/Golf-Swing-Front-002: missing video (split 'train' of the manifest lists it)" in lines
    assert f"{root}/testing/Extra-099: unexpected video 'Extra-099' (split 'test' of the manifest does not list it)" \
        in lines
    for split in ("training", "testing"):  # no split folders at all: the summary still reads well
        shutil.rmtree(root / split)
    code, lines, _ = _run("verify-data", str(root), capsys=capsys)
    assert code == 1 and lines[-1].endswith("2 problem(s); no videos checked")
    assert f"{root}/training: split folder for 'train' does not exist" in lines


def test_an_uncertain_count_is_a_warning_only_between_the_sources_counts(tmp_path, capsys):
    """Hollywood2's counts differ between the sources: a count between them passes with a warning naming the
    alternatives; fewer videos than the smallest (a partial copy) or more than the largest is a failure."""
    from tinyhd.synth import write_folder_layout

    root = write_folder_layout(tmp_path / "h2", "hollywood2", videos=3, frames=4, size=(16, 24), progress=False)
    (root / "manifest.yaml").rename(root / "synthetic.yaml")  # check it as the real Hollywood2
    report = verify(load_manifest("hollywood2"), root)  # 2 and 1 videos: below 823 and 884
    assert not report.ok and not report.warnings
    assert [p.message.split(" (found")[0] for p in report.problems] == [
        "split 'train' has 2 videos, the manifest expects 823 or 1904 or 3100",
        "split 'test' has 1 videos, the manifest expects 884 or 3559"]
    assert report.problems[0].message.endswith("but 2 is below the smallest")
    assert "actioncliptrain00001, actioncliptrain00002" in report.problems[0].message
    code, lines, _ = _run("verify-data", "hollywood2", str(root), capsys=capsys)
    assert code == 1 and lines[0].startswith(f"{root}/training: split 'train' has 2 videos")
    assert lines[-1].endswith("2 problem(s); train 2, test 1 videos checked")
    # the same copy against candidate counts it lies between (train) / matches (test) / exceeds
    raw = yaml.safe_load(Path(load_manifest("hollywood2").path).read_text())
    raw["splits"]["train"]["count"], raw["splits"]["test"]["count"] = [1, 3], [1, 5]
    (root / "between.yaml").write_text(yaml.safe_dump(raw))
    report = verify(load_manifest(root / "between.yaml"), root)
    assert report.ok and [p.message.split(" (found")[0] for p in report.warnings] == [
        "split 'train' has 2 videos, the manifest expects 1 or 3"]  # test: 1 video matches a count, no warning
    code, lines, _ = _run("verify-data", str(root / "between.yaml"), str(root), capsys=capsys)
    assert code == 0 and lines[0].startswith(f"{root}/training: warning: split 'train' has 2 videos")
    assert lines[-1].endswith("no problems, 1 warning(s)")
    raw["splits"]["train"]["count"] = [0, 1]  # 2 videos: more than the largest count
    report = verify(parse_manifest(raw, root / "above.yaml"), root)
    assert not report.ok and report.problems[0].message.endswith("but 2 is above the largest")
    report = verify(load_manifest("ucf"), root)  # UCF-Sports' counts are certain: a failure
    assert not report.ok and not report.warnings


def test_manifest_id_lists_and_frame_names_are_validated(tmp_path):
    raw = yaml.safe_load((Path(load_manifest("ucf").path)).read_text())
    raw["splits"]["test"]["videos"] = ["a", "b"]
    with pytest.raises(UserError, match="'videos' lists 2 ids but count is 47"):
        parse_manifest(raw, Path("ucf.yaml"))
    raw["splits"]["test"]["videos"] = "a"
    with pytest.raises(UserError, match="'videos' must be a list of video ids"):
        parse_manifest(raw, Path("ucf.yaml"))
    del raw["splits"]["test"]["videos"]
    raw["frame_names"] = "frame.png"
    with pytest.raises(UserError, match="'frame_names' must be a template using {frame}"):
        parse_manifest(raw, Path("ucf.yaml"))


def test_a_short_name_means_the_packaged_manifest_whatever_the_current_folder_holds(tmp_path, monkeypatch, capsys):
    """``./dhf1k`` (a dataset folder) or ``./ucf`` (a synthetic set with its own manifest) must not shadow the
    packaged manifests of those names; a path (``./ucf``, a ``Path``) still means the folder."""
    from tinyhd.paths import manifests_dir
    from tinyhd.synth import write_folder_layout

    (tmp_path / "dhf1k").mkdir()
    write_folder_layout(tmp_path / "ucf", "ucf", videos=2, frames=3, size=(16, 24), progress=False)
    monkeypatch.chdir(tmp_path)
    for name, file in (("dhf1k", "dhf1k"), ("DHF1K", "dhf1k"), ("ucf", "ucf_sports"), ("UCF", "ucf_sports")):
        assert load_manifest(name).path == manifests_dir() / f"{file}.yaml", name
    assert load_manifest("./ucf").name.startswith("synthetic") and load_manifest(Path("ucf")).name.startswith("synthetic")
    with pytest.raises(UserError, match="no such manifest"):
        load_manifest("./dhf1k")  # the folder holds no manifest.yaml
    code, lines, _ = _run("verify-data", "dhf1k", "dhf1k", "--split", "val", "--quick", capsys=capsys)
    assert code == 1 and lines[0] == "dhf1k/video/601.AVI: missing video"  # checked against the real DHF1K
    assert lines[-1].startswith("FAILED: dhf1k (layout default) at dhf1k: ")
    code, _, _ = _run("verify-data", "dhf1k", str(tmp_path / "dhf1k"), "--split", "val", "--quick", capsys=capsys)
    assert code == 1


def test_kinetics_without_val_256_is_complete_and_val_is_checked_when_asked_for(tmp_path, capsys):
    """TinyHD reads train_256 only: a copy without val_256 passes with a note; ``--split val`` requires it."""
    from tinyhd.synth import write_kinetics

    root = write_kinetics(tmp_path / "kin", videos=4, frames=3, size=(16, 24), progress=False)
    (root / "manifest.yaml").unlink()  # check it as the real Kinetics-400 (400 classes: 4 here)
    kin = load_manifest("kinetics")
    assert kin.splits["val"].optional and not kin.splits["train"].optional
    raw = yaml.safe_load(Path(kin.path).read_text())
    raw["splits"]["train"]["classes"] = raw["splits"]["val"]["classes"] = 4
    (tmp_path / "kin4.yaml").write_text(yaml.safe_dump(raw))
    code, lines, _ = _run("verify-data", str(tmp_path / "kin4.yaml"), str(root), "--quick", capsys=capsys)
    assert code == 0, lines
    assert lines == [f"{root}/val_256: note: optional split 'val' is not in this copy; skipped (name it with "
                     f"--split val to require it)",
                     f"OK: kinetics400 (layout default) at {root}: train 4 videos checked, no problems"]
    code, lines, _ = _run("verify-data", str(tmp_path / "kin4.yaml"), str(root), "--split", "val", capsys=capsys)
    assert code == 1 and lines[0] == f"{root}/val_256: split folder for 'val' does not exist"
    (root / "val_256").mkdir()  # present but empty: checked like any split
    report = verify(load_manifest(tmp_path / "kin4.yaml"), root, deep=False)
    assert not report.ok and not report.notes
    assert str(report.problems[0]) == f"{root}/val_256: split 'val' has 0 classes, the manifest expects 4"
    raw["ids"], raw["splits"] = "range", {"val": {"range": [1, 2], "optional": True}}
    with pytest.raises(UserError, match="'optional' applies to ids folder or glob only"):
        parse_manifest(raw, Path("k.yaml"))
