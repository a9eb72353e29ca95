"""Whole subjects: the slice-context prior (each slice conditioned on the one below), exact stack sampling in PyTorch
and onnxruntime (fast = naive, torch = onnxruntime), training pairs from the codes, the ADNI-layout output with its
NIfTI volumes (geometry), `brainvq sample-subjects` / `mlflow run -e sample_subjects` end to end, and that
`train_vqvae` reads the output folder as a data_dir. Real models, real onnxruntime sessions, real MLflow runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from brainvq.data.codes import BOTTOM, UNKNOWN, CodeSet, below_index
from brainvq.errors import ConfigError
from brainvq.export.onnx_graphs import export_models
from brainvq.export.ort_sampler import OnnxSampler
from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from brainvq.models.vqvae import VQVAE, VQVAEConfig
from brainvq.sampling.draw import context_rows, fast_sample_batch, sample_stacks, stack_conditions, stack_uniforms
from brainvq.sampling.torch_sampler import sample_codes, sample_subject_codes, torch_context_fn, torch_step_fns
from tests.test_onnx import CODES, K, tiny_models
from tests.tiny_chain import latest, subprocess_env, tiny_store, train_lineage

REPO = Path(__file__).resolve().parents[1]


def stack_prior(seed: int = 0, level_bins: int = 0, position_rank: int = 0) -> GatedPixelCNN:
    """A tiny slice-context prior with every weight random (with ``position_rank``, its 2-D position maps too), so
    the slice below visibly matters."""
    torch.manual_seed(seed)
    prior = GatedPixelCNN(PixelCNNConfig(num_embeddings=K, num_layers=3, hidden_channels=8, code_shape=CODES,
                                         dilation_cycle=(1, 2), slice_context=True, level_bins=level_bins,
                                         position_rank=position_rank)).eval()
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0, 0.4)
    return prior


@pytest.fixture(scope="module")
def stack_export(tmp_path_factory):
    vq, _ = tiny_models()
    prior = stack_prior(level_bins=3)
    out = tmp_path_factory.mktemp("onnx_stack")
    export_models(vq, prior, out, meta={"vqvae_run_id": "vq1", "prior_run_id": "px1"})
    return vq, prior, out


def test_the_slice_below_conditions_every_position_and_nothing_leaks_from_the_slice_itself():
    prior = stack_prior()
    codes = torch.randint(0, K, (2, *CODES))
    labels = torch.tensor([0, 1])
    below = torch.randint(0, K, (2, *CODES))
    base = prior(codes, labels, below).logits
    other = below.clone()
    other[:, -1, -1] = (other[:, -1, -1] + 1) % K  # the last code of the slice below reaches the positions near it
    assert not torch.allclose(prior(codes, labels, other).logits[:, :, -2:, -2:], base[:, :, -2:, -2:])
    # causality within the slice is untouched: changing code (i, j) changes no logit at or before (i, j)
    later = codes.clone()
    later[:, 3, 4] = (later[:, 3, 4] + 1) % K
    moved = (prior(later, labels, below).logits - base).abs().amax(dim=1)  # (B,h,w)
    flat = moved.flatten(1)
    assert flat[:, : 3 * CODES[1] + 4 + 1].max() == 0
    # "not given" is the unknown token everywhere: what single slices are sampled with
    unknown = torch.full_like(below, prior.config.unknown_token)
    assert torch.equal(prior(codes, labels).logits, prior(codes, labels, unknown).logits)


def test_stack_sampling_is_exact_fast_equals_naive_and_torch_equals_onnxruntime(stack_export):
    _, prior, out = stack_export
    labels = np.array([0, 1, 2])
    fast = sample_subject_codes(prior, 3, labels, slices=3, seed=4, progress=False)
    naive = sample_subject_codes(prior, 3, labels, slices=3, seed=4, method="naive", progress=False)
    assert fast.shape == (3, 3, *CODES)
    np.testing.assert_array_equal(fast, naive)
    ort = OnnxSampler(out, "cpu")
    assert ort.slice_context and (out / "prior_context.onnx").is_file()
    np.testing.assert_array_equal(ort.sample_subject_codes(3, labels, 3, seed=4), fast)
    np.testing.assert_array_equal(ort.sample_subject_codes(3, labels, 3, seed=4, method="naive"), fast)
    # each slice depends on the one below: the same uniforms with another bottom slice give other slices above
    assert (fast[:, 1:] != fast[:, :1]).any()
    # a subject's slices do not depend on how many subjects were drawn with it
    np.testing.assert_array_equal(sample_subject_codes(prior, 1, labels[:1], slices=3, seed=4, progress=False),
                                  fast[:1])
    # decoded, PyTorch's subjects are onnxruntime's (the same pixel draw; decoders agree to float rounding)
    from brainvq import load_sampler
    from brainvq.sampling.generate import generate_subjects

    vq = stack_export[0]
    torch_subjects = generate_subjects(prior, vq, 2, "all", 3, seed=4, progress=False)
    ort_images, _ = load_sampler(str(out), "cpu").sample_subjects(2, "all", 3, seed=4)
    assert np.abs(torch_subjects.images - ort_images).max() <= 1 / 255 + 1e-6
    # classifier-free guidance over stacks (the level kept on the unconditional side): wavefront = naive, torch = ORT
    guided = sample_subject_codes(prior, 3, labels, slices=3, seed=4, progress=False, guidance=1.5)
    np.testing.assert_array_equal(guided, sample_subject_codes(prior, 3, labels, slices=3, seed=4, method="naive",
                                                               progress=False, guidance=1.5))
    np.testing.assert_array_equal(ort.sample_subject_codes(3, labels, 3, seed=4, guidance=1.5), guided)
    np.testing.assert_array_equal(ort.sample_subject_codes(3, labels, 3, seed=4, method="naive", guidance=1.5),
                                  guided)
    assert not np.array_equal(guided[:2], fast[:2])  # labels 0 and 1; 2 is the null label, which guidance leaves
    np.testing.assert_array_equal(guided[2], fast[2])
    np.testing.assert_array_equal(ort.sample_codes(3, labels, seed=2, guidance=1.5),
                                  sample_codes(prior, 3, labels, seed=2, progress=False, guidance=1.5))
    # single slices from the same export: the slice below not given, in both backends; the fast samplers compute its
    # bias for one grid and broadcast it, the naive ones run the full graph on every grid's "not given" slice
    levels = np.array([0.0, 0.5, 1.0])
    single = sample_codes(prior, 3, labels, seed=2, progress=False, levels=levels)
    np.testing.assert_array_equal(ort.sample_codes(3, labels, seed=2, levels=levels), single)
    np.testing.assert_array_equal(ort.sample_codes(3, labels, seed=2, levels=levels, method="naive"), single)
    np.testing.assert_array_equal(sample_codes(prior, 3, labels, seed=2, progress=False, levels=levels,
                                               method="naive"), single)
    np.testing.assert_array_equal(ort.sample_codes(3, labels, seed=2, guidance=1.5, method="naive"),
                                  ort.sample_codes(3, labels, seed=2, guidance=1.5))


def test_the_wavefront_samples_what_slice_after_slice_sampling_samples_on_grids_taller_than_a_strip(tmp_path):
    """Subjects sample in a wavefront: each slice radius + 1 rows behind the one below, the context net on strips of
    2 * radius + 1 rows. On a grid taller than a strip the codes are those of slice-after-slice sampling, in PyTorch
    and in onnxruntime, and an export without a context radius (written before the wavefront) samples them slice
    after slice."""
    torch.manual_seed(1)
    prior = GatedPixelCNN(PixelCNNConfig(num_embeddings=K, num_layers=2, hidden_channels=8, code_shape=(12, 3),
                                         dilation_cycle=(1, 2), slice_context=True)).eval()
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0, 0.4)
    cfg, labels, slices = prior.config, np.array([0, 1]), 5
    radius = prior.context_module().radius
    assert 2 * radius + 1 < cfg.code_shape[0]
    row_fn, step_fn = torch_step_fns(prior)
    context_fn = torch_context_fn(prior)
    # the strips give the whole grid's bias, row by row
    below = np.random.default_rng(0).integers(0, K, (2, *cfg.code_shape))
    for i in range(cfg.code_shape[0]):
        np.testing.assert_allclose(context_rows(context_fn, below, np.full(2, i), radius), context_fn(below)[:, i],
                                   atol=1e-5)

    def one_slice(cond, ub, below):
        return fast_sample_batch(row_fn, step_fn, cond, ub, K, cfg.hcache_shape(len(cond)),
                                 cfg.vcache_shape(len(cond)), context=context_fn(below))

    u = stack_uniforms(2, slices, cfg.code_shape, seed=3)
    sequential = sample_stacks(one_slice, stack_conditions(labels, slices, 0), u, cfg.bottom_token)
    wave = sample_subject_codes(prior, 2, labels, slices=slices, seed=3, progress=False)
    np.testing.assert_array_equal(wave, sequential)
    assert (wave[:, 1:] != wave[:, :-1]).any()
    vq = VQVAE(VQVAEConfig(latent_dim=4, num_embeddings=K, hidden_channels=8, res_channels=4, num_res_layers=1,
                           image_size=(48, 12))).eval()
    export_models(vq, prior, tmp_path)
    ort = OnnxSampler(tmp_path, "cpu")
    assert ort.context_radius == radius
    for i in range(cfg.code_shape[0]):  # the graph asked for one row of each strip gives that row of the whole grid
        np.testing.assert_allclose(context_rows(ort.context_fn, below, np.full(2, i), radius),
                                   ort.context_fn(below)[:, i], atol=1e-5)
    np.testing.assert_array_equal(ort.sample_subject_codes(2, labels, slices, seed=3), wave)
    ort.context_radius = 0  # what an export written before the wavefront carries: slice after slice
    np.testing.assert_array_equal(ort.sample_subject_codes(2, labels, slices, seed=3), wave)


# Written by brainvq 58136bc (the release before the compact caches) from stack_export's weights:
#   export_models(tiny_models()[0], stack_prior(level_bins=3), OUT, meta={"vqvae_run_id": "vq1", "prior_run_id": "px1"})
LEGACY_EXPORT = Path(__file__).parent / "data" / "export_58136bc"


def test_stacks_with_a_2d_position_map_are_exact_in_both_backends(tmp_path):
    """position_rank: the map joins the row step, which the wavefront, the naive loop and the ONNX row graph share;
    with levels, so every condition has its own map."""
    vq, _ = tiny_models()
    prior = stack_prior(seed=1, level_bins=3, position_rank=2)
    export_models(vq, prior, tmp_path)
    labels = np.array([0, 1, 2])
    fast = sample_subject_codes(prior, 3, labels, slices=3, seed=7, progress=False)
    np.testing.assert_array_equal(fast, sample_subject_codes(prior, 3, labels, slices=3, seed=7, method="naive",
                                                             progress=False))
    ort = OnnxSampler(tmp_path, "cpu")
    np.testing.assert_array_equal(ort.sample_subject_codes(3, labels, 3, seed=7), fast)
    np.testing.assert_array_equal(ort.sample_codes(3, labels, seed=8), sample_codes(prior, 3, labels, seed=8,
                                                                                    progress=False))
    with torch.no_grad():  # the map matters: without it the same draws give other codes
        prior.position_map.zero_()
    assert not np.array_equal(sample_subject_codes(prior, 3, labels, slices=3, seed=7, progress=False), fast)


def test_an_export_written_before_the_compact_caches_samples_the_same_codes(stack_export):
    """Exports written before this release keep working and draw the same codes: their row graph carries every
    layer's cache_len rows of vertical cache (B,L,w,cache_len,C) and their context graph returns every row (no
    ``rows`` input); the samplers read both from the graphs themselves."""
    _, _, out = stack_export
    old, new = OnnxSampler(LEGACY_EXPORT, "cpu"), OnnxSampler(out, "cpu")
    assert len(old.vcache_tail) == 4 and len(new.vcache_tail) == 3  # (L,w,cache_len,C) against (w,R,C)
    assert "rows" not in old._context_inputs and "rows" in new._context_inputs
    labels, levels = np.array([0, 1, 2]), np.array([0.0, 0.5, 1.0])
    subjects = new.sample_subject_codes(3, labels, 4, seed=5)
    np.testing.assert_array_equal(old.sample_subject_codes(3, labels, 4, seed=5), subjects)
    np.testing.assert_array_equal(old.sample_codes(3, labels, seed=6, levels=levels),
                                  new.sample_codes(3, labels, seed=6, levels=levels))
    assert (subjects[:, 1:] != subjects[:, :-1]).any()


def test_a_prior_without_slice_context_refuses_subjects_in_one_line(tmp_path):
    vq, prior = tiny_models()
    with pytest.raises(ConfigError, match="no slice context"):
        sample_subject_codes(prior, 1, 0, slices=3, progress=False)
    export_models(vq, prior, tmp_path)
    assert not (tmp_path / "prior_context.onnx").exists()
    with pytest.raises(ConfigError, match="no slice context"):
        OnnxSampler(tmp_path, "cpu").sample_subject_codes(1, np.array([0]), 3)


def test_training_pairs_follow_each_subjects_slice_order():
    codes = np.arange(7)[:, None, None].repeat(2, 1).repeat(2, 2)
    subjects = ("a", "a", "b", "a", "b", "c", "d")
    levels = np.array([0.5, 0.0, 1.0, 1.0, 0.0, np.nan, 0.0], np.float32)  # a: 1 -> 0 -> 3; b: 4 -> 2
    data = CodeSet(codes, np.zeros(7, np.int64), levels, ("x",), subjects)
    np.testing.assert_array_equal(below_index(data), [1, BOTTOM, 4, 0, BOTTOM, UNKNOWN, BOTTOM])
    no_subjects = CodeSet(codes, data.labels, levels, ("x",))
    assert (below_index(no_subjects) == UNKNOWN).all()  # codes encoded without subjects: single slices only


def _png_stack(folder: Path, subject: str) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob(f"{subject}_*.png"))])


def test_sample_subjects_writes_the_adni_layout_and_volumes_with_their_geometry(stack_export, tmp_path):
    from brainvq.data.stacks import PIXEL_MM, SLICE_MM, volume_to_slices
    from brainvq.export.ort_sampler import sample_subjects_to_folder

    _, _, out = stack_export
    r = sample_subjects_to_folder(str(out), str(tmp_path / "subj"), n_subjects=3, label="all", slices=5, seed=3,
                                  provider="cpu")
    root = tmp_path / "subj"
    assert sorted(p.name for p in root.iterdir()) == ["AD", "NC", "nifti"]  # classes from the export's map
    assert len(r["pngs"]) == 15 and len(list(root.rglob("*.png"))) == 15 and len(r["volumes"]) == 3
    ids = sorted({p.stem.rsplit("_", 1)[0] for p in root.rglob("*.png")})
    assert ids == ["synth-s3-0000", "synth-s3-0001", "synth-s3-0002"]
    for vol in r["volumes"]:
        subject = vol.name.removesuffix(".nii.gz")
        img = nib.load(vol)
        pngs = _png_stack(next(root.glob(f"*/{subject}_000.png")).parent, subject)  # (S,H,W), 000 the lowest
        assert img.shape == (pngs.shape[2], pngs.shape[1], 5) and img.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (PIXEL_MM, PIXEL_MM, SLICE_MM))
        np.testing.assert_allclose(img.affine[:3, :3] @ (np.array(img.shape) - 1) / 2 + img.affine[:3, 3], 0,
                                   atol=1e-4)  # centred on the origin (the header stores float32)
        data = np.asarray(img.dataobj)
        np.testing.assert_array_equal(volume_to_slices(data), pngs)
        # radiological view: image column 0 is the subject's right (largest x), row 0 the front (largest y)
        np.testing.assert_array_equal(data[-1, -1, 0], pngs[0, 0, 0])
    # load_sampler gives the same subjects as arrays (what the PNGs hold, before rounding to 8 bits)
    from brainvq import load_sampler
    from brainvq.data.images import to_uint8

    images, classes = load_sampler(str(out), "cpu").sample_subjects(3, "all", 5, seed=3)
    assert images.shape == (3, 5, 1, *pngs.shape[1:]) and classes == r["classes"]
    np.testing.assert_array_equal(to_uint8(images[-1, :, 0]), pngs)
    # the same call again: same bytes; into a folder of other files: one line, nothing written
    again = sample_subjects_to_folder(str(out), str(tmp_path / "again"), n_subjects=3, slices=5, seed=3,
                                      provider="cpu")
    assert [p.read_bytes() for p in again["pngs"]] == [p.read_bytes() for p in r["pngs"]]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match=r"out: .*holds other files \(notes.txt\)"):
        sample_subjects_to_folder(str(out), str(tmp_path / "mine"), n_subjects=1, slices=3, provider="cpu")
    with pytest.raises(ConfigError, match="already holds 18 files"):
        sample_subjects_to_folder(str(out), str(root), n_subjects=1, slices=3, provider="cpu")
    with pytest.raises(ConfigError, match="slices must be >= 2"):
        sample_subjects_to_folder(str(out), str(tmp_path / "x"), n_subjects=1, slices=1, provider="cpu")
    with pytest.raises(ConfigError, match="slice_mm must be a finite number of mm > 0, got 0"):
        sample_subjects_to_folder(str(out), str(tmp_path / "x"), n_subjects=1, slices=3, slice_mm=0, provider="cpu")
    # the data's own spacing, when known, goes in the volumes' headers and affines
    own = sample_subjects_to_folder(str(out), str(tmp_path / "own"), n_subjects=1, slices=3, pixel_mm=1.0,
                                    slice_mm=3.5, provider="cpu")
    np.testing.assert_allclose(nib.load(own["volumes"][0]).header.get_zooms(), (1.0, 1.0, 3.5))
    # the CLI's defaults are the library's (the parameter table holds literals)
    from brainvq.cli.params import entry_point

    entry = entry_point("sample-subjects")
    assert (entry.param("pixel_mm").default, entry.param("slice_mm").default) == (PIXEL_MM, SLICE_MM)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny real train_vqvae → train_prior (slice_context, the default) → export_onnx chain."""
    from tests.conftest import write_tiny_adni

    root = tmp_path_factory.mktemp("subjects_chain")
    data = write_tiny_adni(root / "adni", slices=5)
    with tiny_store(root) as uri:
        lineage = train_lineage(data)
    return root, uri, data, lineage


