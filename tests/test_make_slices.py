"""`brainvq make-slices`: NIfTI volumes (synthesised from the MNI152 template nilearn ships) to the ADNI layout, read
back by brainvq's reader and trained on; orientation follows the affine; bad input is one line and writes nothing."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from brainvq.cli import main as cli
from brainvq.data.demo import _template_dir
from brainvq.data.volumes import MANIFEST, make_slices
from brainvq.errors import DataError
from tiny_chain import TINY_VQVAE

SMALL = {"image_size": (60, 64), "slices": 6, "progress": False}  # enough to test a rule, fast on 2 cores


@pytest.fixture(scope="module")
def template() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 2009a T1 at 2 mm (every other voxel): uint8 ``(99, 117, 95)`` in RAS, and its affine."""
    img = nib.load(str(_template_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    affine = img.affine.copy()
    affine[:3, :3] *= 2
    return np.asarray(img.dataobj)[::2, ::2, ::2].copy(), affine


def subject(template, k: int) -> np.ndarray:
    """A distinct subject: the template shifted by a few voxels, with its own gain."""
    data, _ = template
    moved = np.roll(data.astype(np.float32), (k % 3 - 1, k % 2, (k % 3) - 1), axis=(0, 1, 2))
    return np.clip(moved * (0.8 + 0.05 * k), 0, 255).astype(np.uint8)


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def class_folders(root: Path, template, per_class: int = 3) -> Path:
    """``root/AD/ad<k>.nii.gz`` and ``root/NC/nc<k>.nii[.gz]`` (one uncompressed)."""
    for k in range(per_class):
        save(subject(template, k), template[1], root / "AD" / f"ad{k}.nii.gz")
        save(subject(template, k + per_class), template[1], root / "NC" / f"nc{k}.nii{'' if k == 0 else '.gz'}")
    return root


def pngs(root: Path) -> dict[str, list[Path]]:
    """Subject -> its slice files, anywhere in the layout."""
    found: dict[str, list[Path]] = {}
    for p in sorted(root.glob("*/*/*.png")):
        found.setdefault(p.stem.rsplit("_", 1)[0], []).append(p)
    return found


def read(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in paths]).astype(np.int16)  # (S, H, W)


def test_class_folders_give_the_adni_layout_split_by_subject_that_the_reader_reads(tmp_path, template):
    from brainvq.data.adni import load_adni

    out = make_slices(class_folders(tmp_path / "in", template), tmp_path / "out", test_fraction=0.34, seed=1,
                      progress=False)  # default size and 20 slices
    by_subject = pngs(out)
    assert sorted(by_subject) == ["ad0", "ad1", "ad2", "nc0", "nc1", "nc2"]
    for s, files in by_subject.items():
        assert [f.name for f in files] == [f"{s}_{k:03d}.png" for k in range(20)]
        split, label = files[0].parts[-3:-1]
        assert {f.parent for f in files} == {out / split / s[:2].upper()}  # one split, its class folder
    splits = {s: files[0].parts[-3] for s, files in by_subject.items()}
    for cls in ("ad", "nc"):  # stratified: each class gives test one of its three subjects
        assert sorted(v for s, v in splits.items() if s.startswith(cls)) == ["test", "train", "train"]
    with Image.open(by_subject["ad0"][0]) as im:
        assert im.mode == "L" and im.size == (256, 240)
    manifest = json.loads((out / MANIFEST).read_text())
    for s, m in manifest["subjects"].items():
        assert m["split"] == splits[s] and np.allclose(np.diff(m["slice_z_mm"]), 2.0)  # consecutive, 2 mm apart
    slab = read(by_subject["nc1"]).astype(np.float32)
    neighbours = np.abs(np.diff(slab, axis=0)).mean()
    assert neighbours < 0.5 * np.abs(slab[-1] - slab[0]).mean()  # consecutive slices change gradually
    assert (slab > 0).mean() > 0.3  # the brain fills the frame as in the demo set, not a speck

    data = load_adni(out, image_size=(240, 256), val_fraction=0.0)
    assert len(data.train) == 4 * 20 and len(data.test) == 2 * 20
    assert set(data.train.subjects).isdisjoint(data.test.subjects)
    assert sorted(set(data.test.labels.tolist())) == [0, 1]
    assert np.allclose(sorted(set(data.train.levels.tolist())), np.arange(20) / 19)


def test_orientation_follows_the_affine(tmp_path, template):
    """Flipped and permuted storage of one volume give the same slices to the bit; a mirrored brain (data flipped,
    affine kept) gives mirrored slices; a marker at the subject's front right shows top left (radiological)."""
    data, affine = template
    fg = np.argwhere(data > 40)
    (x0, y0, z0), (x1, y1, z1) = fg.min(0), fg.max(0)
    z = (z0 + z1) // 2
    marked = data.copy()
    x, y = x1 - (x1 - x0) // 10, y1 - (y1 - y0) // 10  # front right corner of the brain's box: background
    assert data[x - 1 : x + 2, y - 1 : y + 2, z - 3 : z + 4].max() == 0
    marked[x - 1 : x + 2, y - 1 : y + 2, z - 3 : z + 4] = 255
    n = np.array(data.shape) - 1
    vols = {"canon": (marked, affine), "plain": (data, affine), "mirrored": (marked[::-1], affine)}
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # L, A, I
    flip[:3, 3] = [n[0], 0, n[2]]
    vols["flipxz"] = (marked[::-1, :, ::-1], affine @ flip)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:3, 3] = [n[0], n[1], 0]
    vols["lps"] = (marked[::-1, ::-1], affine @ lps)
    perm = np.zeros((4, 4))
    perm[[0, 1, 2, 3], [1, 2, 0, 3]] = 1  # stored as (z, x, y): voxel (k, i, j) is canonical (i, j, k)
    vols["permuted"] = (marked.transpose(2, 0, 1), affine @ perm)
    assert [nib.aff2axcodes(a) for _, a in vols.values()][2:] == [("R", "A", "S"), ("L", "A", "I"), ("L", "P", "S"),
                                                                   ("S", "R", "A")]
    for name, (d, a) in vols.items():
        save(np.ascontiguousarray(d), a, tmp_path / "in" / "X" / f"{name}.nii.gz")
    out = make_slices(tmp_path / "in", tmp_path / "out", test_fraction=0.2, **SMALL)
    s = {name: read(files) for name, files in pngs(out).items()}
    for name in ("flipxz", "lps", "permuted"):
        assert np.array_equal(s[name], s["canon"]), name
    assert not np.array_equal(s["mirrored"], s["canon"])
    assert np.abs(s["mirrored"][:, :, ::-1] - s["canon"]).max() <= 1  # mirrored anatomy: the affine decides
    rows, cols = np.nonzero(np.abs(s["canon"] - s["plain"]).max(0) > 100)
    assert len(rows) and rows.mean() < 30 and cols.mean() < 32  # nose up, subject's right on the image left


