"""What the exported ONNX files carry in ``metadata_props`` and how the sampler checks they belong together.

Torch-free and onnx-free: the exporter writes these keys, the onnxruntime sampler reads them back through
``session.get_modelmeta().custom_metadata_map``.
"""

from __future__ import annotations

import hashlib
import json

from brainvq.data.labels import LEGACY_CLASSES, label_ids
from brainvq.errors import ModelFileError

# name -> file; "decoder" and "prior" are the user-facing graphs, the other two drive the fast sampler.
FILES = {
    "decoder": "decoder.onnx",
    "prior": "prior.onnx",
    "prior_row": "prior_row.onnx",
    "prior_step": "prior_step.onnx",
    # slice-context priors only: the codes of the slice below -> every layer's gate bias (sample_subjects)
    "prior_context": "prior_context.onnx",
}
REQUIRED = ("decoder", "prior", "prior_row", "prior_step")  # in every export; prior_context when slice_context


def pair_id(parts: list[str]) -> str:
    """Short stable hash of everything that ties a decoder to a prior (run ids, configs, weight digests)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def build_metadata(
    graph: str,
    pid: str,
    version: str,
    vqvae_run_id: str,
    prior_run_id: str,
    num_embeddings: int,
    code_shape: tuple[int, int],
    image_size: tuple[int, int],
    conditional: bool,
    num_layers: int,
    hidden_channels: int,
    kernel_size: int,
    dilation_cycle: tuple[int, ...],
    level_bins: int = 0,
    classes: tuple[str, ...] = LEGACY_CLASSES,
    slice_context: bool = False,
    stack_slices: int = 0,
    context_radius: int = 0,
) -> dict[str, str]:
    """The ``metadata_props`` of one exported file, every value a string (shapes of caches come from the graphs' own
    input shapes); ``classes``: the prior's class names in label order."""
    return {
        "brainvq.version": version,
        "brainvq.graph": graph,
        "brainvq.pair_id": pid,
        "brainvq.vqvae_run_id": vqvae_run_id or "",
        "brainvq.prior_run_id": prior_run_id or "",
        "brainvq.num_embeddings": str(num_embeddings),
        "brainvq.code_shape": f"{code_shape[0]}x{code_shape[1]}",
        "brainvq.image_size": f"{image_size[0]}x{image_size[1]}",
        "brainvq.labels": json.dumps(label_ids(classes)),
        "brainvq.conditional": str(bool(conditional)).lower(),
        "brainvq.num_layers": str(num_layers),
        "brainvq.hidden_channels": str(hidden_channels),
        "brainvq.kernel_size": str(kernel_size),
        "brainvq.dilation_cycle": ",".join(map(str, dilation_cycle)),
        # the graphs' label input takes condition ids: label * (level_bins + 1) + level bin when this is not 0
        "brainvq.level_bins": str(int(level_bins)),
        # "true": prior.onnx takes a third input, below, and prior_context.onnx is part of the set
        "brainvq.slice_context": str(bool(slice_context)).lower(),
        "brainvq.stack_slices": str(int(stack_slices)),  # slices per training subject: a subject's default height
        # rows of the slice below that prior_context.onnx reads on each side of a row; set, its rows are dynamic and
        # subjects are sampled in a wavefront (exports before it: slice after slice, the same codes, slower)
        "brainvq.context_radius": str(int(context_radius)),
    }


def classes_of(meta: dict[str, str], name: str = "the export") -> tuple[str, ...]:
    """The class names, in label order, an export's metadata records (``brainvq.labels``); exports without the key
    predate it and were trained on NC (0) and AD (1)."""
    text = meta.get("brainvq.labels")
    if text is None:
        return LEGACY_CLASSES
    try:
        ids = json.loads(text)
        ids = {str(k): int(v) for k, v in ids.items() if k != "none"}
    except (ValueError, TypeError, AttributeError):
        raise ModelFileError(f"{name}: brainvq.labels metadata is not a class map ({text[:80]!r})") from None
    classes = tuple(sorted(ids, key=ids.get))
    if sorted(ids.values()) != list(range(len(ids))):
        raise ModelFileError(f"{name}: brainvq.labels metadata does not number its classes 0..{len(ids) - 1}")
    return classes


def check_set(metas: dict[str, dict[str, str]]) -> dict[str, str]:
    """Check that the files of one set come from the same export; return the shared metadata.

    ``metas`` maps a graph name (see ``FILES``) to its metadata; raises :class:`ModelFileError` in one line.
    """
    for name, meta in metas.items():
        missing = [k for k in ("brainvq.pair_id", "brainvq.num_embeddings", "brainvq.code_shape") if k not in meta]
        if missing:
            raise ModelFileError(
                f"{FILES.get(name, name)} is not a brainvq export (metadata lacks {', '.join(missing)})"
            )
    ref_name = "decoder" if "decoder" in metas else next(iter(metas))
    ref = metas[ref_name]
    for name, meta in metas.items():
        for key, what in (("brainvq.num_embeddings", "codebook size"), ("brainvq.code_shape", "code grid")):
            if meta[key] != ref[key]:
                raise ModelFileError(
                    f"{FILES[name]} and {FILES[ref_name]} disagree on the {what} "
                    f"({meta[key]} vs {ref[key]}): they come from different models"
                )
        if meta["brainvq.pair_id"] != ref["brainvq.pair_id"]:

            def runs(m: dict[str, str]) -> str:  # files of older exports name the prior brainvq.pixelcnn_run_id
                prior = m.get("brainvq.prior_run_id") or m.get("brainvq.pixelcnn_run_id") or "?"
                return f"vqvae {m.get('brainvq.vqvae_run_id') or '?'}, prior {prior}"

            raise ModelFileError(
                f"{FILES[name]} ({runs(meta)}) and {FILES[ref_name]} ({runs(ref)}) come from different "
                "exports; export decoder and prior together with `brainvq export-onnx`"
            )
    return dict(ref)
