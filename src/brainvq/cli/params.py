"""Every entry point's parameters, declared once: the argparse parsers and the MLproject file follow from this table.

One name everywhere: the parameter ``max_minutes`` is the MLproject parameter ``max_minutes``, the CLI flag
``--max_minutes`` (``--max-minutes`` works too), the config field ``max_minutes`` and the MLflow param
``max_minutes``. ``MLproject`` is generated from this table (``python -m brainvq.cli.params > MLproject``) and
``tests/test_params.py`` fails when the two differ, or when a default here differs from the config field it fills.

Torch-free on purpose (the onnxruntime sampler builds its parser from it): defaults are literals, checked against
the config dataclasses by the test rather than imported from them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from brainvq.values import PRECISIONS, image_size, intlike, str2bool

KINDS = {"str": str, "int": intlike, "float": float, "bool": str2bool, "size": image_size}


@dataclass(frozen=True)
class Param:
    """One parameter. ``field`` names the config dataclass field it fills (``module:Class.field``), whose default
    must equal ``default``; ``mlproject=False`` keeps it off the MLproject entry (CLI only)."""

    name: str
    kind: str
    default: object
    help: str
    choices: tuple | None = None
    field: str = ""
    mlproject: bool = True
    aliases: tuple[str, ...] = ()  # older names still accepted (one release), with a one-line deprecation note

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Param {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def mlproject_type(self) -> str:
        return "float" if self.kind in ("int", "float") else "string"

    def spelled(self) -> str:
        """The default as MLproject and MLflow params spell it (booleans lower-case, sizes HxW)."""
        from brainvq.values import param_str

        return param_str(self.default)


@dataclass(frozen=True)
class EntryPoint:
    name: str  # MLproject entry point ("" = CLI only)
    prog: str  # `brainvq <command>`
    script: str  # path from the repository root
    params: tuple[Param, ...]
    # Older names (MLproject entry, and the command with dashes) still run for one release, through the script
    # ``<name>.py`` beside ``script`` that adds a one-line deprecation note.
    legacy: tuple[str, ...] = ()

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)


def P(name, kind, default, help, **kw) -> Param:  # noqa: N802 - reads as a table
    return Param(name, kind, default, help, **kw)


TV = "brainvq.engine.vqvae:TrainConfig"
MV = "brainvq.models.vqvae:VQVAEConfig"
TP = "brainvq.engine.prior:PriorTrainConfig"
MP = "brainvq.models.pixelcnn:PixelCNNConfig"
DEMO = "brainvq.data.demo:DemoConfig"
SLICES = "brainvq.data.volumes:SliceConfig"
EVAL = "brainvq.quality.evaluate:EvalProtocol"

DATA_DIR = P("data_dir", "str", "", "ADNI-layout root with train/ and test/; empty = the bundled demo set")
SEED = P("seed", "int", 0, "random seed (runs are deterministic on CPU)")
DEVICE = P("device", "str", "auto", "auto (cuda, mps, cpu), cpu, cuda or mps")
LEVEL = P("level", "str", "random",
          "slice level in [0, 1] (0 lowest slice of a subject, 1 highest), random (as the data has them) or none; "
          "priors without level_bins ignore it")
PIXEL_TEMPERATURE = P("pixel_temperature", "float", 0.3,
                      "scale of the pixel draw from the decoder's p(x | codes) (VQ-VAEs trained with pixel_noise), "
                      "as temperature is the prior's; 0 = the decoder's mean, a smoother slice")
GUIDANCE_HELP = ("classifier-free guidance w of class-conditional priors: codes drawn from cond + w (cond - "
                 "uncond) logits, uncond the same slice without its class; 0 = none (2x the sampling cost when > 0)")
GUIDANCE = P("guidance", "float", 0.0, GUIDANCE_HELP)
OVERWRITE = P("overwrite", "bool", False,
              "replace an --out folder that holds an earlier run's samples (refused when it holds other files)")
RESUME = P("resume", "bool", False, "continue from this configuration's last checkpoint (of a run that did not finish)")
IMAGE_SIZE = P("image_size", "size", (240, 256), "HxW every slice is padded/cropped to")
VAL_FRACTION = P("val_fraction", "float", 0.2, "share of training subjects held out as the validation split")
CLASSES = P("classes", "str", "",
            "class folders to read, comma-separated, in label order (e.g. CN,AD: CN 0, AD 1); empty = every class "
            "folder, sorted (a tree of exactly AD and NC keeps NC 0, AD 1)")

ENTRY_POINTS: dict[str, EntryPoint] = {e.prog.split()[-1]: e for e in (
    EntryPoint("main", "brainvq pipeline", "pipelines/main.py", (
        P("data_dir", "str", "", "ADNI-layout root; empty = generate and use the demo set"),
        CLASSES,
        P("force", "bool", False, "rerun steps even when a matching FINISHED run exists"),
        P("image_size", "size", (240, 256), "HxW slices are padded/cropped to"),
        # Budgets count optimiser steps, not minutes, so every machine trains the same models and reports the same
        # figures (only the time differs): 20 and 4 epochs are about what 7 and 6.5 minutes bought here before.
        P("vqvae_epochs", "int", 20, "epochs of train_vqvae: the default budget, in steps"),
        P("prior_epochs", "int", 4, "epochs of train_prior: the default budget, in steps"),
        P("vqvae_max_minutes", "float", 0.0, "wall-clock cap of train_vqvae; 0 = none (the epochs decide)"),
        P("prior_max_minutes", "float", 0.0, "wall-clock cap of train_prior; 0 = none (the epochs decide)"),
        P("prior_precision", "str", "fp32", "train_prior's precision: fp32, or bf16 mixed precision (faster on CPUs "
          "with AVX512-BF16; see README, Mixed precision for the prior)", choices=PRECISIONS),
        P("n_samples", "int", 256, "slices generated for evaluation, compared with as many real held-out slices"),
        P("n_subjects", "int", 20,
          "whole subjects generated for evaluate_subjects (each class in turn), compared with the real held-out ones"),
        P("seed", "int", 0, "seed for every step"),
        P("register", "bool", True,
          "register the runs as brainvq-vqvae/-prior/-sampler versions; move `champion` only when better"),
    )),
    EntryPoint("make_demo_data", "brainvq make-demo-data", "pipelines/make_demo_data.py", (
        P("out_dir", "str", "", "output folder; empty = the default demo cache folder (reused if complete)"),
        P("train_subjects", "int", 50, "training subjects (half AD, half NC)", field=f"{DEMO}.train_subjects"),
        P("test_subjects", "int", 14, "test subjects (half AD, half NC)", field=f"{DEMO}.test_subjects"),
        P("seed", "int", 0, "random seed (same seed, same bytes)", field=f"{DEMO}.seed"),
        P("image_size", "size", (240, 256), "HxW of the slices", field=f"{DEMO}.image_size"),
    )),
    EntryPoint("make_slices", "brainvq make-slices", "pipelines/make_slices.py", (
        P("in_dir", "str", "",
          "folder of NIfTI volumes (.nii, .nii.gz): <class>/<subject>.nii.gz, or anywhere in it with labels_csv"),
        P("out_dir", "str", "", "new (or empty) folder for the ADNI layout {train,test}/<class>/<subject>_<slice>.png"),
        P("labels_csv", "str", "",
          "CSV of subject,label (subject = file name without .nii/.nii.gz); empty = classes from folder names"),
        P("slices", "int", 20, "consecutive axial slices per subject", field=f"{SLICES}.slices"),
        P("slice_mm", "float", 2.0, "distance between consecutive slices in mm", field=f"{SLICES}.slice_mm"),
        P("slab_level", "float", 0.5,
          "height of the middle slice in the head/brain's axial extent: 0 its lowest plane, 1 its top",
          field=f"{SLICES}.slab_level"),
        P("pixel_mm", "float", 0.0, "mm per output pixel; 0 = fit: the slab's head/brain box fills 0.9 of the frame",
          field=f"{SLICES}.pixel_mm"),
        P("image_size", "size", (240, 256), "HxW of the slices", field=f"{SLICES}.image_size"),
        P("low_percentile", "float", 0.5, "percentile of the nonzero voxels that becomes black",
          field=f"{SLICES}.low_percentile"),
        P("high_percentile", "float", 99.5, "percentile of the nonzero voxels that becomes white",
          field=f"{SLICES}.high_percentile"),
        P("test_fraction", "float", 0.2, "share of each class's subjects written to test/",
          field=f"{SLICES}.test_fraction"),
        P("seed", "int", 0, "seed of the train/test split", field=f"{SLICES}.seed"),
    )),
    EntryPoint("train_vqvae", "brainvq train-vqvae", "pipelines/train_vqvae.py", (
        DATA_DIR,
        CLASSES,
        P("epochs", "int", 30, "training epochs", field=f"{TV}.epochs"),
        P("batch_size", "int", 8, "images per optimiser step", field=f"{TV}.batch_size"),
        P("lr", "float", 3e-3, "peak Adam learning rate (cosine schedule)", field=f"{TV}.lr"),
        P("latent_dim", "int", 32, "size of each code vector", field=f"{MV}.latent_dim"),
        P("num_embeddings", "int", 64, "codebook size K", field=f"{MV}.num_embeddings"),
        P("downsample", "int", 4, "image-to-code-grid factor", choices=(2, 4, 8), field=f"{MV}.downsample"),
        P("hidden_channels", "int", 48, "encoder/decoder width", field=f"{MV}.hidden_channels"),
        P("num_res_layers", "int", 2, "residual layers in each of encoder and decoder", field=f"{MV}.num_res_layers"),
        P("beta", "float", 0.25, "commitment loss weight", field=f"{MV}.beta"),
        P("ema", "bool", True, "EMA codebook updates with dead-code restart", field=f"{MV}.ema"),
        P("pixel_noise", "bool", True,
          "learn a per-pixel noise scale beside the mean: generation draws slices from p(x | codes), not the mean",
          field=f"{MV}.pixel_noise"),
        P("upsample", "str", "transpose",
          "decoder upsampling: transpose (stride-2 transposed convolutions) or resize (nearest 2x, then a 3x3 conv)",
          choices=("transpose", "resize"), field=f"{MV}.upsample"),
        P("ssim_weight", "float", 0.5, "weight of the (1-SSIM) loss term beside MSE", field=f"{TV}.ssim_weight"),
        VAL_FRACTION,
        P("seed", "int", 0, "random seed (runs are deterministic on CPU)", field=f"{TV}.seed"),
        # The CLI's budget, not the library's: TrainConfig defaults to none.
        P("max_minutes", "float", 8.0, "wall-clock training budget in minutes; 0 = none. Stops cleanly, then tests"),
        P("max_train_images", "int", 0, "cap on training slices; 0 = all"),
        P("image_size", "size", (240, 256), "HxW every slice is padded/cropped to", field=f"{MV}.image_size"),
        P("skip_bad", "bool", False, "skip unreadable PNGs instead of failing"),
        RESUME,
        P("device", "str", "auto", "auto (cuda, mps, cpu), cpu, cuda or mps", field=f"{TV}.device"),
        P("from_study", "str", "", "Optuna study name: retrain its best trial's configuration"),
        P("storage", "str", "sqlite:///optuna.db", "Optuna storage holding --from_study"),
    )),
    EntryPoint("encode_codes", "brainvq encode-codes", "pipelines/encode_codes.py", (
        P("vqvae_run_id", "str", "latest", "train_vqvae run ID, or latest (newest FINISHED one)"),
        P("batch_size", "int", 32, "slices per encoder batch"),
        DEVICE,
    )),
    EntryPoint("train_prior", "brainvq train-prior", "pipelines/train_prior.py", legacy=("train_pixelcnn",), params=(
        P("vqvae_run_id", "str", "latest", "train_vqvae run ID, or latest"),
        P("epochs", "int", 40, "training epochs", field=f"{TP}.epochs"),
        P("batch_size", "int", 4, "code grids per step", field=f"{TP}.batch_size"),
        P("lr", "float", 1e-2, "peak Adam learning rate (cosine schedule)", field=f"{TP}.lr"),
        P("num_layers", "int", 12, "gated layers", field=f"{MP}.num_layers"),
        P("hidden_channels", "int", 32, "channels of each stack", field=f"{MP}.hidden_channels"),
        # Not the config field's default: PixelCNNConfig keeps (1,) so that checkpoints written before dilation
        # existed (their config lacks the key) rebuild the plain model they were trained as. A string, parsed when
        # the config is built, so a bad value is the one-line "bad parameter" error.
        P("dilation_cycle", "str", "1,2,4,8,16",
          "dilation of layers 1, 2, 3, ... repeating (layer 0 is never dilated); 1 = plain gated PixelCNN"),
        P("conditional", "bool", True, "condition on the class (with a null label)", field=f"{MP}.conditional"),
        P("level_bins", "int", 0,
          "also condition on the slice level within its subject, cut into this many bins; 0 = no levels",
          field=f"{MP}.level_bins"),
        P("level_dropout", "float", 0.1, "share of training slices whose level is hidden (level_bins > 0)",
          field=f"{TP}.level_dropout"),
        P("position_rank", "int", 0,
          "rank of a learned 2-D position map per condition added to every layer (where a class differs: "
          "ventricles, cortex); 0 = the row and column tables only", field=f"{MP}.position_rank"),
        # Not the config field's default (False, so older checkpoints rebuild as trained).
        P("slice_context", "bool", True,
          "also condition each slice on the codes of the slice below in its subject, so whole subjects can be "
          "sampled (sample_subjects); needs ADNI-layout names <subject>_<slice>.png"),
        P("slice_dropout", "float", 0.25,
          "share of training slices whose slice below is hidden, so the prior also samples single slices",
          field=f"{TP}.slice_dropout"),
        P("precision", "str", "fp32",
          "fp32, or bf16: mixed precision (the forward pass in bfloat16 under torch.autocast; weights, loss and "
          "optimiser in float32), 1.84x faster per step on a CPU with AVX512-BF16", choices=PRECISIONS,
          field=f"{TP}.precision"),
        P("seed", "int", 0, "random seed", field=f"{TP}.seed"),
        P("max_minutes", "float", 7.0, "wall-clock budget; 0 = none"),  # the CLI's budget; the library's is none
        RESUME,
        P("device", "str", "auto", "auto, cpu, cuda or mps", field=f"{TP}.device"),
    )),
    EntryPoint("evaluate_samples", "brainvq evaluate-samples", "pipelines/evaluate_samples.py", (
        P("prior_run_id", "str", "latest", "train_prior run ID, or latest (ignored with samples_dir)"),
        P("samples_dir", "str", "", "folder of generated PNGs to score instead of a prior run"),
        P("data_dir", "str", "", "ADNI-layout root the samples_dir slices are compared with; empty = the demo set"),
        P("classes", "str", "", f"with samples_dir: {CLASSES.help}"),
        P("val_fraction", "float", 0.2, "with samples_dir: share of training subjects in val"),
        P("image_size", "size", (240, 256), "with samples_dir: HxW slices are fitted to"),
        P("split", "str", "test", "held-out split compared with: test reports, val chooses", choices=("test", "val")),
        P("n_samples", "int", 256,
          "slices generated (every class in turn when conditional) and real held-out slices compared",
          field=f"{EVAL}.n_samples"),
        P("temperature", "float", 1.0, "sampling temperature", field=f"{EVAL}.temperature"),
        P("top_k", "int", 0, "top-k sampling; 0 = all codes", field=f"{EVAL}.top_k"),
        P("guidance", "float", 0.0, GUIDANCE_HELP, field=f"{EVAL}.guidance"),
        P("pixel_temperature", "float", 0.3, PIXEL_TEMPERATURE.help, field=f"{EVAL}.pixel_temperature"),
        P("seed", "int", 0, "seed of sampling and of every classifier", field=f"{EVAL}.seed"),
        # generation, encoding and decoding; the realism classifiers stay on the CPU, so a score never depends on it
        DEVICE,
    )),
    EntryPoint("export_onnx", "brainvq export-onnx", "export/export_onnx.py", (
        P("vqvae_run_id", "str", "latest",
          "train_vqvae run ID or latest (latest/empty: the VQ-VAE the prior was trained on)"),
        P("prior_run_id", "str", "latest", "train_prior run ID, or latest", aliases=("pixelcnn_run_id",)),
        P("opset", "int", 17, "ONNX opset"),
        P("out_dir", "str", "", "where to write the .onnx files (default: a temporary folder)"),
    )),
    EntryPoint("sample", "brainvq sample-onnx", "export/sample_onnx.py", (
        P("model_dir", "str", "latest",
          "folder with the .onnx files, runs:/<id>/onnx, models:/brainvq-sampler@champion (or /<version>), "
          "or latest (newest export_onnx run)"),
        P("n", "int", 16, "number of samples"),
        P("batch_size", "int", 16, "samples generated together"),
        P("label", "str", "none",
          "class to sample: a class name recorded with the model (e.g. AD), none (no class) or all (each in turn)"),
        P("temperature", "float", 1.0, "softmax temperature"),
        P("top_k", "int", 0, "keep only the k most likely codes; 0 = all"),
        P("seed", "int", 0, "random seed (same seed, same codes as `brainvq sample`)"),
        P("out", "str", "samples_onnx", "output folder for sample_000.png... and grid.png"),
        OVERWRITE,
        LEVEL,
        PIXEL_TEMPERATURE,
        GUIDANCE,
        P("provider", "str", "auto", "onnxruntime execution provider", choices=("auto", "cuda", "cpu")),
        P("method", "str", "fast",
          "fast: cached row/step graphs; naive: full prior.onnx once per code (reference, slow)",
          choices=("fast", "naive")),
    )),
    EntryPoint("sample_subjects", "brainvq sample-subjects", "export/sample_subjects.py", (
        P("model_dir", "str", "latest",
          "folder with the .onnx files, runs:/<id>/onnx, models:/brainvq-sampler@champion (or /<version>), "
          "or latest (newest export_onnx run); the prior must have been trained with slice_context"),
        P("n_subjects", "int", 4, "number of subjects, each a stack of `slices` consecutive axial slices"),
        P("label", "str", "all",
          "class of the subjects: a class name recorded with the model (e.g. AD), none, or all (each in turn)"),
        P("slices", "int", 0,
          "slices per subject, bottom to top; 0 = as many as the prior's training subjects had (20 in ADNI)"),
        P("temperature", "float", 1.0, "softmax temperature"),
        P("top_k", "int", 0, "keep only the k most likely codes; 0 = all"),
        GUIDANCE,
        PIXEL_TEMPERATURE,
        P("seed", "int", 0, "random seed (same seed, same subjects as `brainvq sample-subjects` in PyTorch)"),
        P("out", "str", "subjects",
          "output folder: an ADNI-layout OUT/<class>/<subject>_<slice>.png tree plus OUT/nifti/<subject>.nii.gz"),
        P("pixel_mm", "float", 1 / 1.2,
          "mm per pixel recorded in the NIfTI volumes (the demo set's; the cleaned ADNI PNGs carry none: give your "
          "data's, e.g. make-slices' pixel_mm)"),
        P("slice_mm", "float", 2.0, "mm between consecutive slices recorded in the NIfTI volumes (as make-slices')"),
        OVERWRITE,
        P("provider", "str", "auto", "onnxruntime execution provider", choices=("auto", "cuda", "cpu")),
    )),
    EntryPoint("evaluate_subjects", "brainvq evaluate-subjects", "pipelines/evaluate_subjects.py", (
        P("subjects_run_id", "str", "latest",
          "sample_subjects run whose `subjects` artifact is scored, or latest (ignored with subjects_dir)"),
        P("subjects_dir", "str", "", "ADNI-layout folder of generated subjects to score instead of a run's"),
        P("data_dir", "str", "",
          "ADNI-layout root the subjects_dir subjects are compared with; empty = the demo set"),
        P("classes", "str", "", f"with subjects_dir: {CLASSES.help}"),
        P("val_fraction", "float", 0.2, "with subjects_dir: share of training subjects in val"),
        P("image_size", "size", (240, 256), "with subjects_dir: HxW slices are fitted to"),
        P("split", "str", "test", "held-out split compared with: test reports, val chooses", choices=("test", "val")),
        P("augment_fraction", "float", 0.25,
          "share of the real training subjects the augmentation-gain classifiers train on"),
        P("pair_repeats", "int", 1,
          "cross-fits the pair test and its null average, their spread added to the interval: less noise in the "
          "figure (3: sd 0.100 -> 0.088 on the demo's null) for that many times the pair test's time"),
        P("seed", "int", 0, "seed of every classifier"),
    )),
    EntryPoint("", "brainvq sample", "pipelines/sample.py", (
        P("prior_run_id", "str", "latest", "train_prior run ID, or latest"),
        P("n", "int", 16, "number of slices"),
        P("label", "str", "all",
          "class to generate: a class name recorded with the prior (e.g. AD), none (no class) or all (every class "
          "in turn; both = all)"),
        P("temperature", "float", 1.0, "softmax temperature (>0)"),
        P("top_k", "int", 0, "sample among the k most likely codes; 0 = all"),
        P("seed", "int", 0, "random seed (same seed, same slices)"),
        P("batch_size", "int", 16, "slices sampled together"),
        P("out", "str", "samples", "output folder for PNGs and grid.png"),
        OVERWRITE,
        LEVEL,
        PIXEL_TEMPERATURE,
        GUIDANCE,
        DEVICE,
    )),
    EntryPoint("", "brainvq register", "pipelines/register.py", (
        P("vqvae_run_id", "str", "", "train_vqvae run ID or latest; empty = skip"),
        P("prior_run_id", "str", "", "train_prior run ID or latest; empty = skip", aliases=("pixelcnn_run_id",)),
        P("export_run_id", "str", "", "export_onnx run ID or latest; empty = skip"),
    )),
    EntryPoint("", "brainvq cleanup", "pipelines/cleanup.py", (
        P("older_than_hours", "float", 0.0,
          "also close RUNNING runs of other hosts started this long ago; 0 = only runs whose process here is gone"),
        P("dry_run", "bool", False, "list what would be closed, change nothing"),
    )),
    EntryPoint("tune", "brainvq tune", "tuning/tune.py", (
        P("stage", "str", "vqvae", "what to tune", choices=("vqvae", "prior")),
        P("objective", "str", "ssim", "vqvae: max val/ssim, or pareto = also min code bits/image",
          choices=("ssim", "pareto")),
        P("n_trials", "int", 20, "finished trials wanted in the study, all workers and runs together"),
        P("timeout_minutes", "float", 0.0, "this worker starts no trial after this; 0 = none"),
        P("epochs_per_trial", "int", 8, "training epochs per trial"),
        P("max_minutes_per_trial", "float", 0.0, "wall-clock budget per trial; 0 = none"),
        P("study_name", "str", "brainvq-vqvae", "Optuna study; an existing one is resumed"),
        P("storage", "str", "sqlite:///optuna.db", "Optuna storage; PostgreSQL for parallel workers"),
        P("data_dir", "str", "", "ADNI-layout root; empty = the demo set"),
        CLASSES,
        P("vqvae_run_id", "str", "latest", "stage=prior: the train_vqvae run whose codes are modelled"),
        P("seed", "int", 0, "seed for training and the sampler"),
        P("pruner", "str", "median", "early stopping of weak trials", choices=("median", "hyperband", "none")),
        P("space", "str", "", "YAML/JSON file overriding the search space"),
        P("max_train_images", "int", 0, "cap on training slices; 0 = all"),
        P("image_size", "size", (240, 256), "HxW slices are padded/cropped to"),
        VAL_FRACTION,
        P("heartbeat_interval", "int", 30, "seconds between trial heartbeats; 0 = off"),
        P("grace_period", "int", 0, "seconds without heartbeat before a trial is failed; 0 = 2x interval"),
        P("max_retry", "int", 2, "retries of a trial whose worker died"),
        P("device", "str", "auto", "auto, cpu, cuda or mps"),
    )),
)}


def entry_point(command: str) -> EntryPoint:
    """The entry point of a ``brainvq`` command (``train-vqvae``), else of an MLproject entry (``train_vqvae``; the
    MLproject entry ``sample`` is ``brainvq sample-onnx``, the command ``sample`` samples in PyTorch)."""
    if command in ENTRY_POINTS:
        return ENTRY_POINTS[command]
    for e in ENTRY_POINTS.values():
        if command == e.name or command in e.legacy or command in [n.replace("_", "-") for n in e.legacy]:
            return e
    raise KeyError(command)


def build_parser(command: str, description: str | None) -> argparse.ArgumentParser:
    """The argparse parser of an entry point, from the table."""
    from brainvq.cli.args import OneLineParser, add_param

    e = entry_point(command)
    p = OneLineParser(prog=e.prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for prm in e.params:
        kw = {"default": prm.default, "help": prm.help, "type": KINDS[prm.kind]}
        if prm.choices:
            kw["choices"] = list(prm.choices)
        add_param(p, prm.name, aliases=prm.aliases, **kw)
    return p


def _yaml_scalar(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _entry_lines(name: str, script: str, params: list[Param], comment: str = "") -> list[str]:
    lines = [f"  {name}:{comment}", "    parameters:"]
    for p in params:
        default = p.spelled() if p.mlproject_type() == "float" else _yaml_scalar(p.spelled())
        lines.append(f"      {p.name}: {{type: {p.mlproject_type()}, default: {default}}}")
    command = " ".join([f"python {script}"] + [f"--{p.name} {{{p.name}}}" for p in params])
    return lines + [f"    command: {_yaml_scalar(command)}", ""]


def render_mlproject() -> str:
    """The MLproject file: every entry point's parameters and command, in table order, then the legacy names."""
    lines = ["# Generated from brainvq.cli.params by `python -m brainvq.cli.params > MLproject`: edit the table, not",
             "# this file (tests/test_params.py fails when they differ).", "name: brainvq", "",
             "conda_env: conda.yaml", "", "entry_points:"]
    for e in ENTRY_POINTS.values():
        if e.name:
            lines += _entry_lines(e.name, e.script, [p for p in e.params if p.mlproject])
    for e in ENTRY_POINTS.values():
        for old in e.legacy:
            lines += _entry_lines(old, f"{e.script.rsplit('/', 1)[0]}/{old}.py", [p for p in e.params if p.mlproject],
                                  f"  # deprecated name of {e.name}, read for one more release")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_mlproject(), end="")