def test_labels_csv_names_any_classes_and_every_subject(tmp_path, template):
    src = class_folders(tmp_path / "src", template, per_class=2)
    flat = tmp_path / "flat"
    for p in src.glob("*/*"):  # flat, one in a subfolder: with a CSV, volumes are found anywhere under in_dir
        dest = flat / "nested" if p.name == "nc1.nii.gz" else flat
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest / p.name)
    csv = tmp_path / "labels.csv"
    csv.write_text("subject,label\nad0,MCI\nad1,MCI\nnc0,CN\nnc1,CN\n")
    out = make_slices(flat, tmp_path / "out", labels_csv=csv, test_fraction=0.5, **SMALL)
    layout = {(p.parts[-3], p.parts[-2], p.stem.rsplit("_", 1)[0]) for p in out.glob("*/*/*.png")}
    assert {(c, s) for _, c, s in layout} == {("MCI", "ad0"), ("MCI", "ad1"), ("CN", "nc0"), ("CN", "nc1")}
    assert {sp for sp, _, _ in layout} == {"train", "test"} and len(layout) == 4

    csv.write_text("ad0,MCI\nad1,MCI\nnc0,CN\nnc1,CN\nnc9,CN\n")  # no header; nc9 has no volume
    with pytest.raises(DataError, match=r"labels\.csv line 5: subject nc9 has no volume"):
        make_slices(flat, tmp_path / "out2", labels_csv=csv, **SMALL)
    csv.write_text("subject,label\nad0,MCI\nad1,MCI\nnc0,CN\n")  # nc1 unlabelled
    with pytest.raises(DataError, match=r"volume .*nested/nc1\.nii\.gz has no label"):
        make_slices(flat, tmp_path / "out2", labels_csv=csv, **SMALL)
    csv.write_text("ad0,MCI\nad1,none\nnc0,CN\nnc1,CN\n")  # a sampling name is no class
    with pytest.raises(DataError, match=r"labels\.csv line 2: 'none' cannot be a class"):
        make_slices(flat, tmp_path / "out2", labels_csv=csv, **SMALL)
    assert not (tmp_path / "out2").exists()


