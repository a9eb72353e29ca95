"""ADNI folder reader: layouts, labels, subject split, image conversions, cache, bad inputs."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import brainvq.data.adni as adni
from brainvq.data import cap_by_subject, load_adni, scan_split, split_by_subject, subject_of
from brainvq.data.images import fit
from brainvq.errors import DataError


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_layout_labels_and_subjects(tiny_adni):
    samples = scan_split(tiny_adni, "train")
    assert {s.label for s in samples} == {0, 1}
    assert all(("/AD/" in s.path) == (s.label == 1) for s in samples)
    assert [s.path for s in samples] == sorted(s.path for s in samples)
    assert samples == scan_split(tiny_adni, "train")  # deterministic order
    assert len({s.subject for s in samples}) == 6 and samples[0].subject == "trainAD000"
    assert subject_of("x/123_S_4567_042.png") == "123_S_4567" and subject_of("a/b.png") == "b"


def test_flat_layout_is_unlabelled(tmp_path):
    for split in ("train", "test"):
        for s in range(2):
            for k in range(3):
                _write(tmp_path / split / f"s{s}_{k}.png", np.full((16, 16), 100, np.uint8))
    splits = load_adni(tmp_path, image_size=(16, 16), val_fraction=0.5, seed=0)
    assert (splits.train.labels == -1).all() and (splits.test.labels == -1).all()
    assert len(splits.train) == len(splits.val) == 3 and set(splits.train.subjects).isdisjoint(splits.val.subjects)


def test_subject_split_has_no_leakage_and_is_deterministic(tiny_adni):
    a = load_adni(tiny_adni, image_size=(32, 32), val_fraction=0.34, seed=1)
    b = load_adni(tiny_adni, image_size=(32, 32), val_fraction=0.34, seed=1)
    assert set(a.train.subjects).isdisjoint(a.val.subjects) and len(a.val) > 0
    assert a.val.paths == b.val.paths and a.train.paths == b.train.paths
    assert set(a.val.labels.tolist()) == {0, 1}  # stratified: both classes held out
    assert len(a.train) + len(a.val) == 24

    subjects = [f"s{i // 5}" for i in range(200)]  # 40 subjects, 5 slices each
    seeds = {tuple(split_by_subject(subjects, 0.25, seed)[1]) for seed in range(4)}
    assert len(seeds) > 1  # the seed matters
    tr, va = split_by_subject(subjects, 0.25, 0)
    assert len(va) == 50 and {subjects[i] for i in tr}.isdisjoint({subjects[i] for i in va})
    tr, va = split_by_subject(["a", "a", "b", "b", "c", "c"], 0.0, 0)
    assert len(va) == 0 and tr.tolist() == list(range(6))
    for bad in (1.0, -0.1):
        with pytest.raises(DataError, match="val_fraction"):
            split_by_subject(["a"], bad, 0)


def test_images_are_float_in_unit_range_and_batched(tiny_adni):
    s = load_adni(tiny_adni, image_size=(32, 32), val_fraction=0.34)
    assert s.train.images.dtype == np.uint8 and s.train.images.shape == (len(s.train), 32, 32)
    assert s.train.labels.dtype == np.int64
    x, y = s.train.batch([0, 2, 1])  # (3,1,32,32)
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64 and y.tolist() == s.train.labels[[0, 2, 1]].tolist()
    item, label = s.train[1]
    assert item.shape == (1, 32, 32) and item.dtype == torch.float32 and label == s.train.labels[1]
    assert torch.equal(item, x[2]) and torch.equal(s.train[[0, 2, 1]][0], x)  # index lists take the batch path
    assert np.array_equal(s.train.images[2], (x[1, 0] * 255).round().numpy().astype(np.uint8))
    sub = s.train.subset([3, 1])
    assert sub.paths == [s.train.paths[3], s.train.paths[1]] and torch.equal(
        sub.batch([0, 1])[0], s.train.batch([3, 1])[0]
    )
    assert isinstance(s.test.images, np.memmap)


def test_pad_and_crop_are_centred_never_stretched(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = fit(a, (5, 6))
    assert padded.shape == (5, 6) and np.array_equal(padded[1:4, 1:5], a) and padded.sum() == a.sum()
    big = np.arange(36, dtype=np.uint8).reshape(6, 6)
    assert np.array_equal(fit(big, (2, 4)), big[2:4, 1:5])
    # through the loader: a 20x40 slice in a 32x32 frame is padded vertically and cropped horizontally
    img = np.zeros((20, 40), np.uint8)
    img[:, 4:36] = 200
    for split in ("train", "test"):
        _write(tmp_path / split / "NC" / "s_0.png", img)
    x = load_adni(tmp_path, image_size=(32, 32), val_fraction=0.0).train.images[0]
    assert (x[6:26] == 200).all() and (x[:6] == 0).all() and (x[26:] == 0).all()


def test_rgb_converted_with_one_warning_and_16bit_scaled(tmp_path):
    for split in ("train", "test"):
        d = tmp_path / split / "NC"
        for k in range(3):
            _write(d / f"rgb_{k}.png", np.full((8, 8, 3), 200, np.uint8))
        _write(d / "deep_0.png", np.full((8, 8), 65535 // 2, np.uint16))
        _write(d / "deep_1.png", np.full((8, 8), 65535, np.uint16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = load_adni(tmp_path, image_size=(8, 8), val_fraction=0.0)
    colour = [str(w.message) for w in caught if "colour" in str(w.message)]
    assert len(colour) == 1 and colour[0].startswith("6 colour")  # one per load with the count, not one per file
    mean = {os.path.basename(p): float(s.train[i][0].mean()) for i, p in enumerate(s.train.paths)}
    assert abs(mean["deep_0.png"] - 0.5) < 0.01 and mean["deep_1.png"] == 1.0
    assert abs(mean["rgb_0.png"] - 200 / 255) < 0.01


@pytest.mark.parametrize("bad", ["zero", "corrupt", "text"])
def test_bad_files_fail_with_one_line_error_naming_the_path(tiny_adni, bad):
    path = tiny_adni / "train" / "AD" / "broken_000.png"
    if bad == "zero":
        path.write_bytes(b"")
    elif bad == "corrupt":
        good = next((tiny_adni / "train" / "NC").glob("*.png")).read_bytes()
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_text("this is not a PNG")
    for _ in range(2):  # the second time the failure comes from the cache's record of bad files
        with pytest.raises(DataError) as err:
            load_adni(tiny_adni, image_size=(32, 32))
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_skip_bad_skips_and_counts(tiny_adni, caplog):
    (tiny_adni / "train" / "AD" / "zero_000.png").write_bytes(b"")
    (tiny_adni / "train" / "NC" / "text_000.png").write_text("not a PNG")
    (tiny_adni / "test" / "NC" / "cut_000.png").write_bytes(
        next((tiny_adni / "test" / "NC").glob("*.png")).read_bytes()[:60]
    )
    s = load_adni(tiny_adni, image_size=(32, 32), skip_bad=True)
    assert s.skipped == 3 and len(s.train) + len(s.val) == 24 and len(s.test) == 8
    assert not any("zero_" in p or "text_" in p or "cut_" in p for p in s.train.paths + s.val.paths + s.test.paths)
    assert "skipped 3" in caplog.text
    assert load_adni(tiny_adni, image_size=(32, 32), skip_bad=True).skipped == 3  # same count from the cache


def test_missing_root_split_and_pngs(tmp_path):
    cases = []
    with pytest.raises(DataError) as err:
        load_adni(tmp_path / "nope")
    cases.append((err, tmp_path / "nope"))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError) as err:
        load_adni(tmp_path)  # train has no PNGs
    cases.append((err, tmp_path / "train"))
    _write(tmp_path / "train" / "NC" / "a_0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as err:
        load_adni(tmp_path)  # no test folder
    cases.append((err, tmp_path / "test"))
    for err, path in cases:
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert "does not exist" in str(cases[0][0].value) and "no PNG" in str(cases[1][0].value)
    assert "missing split folder" in str(cases[2][0].value)


def test_decoded_slices_are_cached_and_reused(tiny_adni, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    first = load_adni(tiny_adni, image_size=(32, 32), cache_dir=cache)
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 2  # train and test
    stamp = [f.stat().st_mtime_ns for f in files]

    def no_decode(*args, **kwargs):
        raise AssertionError("the warm cache must not decode PNGs")

    with monkeypatch.context() as patch:
        patch.setattr(adni, "decode", no_decode)
        again = load_adni(tiny_adni, image_size=(32, 32), cache_dir=cache)
    assert [f.stat().st_mtime_ns for f in files] == stamp and sorted(cache.glob("*.npy")) == files
    assert isinstance(again.test.images, np.memmap) and np.array_equal(again.test.images, first.test.images)
    assert not list(cache.glob("*.tmp"))  # atomic writes leave no temp files
    # touching a file changes the key: the cache is rebuilt, never stale
    os.utime(next((tiny_adni / "test" / "AD").glob("*.png")), ns=(1, 1))
    load_adni(tiny_adni, image_size=(32, 32), cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 3
    # BRAINVQ_CACHE is the default location (conftest points it into tmp_path)
    load_adni(tiny_adni, image_size=(16, 16))
    assert len(list((tmp_path / "cache" / "slices").glob("*.npy"))) == 2


def test_max_train_images_keeps_whole_subjects_first(tiny_adni):
    full = load_adni(tiny_adni, image_size=(32, 32), val_fraction=0.0)
    s = load_adni(tiny_adni, image_size=(32, 32), val_fraction=0.0, max_train_images=8)
    assert len(s.train) == 8 and len(set(s.train.subjects)) == 2  # 4 slices per tiny subject
    assert set(s.train.paths) <= set(full.train.paths)
    assert s.train.paths == load_adni(tiny_adni, image_size=(32, 32), val_fraction=0.0, max_train_images=8).train.paths
    idx = cap_by_subject(["a"] * 4 + ["b"] * 4 + ["c"] * 4, 6, seed=0)
    assert len(idx) == 6 and len(set(idx.tolist())) == 6
    assert cap_by_subject(["x"] * 10, 3, seed=1).tolist() == cap_by_subject(["x"] * 10, 3, seed=1).tolist()


# ----------------------------------------------------------------------------------- nothing silent (issue 13)


def _load_warned(root, levels: bool = False, **kwargs):
    """``load_adni`` and the messages of the warnings it gave (every one, not just the first of a kind); the warning
    about slices without a level (these trees give most subjects one slice) only when ``levels``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_adni(root, image_size=(8, 8), **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return splits, [m for m in messages if levels or "have no slice level" not in m]


def _subjects(folder, names, value=100, dtype=np.uint8, ext=".png"):
    for name in names:
        _write(folder / f"{name}_000{ext}", np.full((8, 8), value, dtype))


def test_png_extension_in_any_case_is_read_in_sorted_order(tmp_path):
    for split in ("train", "test"):
        _write(tmp_path / split / "AD" / f"{split}b_1.PNG", np.full((8, 8), 10, np.uint8))
        _write(tmp_path / split / "AD" / f"{split}a_1.Png", np.full((8, 8), 20, np.uint8))
        _write(tmp_path / split / "NC" / f"{split}c_1.png", np.full((8, 8), 30, np.uint8))
        _write(tmp_path / "flat" / split / "z_0.PNG", np.full((8, 8), 40, np.uint8))
    samples = scan_split(tmp_path, "train")
    assert [os.path.basename(s.path) for s in samples] == ["traina_1.Png", "trainb_1.PNG", "trainc_1.png"]
    assert [s.label for s in samples] == [1, 1, 0]
    s, messages = _load_warned(tmp_path, val_fraction=0.0)
    assert len(s.train) == 3 and s.train.images[:, 0, 0].tolist() == [20, 10, 30] and not messages
    assert len(scan_split(tmp_path / "flat", "test")) == 1  # the flat layout too


def test_other_folders_and_files_in_a_split_are_skipped_with_one_warning(tmp_path):
    for split in ("train", "test"):
        _subjects(tmp_path / split / "AD", ["ad1", "ad2"])
        _subjects(tmp_path / split / "NC", ["nc1", "nc2"])
    _subjects(tmp_path / "train" / "CN", ["cn1", "cn2", "cn3"])  # ADNI's spelling of NC
    _subjects(tmp_path / "train" / "nc", ["low1"])
    _subjects(tmp_path / "train" / "MCI", ["mci1", "mci2"])
    _subjects(tmp_path / "train" / "AD" / "more", ["deep1"])  # a nested folder
    _subjects(tmp_path / "train" / ".thumbs", ["th1"])  # a hidden folder is never a class
    (tmp_path / "train" / "notes.txt").write_text("scanner notes")
    (tmp_path / "train" / "AD" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    # every class folder is read (issue 16); what is not a class folder is named, with the PNGs it holds
    s, messages = _load_warned(tmp_path, val_fraction=0.0)
    assert s.classes == ("AD", "CN", "MCI", "NC", "nc") and len(s.train) == 10
    (line,) = [m for m in messages if "skipped" in m]  # one line for the split, none for the clean test split
    assert line == (f"{tmp_path / 'train'}: skipped 2 folder(s) that are not class folders (.thumbs: 1 PNGs, "
                    "AD/more: 1 PNGs) and 2 non-PNG file(s) (notes.txt, AD/.DS_Store); their 2 PNGs are NOT read (a "
                    "class folder holds its PNGs directly and is not hidden)")
    # classes= picks two of them: the others are named as left out
    s, messages = _load_warned(tmp_path, val_fraction=0.0, classes="AD,NC")
    assert len(s.train) == 4 and sorted(set(s.train.labels.tolist())) == [0, 1] and s.classes == ("AD", "NC")
    (line,) = [m for m in messages if "skipped" in m]
    assert line == (f"{tmp_path / 'train'}: skipped 5 folder(s) not in classes=AD,NC (.thumbs: 1 PNGs, CN: 3 PNGs, "
                    "MCI: 2 PNGs, …) and 2 non-PNG file(s) (notes.txt, AD/.DS_Store); their 8 PNGs are NOT read")
    # the flat layout: only the stray file is named, and nothing says PNGs are lost
    _write(tmp_path / "flat" / "train" / "s_0.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "flat" / "train" / "labels.csv").write_text("s,AD\n")
    with pytest.warns(UserWarning, match=r"^\S+/flat/train: skipped 1 non-PNG file\(s\) \(labels.csv\)$"):
        scan_split(tmp_path / "flat", "train")


def test_a_class_named_in_classes_but_absent_is_an_error_naming_the_class_folders(tmp_path):
    _subjects(tmp_path / "train" / "CN", ["cn1", "cn2"])
    _subjects(tmp_path / "train" / "MCI", ["m1"])
    with pytest.raises(DataError) as err:
        scan_split(tmp_path, "train", classes="AD,NC")
    msg = str(err.value)
    assert msg == f"classes=AD,NC: no class folder AD with PNG files in {tmp_path}/train (class folders there: CN, MCI)"
    # a split whose only PNGs lie in nested folders: the error names them
    _subjects(tmp_path / "nested" / "train" / "AD" / "deeper", ["d1"])
    with pytest.raises(DataError) as err:
        scan_split(tmp_path / "nested", "train")
    msg = str(err.value)
    assert msg.startswith(f"no PNG files in {tmp_path / 'nested' / 'train'} ") and "\n" not in msg
    assert msg.endswith("; folder(s) that are not class folders hold PNGs: AD (1 PNGs)")


def test_a_split_with_one_class_warns_with_the_count(tmp_path):
    _subjects(tmp_path / "train" / "AD", ["a1", "a2", "a3"])
    (tmp_path / "train" / "NC").mkdir()  # present but empty
    _subjects(tmp_path / "test" / "AD", ["t1"])
    _subjects(tmp_path / "test" / "NC", ["t2"])
    _, messages = _load_warned(tmp_path, val_fraction=0.0)
    assert [m for m in messages if "one class" in m] == [
        f"{tmp_path / 'train'}: one class only: 3 AD slices and no NC slices"
    ]


def test_an_empty_validation_split_warns_only_when_one_was_asked_for(tmp_path):
    for split in ("train", "test"):  # one subject per class: no class can give val a subject
        _subjects(tmp_path / split / "AD", [f"{split}a"])
        _subjects(tmp_path / split / "NC", [f"{split}n"])
    s, messages = _load_warned(tmp_path, val_fraction=0.2)
    assert len(s.val) == 0
    assert [m for m in messages if "validation" in m] == [
        f"{tmp_path}: val_fraction=0.2 gave an empty validation split (0 of 2 train slices, from 2 subject(s)): a "
        "subject is never split, and a class gives val a subject only when it has 2 or more"
    ]
    assert not [m for m in _load_warned(tmp_path, val_fraction=0.0)[1] if "validation" in m]


def test_subjects_in_both_train_and_test_warn_with_count_and_names(tmp_path):
    for split in ("train", "test"):
        _subjects(tmp_path / split / "AD", ["s1", "s2", "s3", "s4", f"{split}only"])
        _subjects(tmp_path / split / "NC", ["s5"])
    _, messages = _load_warned(tmp_path, val_fraction=0.0)
    assert [m for m in messages if "both" in m] == [
        f"{tmp_path}: 5 subject(s) are in both train and test (s1, s2, s3, …); test scores will be optimistic"
    ]


def test_16bit_images_are_scaled_by_their_effective_bit_depth(tmp_path):
    # One depth per load: the largest a 16-bit image needs, so a 12-bit export's dim slices (max under 1024) are not
    # stretched 4x brighter than their neighbours.
    values = {"b8": 200, "b10": 1000, "b12a": 4000, "b12b": 2048, "blank": 0}
    for split in ("train", "test"):  # flat, a subject per file: no warning but the conversion's
        for name, v in values.items():
            _write(tmp_path / split / f"{name}-{split}_0.png", np.full((8, 8), v, np.uint16))
    s, messages = _load_warned(tmp_path, val_fraction=0.0)
    pixel = {os.path.basename(p).split("-")[0]: int(s.train.images[i, 0, 0]) for i, p in enumerate(s.train.paths)}
    assert pixel == {k: round(v / 4095 * 255) for k, v in values.items()}
    assert messages == [f"8 16-bit images under {tmp_path} holding 12-bit values were scaled by 4095, not 65535"]
    eight = tmp_path / "eight"  # 8-bit values in 16-bit files (a converter's habit): as if they were 8-bit
    for split in ("train", "test"):
        _write(eight / split / f"a{split}_0.png", np.full((8, 8), 200, np.uint16))
    s, messages = _load_warned(eight, val_fraction=0.0)
    assert int(s.train.images[0, 0, 0]) == 200
    assert messages == [f"2 16-bit images under {eight} holding 8-bit values were scaled by 255, not 65535"]
    full = tmp_path / "full"  # one full-range image sets the depth of the whole load
    for split in ("train", "test"):
        _write(full / split / f"a{split}_0.png", np.full((8, 8), 40000, np.uint16))
        _write(full / split / f"b{split}_0.png", np.full((8, 8), 1000, np.uint16))
    s, messages = _load_warned(full, val_fraction=0.0)
    assert sorted(int(v) for v in s.train.images[:, 0, 0]) == [round(1000 / 65535 * 255), round(40000 / 65535 * 255)]
    assert messages == []
    # full-range 16-bit input and colour: the colour line as before, and nothing about 16 bits
    rgb = tmp_path / "rgb"
    for split in ("train", "test"):
        _write(rgb / split / f"deep{split}_0.png", np.full((8, 8), 40000, np.uint16))
        _write(rgb / split / f"rgb{split}_0.png", np.full((8, 8, 3), 200, np.uint8))
    assert _load_warned(rgb, val_fraction=0.0)[1] == [f"2 colour (RGB/RGBA) images under {rgb} were converted to grey"]


def test_odd_file_names_give_one_line_errors(tmp_path):
    for split in ("train", "test"):
        _subjects(tmp_path / split / "NC", ["ok"])
    (tmp_path / "train" / "NC" / "line\nbreak_0.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"^empty \(zero-byte\) image file: \S+/line\\nbreak_0.png$"):
        load_adni(tmp_path, image_size=(8, 8))
    (tmp_path / "train" / "NC" / "line\nbreak_0.png").unlink()
    undecodable = os.path.join(os.fsencode(tmp_path / "train" / "NC"), b"\xff\xfe_0.png")
    with open(undecodable, "wb") as fh:
        fh.write(b"not a png")  # a name that is not UTF-8: the cache key and the message must still cope
    with pytest.raises(DataError, match=r"^not an image file: \S+/\\udcff\\udcfe_0.png$"):
        load_adni(tmp_path, image_size=(8, 8))
    assert len(load_adni(tmp_path, image_size=(8, 8), skip_bad=True, val_fraction=0.0).train) == 1


def test_slice_levels_rank_each_subjects_slices_and_warn_where_unknown(tmp_path):
    from brainvq.data.adni import slice_levels

    subjects = ["a", "a", "a", "b", "b", "c", "d"]
    paths = ["a_007.png", "a_003.png", "a_005.png", "b_0.png", "b_19.png", "c_000.png", "d_x.png"]
    levels = slice_levels(subjects, paths)
    # rank among the subject's own slice numbers, scaled to [0, 1]: gaps and offsets in the numbering do not matter
    np.testing.assert_allclose(levels[:5], [1.0, 0.0, 0.5, 0.0, 1.0])
    assert np.isnan(levels[5]) and np.isnan(levels[6])  # one slice; no slice number
    for split in ("train", "test"):
        for k in range(3):
            _write(tmp_path / split / "AD" / f"{split}s1_{k:03d}.png", np.full((8, 8), 100, np.uint8))
        _write(tmp_path / split / "NC" / f"{split}lone_000.png", np.full((8, 8), 100, np.uint8))
    s, messages = _load_warned(tmp_path, levels=True, val_fraction=0.0)
    assert sorted(s.train.levels[~np.isnan(s.train.levels)].tolist()) == [0.0, 0.5, 1.0]
    assert messages == [f"{tmp_path}: 2 of 8 slices have no slice level (a flat layout, a name without _<slice "
                        "number>, or a subject with one slice)"]
    sub = s.train.subset(np.array([2, 0]))  # a subset carries its slices' levels
    np.testing.assert_array_equal(sub.levels, s.train.levels[[2, 0]])


def test_codes_record_levels_and_older_files_without_them_still_load(tmp_path):
    from brainvq.data.codes import load_codes, save_codes

    codes = np.zeros((3, 2, 2), np.int64)
    path = save_codes(tmp_path / "c.npz", codes, np.array([0, 1, 1]), ["a", "a", "b"], 4,
                      levels=np.array([0.0, 1.0, np.nan]))
    loaded, _ = load_codes(path, 4)
    np.testing.assert_array_equal(loaded.levels, np.array([0.0, 1.0, np.nan], np.float32))
    np.savez_compressed(tmp_path / "old.npz", codes=codes, labels=np.array([0, 1, 1]),
                        subjects=np.array(["a", "a", "b"]), num_embeddings=np.int64(4))  # written by 0.2
    old, _ = load_codes(tmp_path / "old.npz", 4)
    assert old.levels is None and len(old) == 3