def test_mlflow_run_sample_subjects_writes_subjects_that_train_vqvae_reads(chain, monkeypatch):
    from tests.tiny_chain import TINY_VQVAE, use_store

    root, uri, data, lineage = chain
    use_store(monkeypatch, uri, root)
    out = root / "generated"
    env = subprocess_env(uri, root / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "sample_subjects", "--env-manager", "local",
         "-P", "n_subjects=4", "-P", f"model_dir=runs:/{lineage.export}/onnx", "-P", f"out={out}", "-P", "slices=5"],
        capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 4 subjects (20 PNGs, 4 NIfTI volumes)" in proc.stdout
    assert len(list(out.rglob("*.png"))) == 20 and len(list((out / "nifti").glob("*.nii.gz"))) == 4
    run_id = latest("sample_subjects")
    import mlflow

    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["brainvq.export_run_id"] == lineage.export
    assert run.data.tags["brainvq.vqvae_run_id"] == lineage.vqvae
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "subjects")}
    assert arts == {"subjects/AD", "subjects/NC", "subjects/nifti"}
    # the folder is a data_dir as it is: every slice trains (no test split), levels and subjects read from the names
    from brainvq.cli import main as cli

    assert cli(["train-vqvae", "--data_dir", str(out), *TINY_VQVAE, "--epochs", "1"]) == 0
    trained = mlflow.get_run(latest("train_vqvae"))
    assert trained.info.status == "FINISHED" and trained.data.params["data_dir"] == str(out)
    assert trained.data.tags["brainvq.classes"] == "NC,AD"