def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, template, capsys):
    good = class_folders(tmp_path / "in", template, per_class=2)
    args = ["--image_size", "60x64", "--slices", "6"]

    def fails(in_dir: Path, out: Path, *extra: str) -> str:
        assert cli(["make-slices", str(in_dir), str(out), *args, *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("brainvq")]  # not the bar
        assert len(err) == 1 and err[0].startswith("brainvq make-slices: error:"), err
        return err[0]

    four_d = save(np.stack([subject(template, 0)] * 2, axis=-1), template[1], good / "NC" / "zz4d.nii.gz")
    line = fails(good, tmp_path / "out")
    assert "4D volumes are not supported" in line and str(four_d) in line
    four_d.unlink()

    corrupt = good / "NC" / "zzbad.nii.gz"  # sorted last: the other volumes are sliced before it fails
    raw = gzip.compress(gzip.decompress((good / "NC" / "nc1.nii.gz").read_bytes())[:200_000])  # data cut short
    corrupt.write_bytes(raw)
    line = fails(good, tmp_path / "out")
    assert "corrupt or unreadable volume" in line and str(corrupt) in line
    assert [p.name for p in tmp_path.iterdir() if "out" in p.name] == []  # no output, no half-written staging
    corrupt.unlink()

    (tmp_path / "empty").mkdir()
    assert "no NIfTI volumes" in fails(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    assert "not empty" in fails(good, tmp_path / "full")
    assert "slab_level" in fails(good, tmp_path / "out", "--slab_level", "1.5")
    assert "reach beyond the volume" in fails(good, tmp_path / "out", "--slice_mm", "40")
    assert not (tmp_path / "out").exists()


def test_brainvq_trains_on_the_converted_slices(tmp_path, template):
    """One real chain: the entry script under an MLflow run, then `brainvq train-vqvae` on its output."""
    import mlflow

    from brainvq.pipelines.make_slices import main

    src = class_folders(tmp_path / "in", template)
    with mlflow.start_run() as run:
        main([str(src), str(tmp_path / "slices"), "--image-size", "32x32", "--slices", "4", "--test-fraction", "0.34"])
    child = mlflow.search_runs([run.info.experiment_id], filter_string="tags.`brainvq.stage` = 'make_slices'",
                               output_format="list")[0]
    assert child.info.status == "FINISHED" and child.data.params["image_size"] == "32x32"
    assert child.data.tags["brainvq.data_dir"] == str((tmp_path / "slices").resolve())
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(child.info.run_id)} >= {MANIFEST, "slices_grid.png"}
    assert cli(["train-vqvae", "--data_dir", str(tmp_path / "slices"), *TINY_VQVAE, "--epochs", "1"]) == 0
    (vq,) = mlflow.search_runs(filter_string="tags.`brainvq.stage` = 'train_vqvae'", search_all_experiments=True,
                               output_format="list")
    assert vq.info.status == "FINISHED" and "test/ssim" in vq.data.metrics
