"""onnxruntime sampler: load an exported set, pick the execution provider honestly, sample codes, decode, save PNGs.

Imports numpy, onnxruntime, pillow and the standard library only (never torch, not even indirectly): it runs where
only the ONNX files and ``onnxruntime-gpu`` are installed.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from brainvq.data.images import writable_folder, write_slices
from brainvq.data.labels import condition_ids, labels_for, levels_for
from brainvq.errors import ConfigError, ModelFileError, RunError, one_line
from brainvq.export.onnx_meta import FILES, check_set, classes_of
from brainvq.sampling.draw import (
    PIXEL_TEMPERATURE,
    check_sampling_args,
    fast_sample_batch,
    naive_sample_batch,
    pixel_draw,
    uniforms,
)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's units; extra threads only contend)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        pairs, phys = set(), None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "physical id":
                phys = val.strip()
            elif key.strip() == "core id":
                pairs.add((phys, val.strip()))
        cores = len(pairs) or logical
    except OSError:
        cores = logical
    return max(1, min(cores, logical))


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
        step_in = {i.name: i.shape for i in self.sessions["prior_step"].get_inputs()}
        row_in = {i.name: i.shape for i in self.sessions["prior_row"].get_inputs()}
        # decoders trained with pixel_noise export p(x | codes) as two more outputs, loc and scale, beside the mean
        self.has_scale = "scale" in {o.name for o in self.sessions["decoder"].get_outputs()}
        self.hcache_tail = tuple(step_in["hcache"][1:])  # (L, ctx, C)
        self.vcache_tail = tuple(row_in["vcache"][1:])  # (L, w, ctx, C)

    def _session(self, name: str) -> ort.InferenceSession:
        if name in self.sessions:
            return self.sessions[name]
        path = self.dir / FILES[name]
        if not path.is_file():
            raise ModelFileError(f"{path} not found (an export holds {', '.join(FILES.values())})")
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

    def _fns(self):
        row, step = self.sessions["prior_row"], self.sessions["prior_step"]
        row_out, step_out = ["vrow", "vcache_out"], ["logits", "hcache_out"]

        def row_fn(codes_row, vcache, labels, row_index):
            return row.run(row_out, {"codes_row": codes_row, "vcache": vcache, "label": labels, "row": row_index})

        def step_fn(prev, hcache, vrow_j):
            return step.run(step_out, {"prev_code": prev, "hcache": hcache, "vrow_j": vrow_j})

        return row_fn, step_fn

    def full_fn(self, codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``prior.onnx``: logits ``(B,K,h,w)`` of a code grid (the naive sampler's one pass per code)."""
        if "prior" not in self.sessions:  # loaded on first use only; checked against the rest of the set then
            check_set({"decoder": self.meta, "prior": dict(self._session("prior").get_modelmeta().custom_metadata_map)})
        sess = self.sessions["prior"]
        return sess.run(["logits"], {"codes": codes, "label": labels})[0]

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
    ) -> np.ndarray:
        """``(n,h,w)`` int64 codes; same seed, same codes as ``brainvq.sampling.sample_codes`` (fast or naive).
        ``levels``: ``(n,)`` slice levels in [0, 1] (NaN or None: no level), used by exports with level bins."""
        check_sampling_args(n, temperature, top_k, self.num_embeddings, batch_size, method, seed)
        if levels is not None:
            levels = np.broadcast_to(np.asarray(levels, dtype=np.float32), (n,))
        labels = condition_ids(np.broadcast_to(np.asarray(labels, dtype=np.int64), (n,)),
                               levels if self.level_bins else None, self.level_bins)  # what the graphs take
        u = uniforms(n, self.code_shape, seed)
        out = []
        for s in range(0, n, batch_size):
            lab, ub = np.asarray(labels[s : s + batch_size], dtype=np.int64), u[s : s + batch_size]
            if method == "fast":
                b = len(lab)
                out.append(
                    fast_sample_batch(
                        *self._fns(),
                        lab,
                        ub,
                        self.num_embeddings,
                        (b, *self.hcache_tail),
                        (b, *self.vcache_tail),
                        temperature,
                        top_k,
                    )
                )
            else:  # naive (checked above)
                out.append(naive_sample_batch(self.full_fn, lab, ub, temperature, top_k, max_steps=max_steps))
        return np.concatenate(out)

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
) -> dict:
    """What ``brainvq sample-onnx`` does; returns timings and paths. ``level``: see
    :func:`brainvq.data.labels.levels_for` (exports without level bins ignore it)."""
    t0 = time.perf_counter()
    # bad values are one line before anything is loaded (the seed before it seeds the level draw)
    check_sampling_args(n, temperature, top_k, batch_size=batch_size, method=method, seed=seed,
                        pixel_temperature=pixel_temperature)
    levels = levels_for(level, n, seed)
    writable_folder(out, overwrite=overwrite)  # before sampling: a bad --out should not cost a sampling run
    sampler = OnnxSampler(resolve_model_dir(model_dir), provider, threads)
    print(sampler.provider_line, flush=True)
    t1 = time.perf_counter()
    codes = sampler.sample_codes(n, sampler.labels_for(label, n), temperature, top_k, seed, batch_size, method,
                                 levels=levels)
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
