"""Class folders as researchers have them (issue 16): any names, read as torchvision's ImageFolder reads them (sorted
names -> 0..N-1), a ``classes`` parameter that picks and orders them, the map recorded in runs, checkpoints and ONNX
metadata, sampling by class name in PyTorch and onnxruntime, N-way evaluation, and old artifacts that keep loading as
NC (0) / AD (1). Two real tiny chains (an ADNI-spelled AD/CN tree and a three-class AD/MCI/CN tree) train, export
and sample end to end."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import onnx
import pytest

from brainvq.data import load_adni, scan_split
from brainvq.data.adni import find_classes
from brainvq.data.labels import class_order, labels_for
from brainvq.errors import ConfigError, DataError, ModelFileError
from conftest import write_tiny_adni
from tiny_chain import tiny_store, train_lineage, use_store

TREES = {"cn": ("AD", "CN"), "three": ("AD", "MCI", "CN")}  # folder names as written (ADNI's CN, a third class)


def _load(root, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_adni(root, image_size=(32, 32), val_fraction=0.0, **kwargs)
    return splits, [str(w.message) for w in caught if "slice level" not in str(w.message)]


# ------------------------------------------------------------------------------------------------ the class map


def test_class_folders_are_sorted_into_labels(tmp_path):
    three = write_tiny_adni(tmp_path / "three", subjects_per_class=1, slices=2, classes=TREES["three"])
    s, messages = _load(three)
    assert s.classes == ("AD", "CN", "MCI") and not messages  # sorted, whatever order they were written in
    for ds in (s.train, s.test):
        assert [s.classes[lab] for lab in ds.labels] == [p.split("/")[-2] for p in ds.paths]
    cn = write_tiny_adni(tmp_path / "cn", subjects_per_class=1, slices=1, classes=("CN", "AD"))
    assert find_classes(cn) == ("AD", "CN")
    # a tree of exactly AD and NC keeps the order every model before class maps was trained with
    adnc = write_tiny_adni(tmp_path / "adnc", subjects_per_class=1, slices=1)
    assert find_classes(adnc) == ("NC", "AD") == class_order(["AD", "NC"])
    assert class_order(["nc", "AD"]) == ("AD", "nc")  # only the exact pair is special


def test_classes_picks_and_orders_a_subset(tmp_path):
    root = write_tiny_adni(tmp_path / "three", subjects_per_class=1, slices=2, classes=TREES["three"])
    s, messages = _load(root, classes="CN,AD")
    assert s.classes == ("CN", "AD")
    assert {s.classes[lab] for lab in s.train.labels} == {"CN", "AD"}
    assert all(p.split("/")[-2] == s.classes[lab] for p, lab in zip(s.train.paths, s.train.labels))
    skipped = [m for m in messages if "skipped" in m]
    assert len(skipped) == 2 and all("1 folder(s) not in classes=CN,AD (MCI: 2 PNGs)" in m for m in skipped)
    assert _load(root, classes=["MCI"])[0].classes == ("MCI",)  # a sequence of names works too


def test_a_class_absent_from_the_data_is_one_line_naming_it_and_the_data_dir(tmp_path):
    root = write_tiny_adni(tmp_path / "adni", subjects_per_class=1, slices=1, classes=("AD", "CN"))
    with pytest.raises(DataError) as err:
        load_adni(root, classes="CN,NC")
    assert str(err.value) == (f"classes=CN,NC: no class folder NC with PNG files in {root}/train or test (class "
                              "folders there: AD, CN)")
    for bad, said in (("CN,,AD", "comma-separated class folder names"), ("AD,AD", "names AD twice"),
                      ("AD,none", "'none' is a sampling name"), ("../AD", "comma-separated class folder names")):
        with pytest.raises(ConfigError, match=said):
            load_adni(root, classes=bad)


def test_upper_case_png_and_flat_layout(tmp_path):
    root = write_tiny_adni(tmp_path / "adni", subjects_per_class=1, slices=2, classes=("AD", "MCI"))
    for png in (root / "train" / "MCI").glob("*.png"):
        png.rename(png.with_suffix(".PNG"))
    s, _ = _load(root)
    assert s.classes == ("AD", "MCI") and sorted(set(s.train.labels.tolist())) == [0, 1] and len(s.train) == 4
    # the flat layout has no classes: unlabelled slices, and a prior over them knows only the null label
    for split in ("train", "test"):
        for png in (root / split).rglob("*.[pP][nN][gG]"):
            shutil.move(png, root / split / png.name)
        for d in ("AD", "MCI"):
            (root / split / d).rmdir()
    s, _ = _load(root)
    assert s.classes == () and (s.train.labels == -1).all() and find_classes(root) == ()
    assert labels_for("all", 3, ()).tolist() == [0, 0, 0] and labels_for("none", 1, ()).tolist() == [0]
    with pytest.raises(ConfigError, match="no classes: it was trained on a flat layout"):
        labels_for("AD", 1, ())
    with pytest.raises(DataError, match="classes=AD: no class folder AD .* \\(class folders there: none\\)"):
        scan_split(root, "train", classes="AD")


def test_sampling_names_all_classes_in_turn_and_unknown_names_are_one_line():
    assert labels_for("both", 5, ("NC", "AD")).tolist() == [1, 0, 1, 0, 1]  # AD, NC, ... as before class maps
    assert labels_for("all", 5, ("NC", "AD")).tolist() == [1, 0, 1, 0, 1]
    assert labels_for("all", 7, ("CN", "AD", "MCI")).tolist() == [1, 0, 2, 1, 0, 2, 1]  # alphabetical: AD, CN, MCI
    assert labels_for("MCI", 2, ("AD", "CN", "MCI")).tolist() == [2, 2]
    assert labels_for("none", 2, ("AD", "CN", "MCI")).tolist() == [3, 3]
    assert labels_for("CN", 2, ("AD", "CN"), conditional=False).tolist() == [2, 2]
    with pytest.raises(ConfigError) as err:
        labels_for("NC", 1, ("AD", "CN"))
    assert str(err.value) == "label must be a class recorded with the model (AD, CN), none or all; got 'NC'"


def test_old_checkpoints_codes_and_exports_without_a_map_read_as_nc_ad(tmp_path):
    import torch

    from brainvq.data.codes import load_codes, save_codes
    from brainvq.export.onnx_meta import classes_of
    from brainvq.models.checkpoint import atomic_save, load_model
    from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
    from brainvq.models.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    prior = GatedPixelCNN(PixelCNNConfig(num_embeddings=4, num_layers=1, hidden_channels=4, code_shape=(2, 2)))
    vq = VQVAE(VQVAEConfig(latent_dim=2, num_embeddings=4, hidden_channels=4, res_channels=2, num_res_layers=0,
                           image_size=(8, 8), pixel_noise=False))
    old = {k: v for k, v in prior.config.to_dict().items() if k != "classes"}
    atomic_save({"kind": "pixelcnn", "config": old, "model": prior.state_dict()}, tmp_path / "prior.pt")
    loaded, _ = load_model(tmp_path / "prior.pt", "prior")
    assert loaded.config.classes == ("NC", "AD") and loaded.config.num_classes == 2
    old = {k: v for k, v in vq.config.to_dict().items() if k not in ("classes", "pixel_noise")}
    atomic_save({"kind": "vqvae", "config": old, "model": vq.state_dict()}, tmp_path / "vqvae.pt")
    assert load_model(tmp_path / "vqvae.pt", "vqvae")[0].config.classes is None  # no map recorded
    # code files: without classes they are the legacy labels; with them, a label past the map is refused
    path = save_codes(tmp_path / "c.npz", np.zeros((2, 2, 2), np.int64), np.array([0, 1]), ["a", "b"], 4)
    assert load_codes(path, 4)[0].classes is None
    path = save_codes(tmp_path / "d.npz", np.zeros((2, 2, 2), np.int64), np.array([0, 2]), ["a", "b"], 4,
                      classes=("AD", "CN"))
    with pytest.raises(ModelFileError, match="holds label 2 for 2 classes"):
        load_codes(path, 4)
    # ONNX metadata: no key (the oldest exports) and the old fixed map both read as NC/AD
    assert classes_of({}) == ("NC", "AD")
    assert classes_of({"brainvq.labels": json.dumps({"NC": 0, "AD": 1, "none": 2})}) == ("NC", "AD")
    assert classes_of({"brainvq.labels": json.dumps({"AD": 0, "MCI": 2, "CN": 1, "none": 3})}) == ("AD", "CN", "MCI")
    with pytest.raises(ModelFileError, match="brainvq.labels metadata is not a class map"):
        classes_of({"brainvq.labels": "[1, 2"})


def test_the_evaluation_classifiers_work_for_three_classes():
    """The feature network, TSTR and label agreement are N-way: three classes of discs with holes of three sizes are
    told apart, and generated slices with the wrong labels are caught. (``calibrate`` trains TRTR and the feature
    network with the same ``fit_critic``, gated by the same ``Slices.labelled``.)"""
    import torch

    from brainvq.quality.evaluate import Slices

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:32, :32]

    def slices(per_class: int, prefix: str) -> Slices:
        images, labels = [], []
        for label, hole in enumerate((0.0, 0.4, 0.7)):
            for _ in range(per_class):
                r = rng.uniform(9, 11)
                d2 = (yy - 16 - rng.normal()) ** 2 + (xx - 16 - rng.normal()) ** 2
                img = (d2 < r * r) * (d2 >= (hole * r) ** 2) * rng.uniform(0.6, 0.8)
                images.append(np.clip(img + rng.normal(0, 0.03, img.shape) * (d2 < r * r), 0, 1))
                labels.append(label)
        images = (np.stack(images) * 255 + 0.5).astype(np.uint8)
        return Slices(images, np.array(labels), [f"{prefix}{i}" for i in range(len(labels))])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny head: more threads only wait on each other on a busy 2-core machine
    try:
        _three_class_figures(slices(12, "tr"), slices(8, "te"), slices(8, "g"))
    finally:
        torch.set_num_threads(threads)


def _three_class_figures(train, held_out, good) -> None:
    from brainvq.quality.c2st import C2STProtocol, as_tensor
    from brainvq.quality.classify import FitConfig, fit_critic, front_maps, predict_labels
    from brainvq.quality.evaluate import Calibration, EvalProtocol, Slices, evaluate_generated

    assert train.labelled and not Slices(train.images[:3], np.zeros(3, int), ["a"] * 3).labelled  # one class
    protocol = EvalProtocol(n_samples=24, max_pairs=10, c2st=C2STProtocol(folds=2, fit=FitConfig(steps=100)))
    cell = protocol.c2st.fit.critic.cell
    features = fit_critic(front_maps(as_tensor(train.images), cell), train.labels, protocol.c2st.fit)
    assert features.config.outputs == 3  # a softmax over three classes
    held_maps = front_maps(as_tensor(held_out.images), cell)
    assert (predict_labels(features, held_maps) == held_out.labels).mean() > 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 32 px slices: MS-SSIM falls back to SSIM, with a warning
        m = evaluate_generated(good, held_out, held_out, Calibration({}, {}, features), protocol)
    assert m["gen/label_agreement"] > 0.8 and m["gen/tstr_accuracy"] > 0.8
    wrong = (good.labels + 1) % 3  # right slices, every label wrong
    assert (predict_labels(features, front_maps(as_tensor(good.images), cell)) == wrong).mean() < 0.2


# ------------------------------------------------------------------------------- real chains, end to end


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """One tiny trained chain (VQ-VAE -> prior -> ONNX export) per tree, in its own MLflow store."""
    out = {}
    for key, classes in TREES.items():
        root = tmp_path_factory.mktemp(key)
        data = write_tiny_adni(root / "adni", subjects_per_class=2, slices=2, classes=classes)
        with tiny_store(root) as uri:
            out[key] = (uri, root, train_lineage(data))
    return out


@pytest.mark.parametrize("tree", list(TREES))
def test_a_tree_trains_exports_and_samples_by_class_name(chains, tree, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from brainvq.cli import main as cli
    from brainvq.export.ort_sampler import OnnxSampler, resolve_model_dir
    from brainvq.sampling.generate import generate
    from brainvq.tracking.runs import PRIOR_STAGE, load_stage_model

    uri, root, lineage = chains[tree]
    use_store(monkeypatch, uri, root)
    classes = tuple(sorted(TREES[tree]))  # sorted folder names -> 0..N-1
    client = MlflowClient(uri)
    for run_id in (lineage.vqvae, lineage.prior):  # what the runs were trained with, as a tag
        assert client.get_run(run_id).data.tags["brainvq.classes"] == ",".join(classes)
    prior, _, _ = load_stage_model(lineage.prior, PRIOR_STAGE)
    vqvae, _, _ = load_stage_model(lineage.vqvae, "train_vqvae")
    assert prior.config.classes == classes == vqvae.config.classes and prior.config.num_classes == len(classes)
    assert prior.label_embedding.num_embeddings == len(classes) + 1  # the classes and the null label
    model_dir = resolve_model_dir(f"runs:/{lineage.export}/onnx")
    sampler = OnnxSampler(model_dir, "cpu")
    assert sampler.classes == classes
    meta = json.loads(sampler.meta["brainvq.labels"])
    assert meta == {**{c: i for i, c in enumerate(classes)}, "none": len(classes)}
    # by name, the same label ids and so the same codes in PyTorch and onnxruntime
    name = classes[-1]
    assert sampler.labels_for(name, 2).tolist() == [len(classes) - 1] * 2
    assert sampler.labels_for("all", len(classes)).tolist() == list(range(len(classes)))
    torch_codes = generate(prior, vqvae, 3, name, seed=5, progress=False).codes
    assert np.array_equal(sampler.sample_codes(3, sampler.labels_for(name, 3), seed=5), torch_codes)
    # the commands, by name; an unknown name is one line listing the recorded ones
    assert cli(["sample", "--prior_run_id", lineage.prior, "--label", name, "--n", "2",
                "--out", str(tmp_path / "torch")]) == 0
    assert cli(["sample-onnx", "--model_dir", str(model_dir), "--label", name, "--n", "2", "--provider", "cpu",
                "--out", str(tmp_path / "onnx")]) == 0
    for out in ("torch", "onnx"):
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["grid.png", "sample_000.png", "sample_001.png"]
    capsys.readouterr()
    assert cli(["sample-onnx", "--model_dir", str(model_dir), "--label", "NC", "--n", "2", "--provider", "cpu",
                "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"brainvq sample-onnx: error: label must be a class recorded with the model "
                   f"({', '.join(classes)}), none or all; got 'NC'"]


def test_an_export_without_a_class_map_samples_as_nc_ad(chains, tmp_path, monkeypatch):
    """The oldest exports carry no ``brainvq.labels``: their two labels are NC (0) and AD (1)."""
    from brainvq.export.ort_sampler import OnnxSampler, resolve_model_dir

    uri, root, lineage = chains["cn"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    old = shutil.copytree(resolve_model_dir(f"runs:/{lineage.export}/onnx"), tmp_path / "old")
    for path in old.glob("*.onnx"):
        model = onnx.load(str(path))
        kept = [(p.key, p.value) for p in model.metadata_props if p.key != "brainvq.labels"]
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, dict(kept))
        onnx.save(model, str(path))
    sampler = OnnxSampler(old, "cpu")
    assert sampler.classes == ("NC", "AD")
    assert sampler.labels_for("AD", 2).tolist() == [1, 1] and sampler.labels_for("none", 1).tolist() == [2]
    with pytest.raises(ConfigError, match=r"\(NC, AD\), none or all; got 'CN'"):
        sampler.labels_for("CN", 1)
