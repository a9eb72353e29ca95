"""onnxruntime sampler: load an exported set, pick the execution provider honestly, sample codes, decode, save PNGs.

Imports numpy, onnxruntime, pillow and the standard library only (never torch, not even indirectly): it runs where
only the ONNX files and ``onnxruntime-gpu`` are installed.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from brainvq.cpus import physical_cores
from brainvq.data.images import publish_folder, writable_folder, write_slices
from brainvq.data.labels import condition_ids, labels_for, levels_for, unconditioned
from brainvq.data.stacks import PIXEL_MM, SLICE_MM
from brainvq.errors import ConfigError, ModelFileError, RunError, one_line
from brainvq.export.onnx_meta import FILES, REQUIRED, check_set, classes_of
from brainvq.sampling.draw import (
    PIXEL_TEMPERATURE,
    check_sampling_args,
    class_guidance,
    fast_sample_batch,
    naive_sample_batch,
    not_given_context,
    pixel_draw,
    sample_stacks,
    stack_conditions,
    stack_uniforms,
    uniforms,
    wavefront_stacks,
)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
STACK_SLICES = 20  # a subject's height when the export does not record its training subjects' (the ADNI layout's)


def resolve_model_dir(spec: str) -> Path:
    """``latest`` (newest FINISHED export_onnx run), a folder, ``runs:/<id>/onnx`` or ``models:/<name>@<alias>``
    (``models:/<name>/<version>``) -> local folder.

    A registered model version stands for the export run that created it: that run's ``onnx/`` artifacts are fetched,
    so decoder and prior always come as the pair they were exported as. ``brainvq-sampler`` versions (see
    ``brainvq.tracking.registry``) are that folder; a version registered from ``decoder_model``/``prior_model``
    works too.
    """
    if spec in ("", "latest"):
        from brainvq.tracking.runs import resolve_run  # torch-free; imports mlflow lazily

        spec = f"runs:/{resolve_run('latest', 'export_onnx').info.run_id}/onnx"
    if not spec.startswith(("runs:/", "models:/")):
        path = Path(spec)
        if not path.is_dir():
            raise ModelFileError(f"model folder not found: {path}")
        return path
    try:
        import mlflow
    except ImportError:
        raise RunError(f"{spec} needs mlflow installed; or pass a local folder with the .onnx files") from None
    from brainvq.tracking.store import check_tracking_store

    check_tracking_store()  # one line in seconds when the server is down, not minutes of MLflow retries
    try:
        if spec.startswith("models:/"):
            from brainvq.tracking.runs import version_run_id  # the one parser of models:/ URIs

            spec = f"runs:/{version_run_id(spec)}/onnx"
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    except RunError:
        raise
    except Exception as exc:  # MlflowException, OSError, bad URI
        raise RunError(f"could not fetch {spec} ({one_line(exc)})") from None


def _options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # keep onnxruntime's CUDA-loading error wall off the console; we print one line
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads that spin between calls take the core the single-threaded step graph needs, and the samplers
    # alternate graphs thousands of times: sleeping workers sample one subject 1.4x faster, batches 1.15x (README,
    # "onnxruntime's threads").
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _no_cuda_reason() -> str:
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no CUDA provider"
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return "no NVIDIA GPU visible (/dev/nvidia* missing)"
    return "the CUDA provider failed to load (onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9 libraries)"


class OnnxSampler:
    """An exported set (``decoder.onnx``, ``prior.onnx``, ``prior_row.onnx``, ``prior_step.onnx``) ready to sample.

    ``provider``: ``auto`` (CUDA when it really runs, else CPU), ``cuda`` (CUDA or a one-line error) or ``cpu``.
    ``provider_line`` says which provider ran and why.
    """

    def __init__(self, model_dir, provider: str = "auto", threads: int | None = None) -> None:
        if provider not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"provider must be auto, cuda or cpu, got {provider!r}")
        self.dir = Path(model_dir)
        self.threads = threads or physical_cores()
        self.requested = provider
        self.providers: list[str] | None = None
        self.provider_line = ""
        self.sessions: dict[str, ort.InferenceSession] = {}
        for name in ("decoder", "prior_row", "prior_step"):
            self._session(name)
        self.meta = check_set({n: dict(s.get_modelmeta().custom_metadata_map) for n, s in self.sessions.items()})
        self.num_embeddings = int(self.meta["brainvq.num_embeddings"])
        self.code_shape = tuple(int(v) for v in self.meta["brainvq.code_shape"].split("x"))
        self.conditional = self.meta.get("brainvq.conditional", "true") == "true"
        self.classes = classes_of(self.meta, str(self.dir / FILES["decoder"]))  # names in label order
        self.level_bins = int(self.meta.get("brainvq.level_bins", "0"))  # exports before levels have none
        # slice-context priors (exports before them have none) also condition on the slice below
        self.slice_context = self.meta.get("brainvq.slice_context", "false") == "true"
        self.stack_slices = int(self.meta.get("brainvq.stack_slices", "0"))  # 0: not recorded
        # > 0: prior_context.onnx takes strips of rows, so subjects sample in a wavefront (0: exports before it)
        self.context_radius = int(self.meta.get("brainvq.context_radius", "0"))
        self._context_inputs: set[str] = set()
        if self.slice_context:
            self._context_inputs = {i.name for i in self._session("prior_context").get_inputs()}
            check_set({"decoder": self.meta,
                       "prior_context": dict(self.sessions["prior_context"].get_modelmeta().custom_metadata_map)})
        step_in = {i.name: i.shape for i in self.sessions["prior_step"].get_inputs()}
        row_in = {i.name: i.shape for i in self.sessions["prior_row"].get_inputs()}
        # decoders trained with pixel_noise export p(x | codes) as two more outputs, loc and scale, beside the mean
        self.has_scale = "scale" in {o.name for o in self.sessions["decoder"].get_outputs()}
        self.hcache_tail = tuple(step_in["hcache"][1:])  # (L, ctx, C)
        self.vcache_tail = tuple(row_in["vcache"][1:])  # the row graph's own: (w, R, C), or (L, w, cache_len, C) before

    def _session(self, name: str) -> ort.InferenceSession:
        if name in self.sessions:
            return self.sessions[name]
        path = self.dir / FILES[name]
        if not path.is_file():
            raise ModelFileError(f"{path} not found (an export holds {', '.join(FILES[n] for n in REQUIRED)}, and "
                                 f"{FILES['prior_context']} when its prior has slice context)")
        first = self.providers is None
        if first:
            want = [CPU] if self.requested == "cpu" else [CUDA, CPU]
            if self.requested != "cpu" and hasattr(ort, "preload_dlls"):
                # preload_dlls finds CUDA/cuDNN installed from pip wheels; it print()s each library it misses.
                with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
                    ort.preload_dlls()
            if CUDA in want and CUDA not in ort.get_available_providers():
                want = [CPU]
        else:
            want = self.providers
        # The CUDA provider's load failure is logged at error level through the default logger, before the session
        # options apply: silence it while we try (the provider line below says what happened).
        ort.set_default_logger_severity(4 if CUDA in want and first else 3)
        # One step is a few 16x128 matmuls: thread hand-off costs more than it saves (0.34 vs 0.82 ms measured on
        # 2 cores), so the step graph runs single-threaded; the row graph and the decoder use every physical core.
        threads = 1 if name == "prior_step" else self.threads
        try:
            sess = ort.InferenceSession(str(path), sess_options=_options(threads), providers=want)
        except Exception as exc:  # truncated/corrupt protobuf, wrong opset, unreadable file
            raise ModelFileError(f"{path} is corrupt or not an ONNX model ({one_line(exc)})") from None
        finally:
            ort.set_default_logger_severity(3)
        if first:
            ran = sess.get_providers()[0]  # what actually runs: CUDA falls back to CPU silently
            if self.requested == "cuda" and ran != CUDA:
                raise ConfigError(
                    f"--provider cuda: CUDAExecutionProvider cannot run here ({_no_cuda_reason()}); "
                    "use --provider auto or cpu"
                )
            self.providers = [CUDA, CPU] if ran == CUDA else [CPU]
            why = {"cpu": "requested with --provider cpu", "cuda": "requested with --provider cuda"}.get(
                self.requested, "CUDA is available and loaded" if ran == CUDA else _no_cuda_reason()
            )
            self.provider_line = f"onnxruntime {ort.__version__}: running on {ran} ({why}; {self.threads} threads)"
        self.sessions[name] = sess
        return sess

    def labels_for(self, label: str, n: int) -> np.ndarray:
        """A class name recorded with the export (``self.classes``), ``none`` or ``all`` (every class in turn) as
        ``(n,)`` label ids (unconditional priors always get ``none``); see :func:`brainvq.data.labels.labels_for`."""
        return labels_for(label, n, self.classes, self.conditional)

    def class_names(self, labels: np.ndarray) -> list[str]:
        """Label ids -> class names (``none`` for the null label)."""
        return [self.classes[i] if i < len(self.classes) else "none" for i in np.asarray(labels).tolist()]

    def _fns(self):
        row, step = self.sessions["prior_row"], self.sessions["prior_step"]
        row_out, step_out = ["vrow", "vcache_out"], ["logits", "hcache_out"]

        def row_fn(codes_row, vcache, labels, row_index):
            return row.run(row_out, {"codes_row": codes_row, "vcache": vcache, "label": labels, "row": row_index})

        def step_fn(prev, hcache, vrow_j):
            return step.run(step_out, {"prev_code": prev, "hcache": hcache, "vrow_j": vrow_j})

        return row_fn, step_fn

    def full_fn(self, codes: np.ndarray, labels: np.ndarray, below: np.ndarray | None = None) -> np.ndarray:
        """``prior.onnx``: logits ``(B,K,h,w)`` of a code grid (the naive sampler's one pass per code); ``below``:
        the slice below's codes for a slice-context export (None: not given)."""
        if "prior" not in self.sessions:  # loaded on first use only; checked against the rest of the set then
            check_set({"decoder": self.meta, "prior": dict(self._session("prior").get_modelmeta().custom_metadata_map)})
        sess = self.sessions["prior"]
        feed = {"codes": codes, "label": labels}
        if self.slice_context:
            feed["below"] = self._unknown(codes.shape) if below is None else below
        return sess.run(["logits"], feed)[0]

    @property
    def _unknown_token(self) -> int:
        return self.num_embeddings + 1  # PixelCNNConfig.unknown_token: "not given"

    def _unknown(self, shape) -> np.ndarray:
        return np.full(shape, self._unknown_token, np.int64)

    def context_fn(self, below: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``prior_context.onnx``: the gate biases ``(B,h,w,L*2C)`` from the slice below's codes ``(B,h,w)``, or
        only rows ``rows (B,R)`` of them ``(B,R,w,L*2C)`` (a :data:`brainvq.sampling.draw.ContextFn`)."""
        sess, below = self.sessions["prior_context"], np.ascontiguousarray(below)
        if "rows" not in self._context_inputs:  # exported before row selection: every row, then pick
            bias = sess.run(["bias"], {"below": below})[0]
            return bias if rows is None else bias[np.arange(len(bias))[:, None], rows]
        if rows is None:
            rows = np.broadcast_to(np.arange(below.shape[1], dtype=np.int64), below.shape[:2])
        return sess.run(["bias"], {"below": below, "rows": np.ascontiguousarray(rows, dtype=np.int64)})[0]

    def _nulls(self, conditions: np.ndarray) -> np.ndarray:
        """``conditions`` without their class, levels kept: the unconditional side of guidance."""
        return unconditioned(conditions, len(self.classes), self.level_bins)  # the null label follows the classes

    def _slice(self, conditions, u, below, temperature, top_k, method, max_steps=None, guidance=0.0) -> np.ndarray:
        """One slice of every grid in a batch: ``conditions (B,)``, ``u (B,h,w)``, ``below (B,h,w)`` or None."""
        b = len(conditions)
        nulls = self._nulls(conditions)
        if method == "fast":
            context = None
            if self.slice_context:
                context = (not_given_context(self.context_fn, b, u.shape[1:], self._unknown_token)
                           if below is None else self.context_fn(below))
            return fast_sample_batch(*self._fns(), conditions, u, self.num_embeddings, (b, *self.hcache_tail),
                                     (b, *self.vcache_tail), temperature, top_k, context=context, guidance=guidance,
                                     null_labels=nulls)
        if guidance > 0 and below is not None:
            below = np.concatenate([below, below])  # the conditional grids, then the same grids without a class
        return naive_sample_batch(lambda c, lab: self.full_fn(c, lab, below), conditions, u, temperature, top_k,
                                  max_steps=max_steps, guidance=guidance, null_labels=nulls)

    def sample_subject_codes(self, n: int, labels: np.ndarray, slices: int = 20, temperature: float = 1.0,
                             top_k: int = 0, seed: int = 0, batch_size: int = 16, method: str = "fast",
                             guidance: float = 0.0) -> np.ndarray:
        """``(n,slices,h,w)`` int64: ``n`` subjects, bottom slice first, each slice conditioned on the one below;
        the same seed gives the same codes as ``brainvq.sampling.torch_sampler.sample_subject_codes``."""
        check_sampling_args(n, temperature, top_k, self.num_embeddings, batch_size, method, seed, guidance=guidance)
        guidance = class_guidance(guidance, self.conditional)
        if not self.slice_context:
            raise ConfigError(f"the export in {self.dir} has no slice context: its prior samples single slices, not "
                              "subjects (train the prior with slice_context=true and export again)")
        if slices < 1:
            raise ConfigError(f"bad parameter: slices must be >= 1, got {slices}")
        conditions = stack_conditions(np.broadcast_to(np.asarray(labels, dtype=np.int64), (n,)), slices,
                                      self.level_bins)  # (n,S)
        u = stack_uniforms(n, slices, self.code_shape, seed)
        bottom = self.num_embeddings  # PixelCNNConfig.bottom_token
        out = []
        for s in range(0, n, batch_size):
            cond, ub = conditions[s : s + batch_size], u[s : s + batch_size]
            if method == "fast" and self.context_radius > 0:  # every slice at once, each a few rows behind
                out.append(wavefront_stacks(*self._fns(), self.context_fn, cond, ub, self.num_embeddings, bottom,
                                            self.hcache_tail, self.vcache_tail, self.context_radius, temperature,
                                            top_k, guidance=guidance, null_conditions=self._nulls(cond)))
            else:
                out.append(sample_stacks(lambda c, ub, below: self._slice(c, ub, below, temperature, top_k, method,
                                                                          guidance=guidance), cond, ub, bottom))
        return np.concatenate(out)

    def sample_codes(
        self,
        n: int,
        labels: np.ndarray,
        temperature: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        batch_size: int = 16,
        method: str = "fast",
        max_steps: int | None = None,
        levels: np.ndarray | None = None,
        guidance: float = 0.0,
    ) -> np.ndarray:
        """``(n,h,w)`` int64 codes; same seed, same codes as ``brainvq.sampling.sample_codes`` (fast or naive).
        ``levels``: ``(n,)`` slice levels in [0, 1] (NaN or None: no level), used by exports with level bins;
        ``guidance``: classifier-free guidance weight (0 = none)."""
        check_sampling_args(n, temperature, top_k, self.num_embeddings, batch_size, method, seed, guidance=guidance)
        guidance = class_guidance(guidance, self.conditional)
        if levels is not None:
            levels = np.broadcast_to(np.asarray(levels, dtype=np.float32), (n,))
        labels = condition_ids(np.broadcast_to(np.asarray(labels, dtype=np.int64), (n,)),
                               levels if self.level_bins else None, self.level_bins)  # what the graphs take
        u = uniforms(n, self.code_shape, seed)
        out = []
        for s in range(0, n, batch_size):
            lab, ub = np.asarray(labels[s : s + batch_size], dtype=np.int64), u[s : s + batch_size]
            out.append(self._slice(lab, ub, None, temperature, top_k, method, max_steps, guidance))
        return np.concatenate(out)

    def sample_subjects(self, n: int, label: str = "all", slices: int = 0, temperature: float = 1.0, top_k: int = 0,
                        seed: int = 0, pixel_temperature: float = PIXEL_TEMPERATURE, batch_size: int = 16,
                        timings: dict | None = None, guidance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` subjects decoded: ``(images (n,S,1,H,W) float32 in [0,1], labels (n,))``, slice 0 the lowest;
        ``slices`` 0: the export's training subjects' height (:data:`STACK_SLICES` when not recorded). Slice ``k``
        of subject ``i`` is the call's slice ``i * S + k`` for the pixel draw. ``timings`` gets ``sample_s`` and
        ``decode_s``."""
        check_sampling_args(n, temperature, top_k, batch_size=batch_size, seed=seed,
                            pixel_temperature=pixel_temperature, guidance=guidance)
        slices = slices or self.stack_slices or STACK_SLICES
        labels = self.labels_for(label, n)
        t0 = time.perf_counter()
        codes = self.sample_subject_codes(n, labels, slices, temperature, top_k, seed, batch_size,
                                          guidance=guidance)  # (n,S,h,w)
        t1 = time.perf_counter()
        images = self.decode(codes.reshape(-1, *codes.shape[2:]), batch_size, seed, pixel_temperature)
        if timings is not None:
            timings.update(sample_s=t1 - t0, decode_s=time.perf_counter() - t1)
        return images.reshape(n, slices, *images.shape[1:]), labels

    def decode(self, codes: np.ndarray, batch_size: int = 16, seed: int | None = None,
               pixel_temperature: float = PIXEL_TEMPERATURE) -> np.ndarray:
        """``(n,h,w)`` int64 codes -> ``(n,1,H,W)`` float32 images in [0,1]: the decoder's mean, or with a ``seed``
        slices drawn from its p(x | codes) at ``pixel_temperature`` when the export has a noise model and that is
        not 0 (the same draw as ``brainvq.sampling.generate.decode_codes``)."""
        dec = self.sessions["decoder"]
        draw = seed is not None and self.has_scale and pixel_temperature > 0
        outputs = ["loc", "scale"] if draw else ["image"]
        out = []
        for s in range(0, len(codes), batch_size):
            res = dec.run(outputs, {"codes": np.ascontiguousarray(codes[s : s + batch_size])})
            out.append(pixel_draw(res[0], res[1], seed, s, pixel_temperature) if draw else res[0])
        return np.concatenate(out)


def sample_to_pngs(
    model_dir: str,
    out: str,
    n: int = 16,
    batch_size: int = 16,
    label: str = "none",
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    provider: str = "auto",
    method: str = "fast",
    threads: int | None = None,
    overwrite: bool = False,
    level: str | float = "random",
    pixel_temperature: float = PIXEL_TEMPERATURE,
    guidance: float = 0.0,
) -> dict:
    """What ``brainvq sample-onnx`` does; returns timings and paths. ``level``: see
    :func:`brainvq.data.labels.levels_for` (exports without level bins ignore it)."""
    t0 = time.perf_counter()
    # bad values are one line before anything is loaded (the seed before it seeds the level draw)
    check_sampling_args(n, temperature, top_k, batch_size=batch_size, method=method, seed=seed,
                        pixel_temperature=pixel_temperature, guidance=guidance)
    levels = levels_for(level, n, seed)
    writable_folder(out, overwrite=overwrite)  # before sampling: a bad --out should not cost a sampling run
    sampler = OnnxSampler(resolve_model_dir(model_dir), provider, threads)
    print(sampler.provider_line, flush=True)
    t1 = time.perf_counter()
    codes = sampler.sample_codes(n, sampler.labels_for(label, n), temperature, top_k, seed, batch_size, method,
                                 levels=levels, guidance=guidance)
    t2 = time.perf_counter()
    images = sampler.decode(codes, batch_size, seed, pixel_temperature)
    t3 = time.perf_counter()
    paths = write_slices(images, out, overwrite=overwrite)
    return {
        "paths": paths,
        "load_s": t1 - t0,
        "sample_s": t2 - t1,
        "decode_s": t3 - t2,
        "total_s": time.perf_counter() - t0,
        "provider": sampler.providers[0],
    }


def sample_subjects_to_folder(
    model_dir: str,
    out: str,
    n_subjects: int = 4,
    label: str = "all",
    slices: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    pixel_temperature: float = PIXEL_TEMPERATURE,
    provider: str = "auto",
    overwrite: bool = False,
    batch_size: int = 16,
    threads: int | None = None,
    guidance: float = 0.0,
    pixel_mm: float = PIXEL_MM,
    slice_mm: float = SLICE_MM,
) -> dict:
    """What ``brainvq sample-subjects`` does: ``n_subjects`` subjects of ``slices`` slices each, written as
    ``out/<class>/<subject>_<slice>.png`` and ``out/nifti/<subject>.nii.gz`` (:mod:`brainvq.data.stacks`). All or
    nothing: written into a hidden folder beside ``out`` that then takes its place. Returns timings and paths."""
    from brainvq.data.stacks import SYNTHETIC_PREFIX, subject_ids, write_subjects

    for name, value in (("pixel_mm", pixel_mm), ("slice_mm", slice_mm)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"bad parameter: {name} must be a finite number of mm > 0, got {value}")

    t0 = time.perf_counter()
    check_sampling_args(n_subjects, temperature, top_k, batch_size=batch_size, seed=seed,
                        pixel_temperature=pixel_temperature, guidance=guidance)
    if slices == 1 or slices < 0:
        raise ConfigError(f"bad parameter: slices must be >= 2 (a subject is a stack of slices), or 0 for as many "
                          f"as the training subjects had, got {slices}")
    # Before sampling: new or empty, or (overwrite) holding only an earlier call's subjects (synth-* files below it).
    path = writable_folder(out, overwrite=overwrite, ours=(f"{SYNTHETIC_PREFIX}*",), deep=True)
    sampler = OnnxSampler(resolve_model_dir(model_dir), provider, threads)
    print(sampler.provider_line, flush=True)
    t1 = time.perf_counter()
    timings: dict[str, float] = {}
    images, labels = sampler.sample_subjects(n_subjects, label, slices, temperature, top_k, seed, pixel_temperature,
                                             batch_size, timings, guidance=guidance)  # (n,S,1,H,W)
    slices = images.shape[1]
    names = sampler.class_names(labels)
    written: dict[str, list[Path]] = {}

    def fill(staged: Path) -> list[Path]:
        written.update(write_subjects(staged, images, names, subject_ids(n_subjects, seed), pixel_mm, slice_mm))
        return written["pngs"] + written["volumes"]

    paths = publish_folder(path, fill, overwrite)
    n_pngs = len(written["pngs"])
    return {
        "pngs": paths[:n_pngs],
        "volumes": paths[n_pngs:],
        "classes": names,
        "slices": slices,
        "load_s": t1 - t0,
        "sample_s": timings["sample_s"],
        "decode_s": timings["decode_s"],
        "total_s": time.perf_counter() - t0,
        "provider": sampler.providers[0],
        "model_dir": sampler.dir,
        "meta": sampler.meta,
    }
