"""The MNI152-derived demo set: layout, determinism, AD atrophy, cache, entry script."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from brainvq.data import load_adni
from brainvq.data.demo import default_demo_dir, ensure_demo_data, make_demo_data
from brainvq.errors import DataError


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_default_size_layout(tmp_path):
    a = make_demo_data(tmp_path / "a", train_subjects=2, test_subjects=2, seed=3, progress=False)
    subjects = set()
    for split in ("train", "test"):
        for label in ("AD", "NC"):
            files = sorted((a / split / label).glob("*.png"))
            assert len(files) == 20  # one subject per class, 20 slices each
            names = {f.stem.rsplit("_", 1)[0] for f in files}
            assert len(names) == 1 and next(iter(names)).startswith(f"{label}_s")
            subjects |= names
    assert len(subjects) == 4  # subject ids are unique across splits
    img = Image.open(next((a / "train" / "AD").glob("*.png")))
    assert img.size == (256, 240) and img.mode == "L"
    x = np.asarray(img)
    assert x[0].max() <= 3 and x[:, 0].max() <= 3 and (x > 60).mean() > 0.4  # black background, brain fills the frame


def test_same_seed_same_bytes(tmp_path):
    kw = dict(train_subjects=2, test_subjects=2, image_size=(64, 64), progress=False)
    a = make_demo_data(tmp_path / "a", seed=3, **kw)
    b = make_demo_data(tmp_path / "b", seed=3, **kw)
    c = make_demo_data(tmp_path / "c", seed=4, **kw)
    assert _digest(a) == _digest(b) != _digest(c)


def test_ad_subjects_have_larger_ventricles_than_nc(tmp_path):
    root = make_demo_data(tmp_path / "d", train_subjects=6, test_subjects=2, seed=0, image_size=(120, 128),
                          slices_per_subject=8, progress=False)
    s = load_adni(root, image_size=(120, 128), val_fraction=0.0)
    x = s.train.images.astype(np.float32) / 255
    centre = x[:, 30:90, 34:94]
    dark_inside = ((centre < 0.25) & (centre > 0.0)).mean(axis=(1, 2))  # CSF-dark pixels in the brain centre
    assert dark_inside[s.train.labels == 1].mean() > 1.3 * dark_inside[s.train.labels == 0].mean()


def test_cached_default_is_generated_once(tmp_path):
    kw = dict(train_subjects=2, test_subjects=2, image_size=(48, 64))
    first = ensure_demo_data(**kw)
    assert first == default_demo_dir(**kw) and first.name.startswith("demo-v1-")
    assert str(first).startswith(str(tmp_path / "cache"))  # BRAINVQ_CACHE (set by conftest)
    stamp = (first / "brainvq_demo.json").stat().st_mtime_ns
    assert ensure_demo_data(**kw) == first
    assert (first / "brainvq_demo.json").stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp folders left
    assert default_demo_dir(**{**kw, "seed": 1}) != first


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="train_subjects"):
        make_demo_data(tmp_path / "y", train_subjects=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        make_demo_data(tmp_path / "full")


def test_entry_script_plain_and_under_mlflow(tmp_path, capsys):
    import mlflow

    from brainvq.pipelines.make_demo_data import main

    main([str(tmp_path / "x"), "--train-subjects", "2", "--test-subjects", "2", "--image_size", "48x64"])
    assert (tmp_path / "x" / "train" / "NC").is_dir() and mlflow.active_run() is None
    assert "demo set at" in capsys.readouterr().out
    with mlflow.start_run() as run:
        main(["--out_dir", str(tmp_path / "m"), "--train_subjects", "2", "--test_subjects", "2", "--seed", "1.0",
              "--image_size", "48x64"])
    child = mlflow.search_runs([run.info.experiment_id], filter_string="tags.`brainvq.stage` = 'make_demo_data'",
                               output_format="list")[0]
    assert child.data.tags["brainvq.data_dir"] == str((tmp_path / "m").resolve())
    assert child.data.params["train_subjects"] == "2" and child.data.params["image_size"] == "48x64"
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(child.info.run_id)]
    assert "demo_grid.png" in names
