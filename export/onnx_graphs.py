"""Export a VQ-VAE decoder and a gated PixelCNN prior (full, row-step and position-step graphs) to ONNX.

Exporter chosen on purpose: the legacy TorchScript exporter (``dynamo=False``) with ``dynamic_axes`` for the batch.
It needs no onnxscript, traces the shift/crop convolutions and the cached step modules as plain ops, and
onnxruntime matched PyTorch to ~1e-6 here (see PITFALLS.md). None of these graphs contains ArgMin/ArgMax
(the decoder takes indices; sampling happens in numpy), so the CUDA provider runs every node.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

import brainvq
from brainvq.export.onnx_meta import FILES, build_metadata, pair_id


class DecoderGraph(nn.Module):
    """``codes (B,h,w) int64 -> image (B,1,H,W)`` in [0,1] (the mean), and ``loc``, ``scale`` ``(B,1,H,W)`` of
    p(x | codes) when the VQ-VAE has a noise model (``pixel_noise``); the codebook lookup is a Gather inside the
    graph. The pixel draw stays outside it (numpy, seeded: ``brainvq.sampling.draw.pixel_draw``)."""

    def __init__(self, vqvae) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, codes: torch.Tensor):
        d = self.vqvae.decode_indices_distribution(codes)
        return d.mean if d.scale is None else (d.mean, d.loc, d.scale)


def _uses(x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged but formally depending on ``label``: the tracer drops unused inputs, and an unconditional
    prior must keep the same graph interface (label accepted and ignored) as a conditional one."""
    return x + (label[0] * 0).to(x.dtype)


class PriorGraph(nn.Module):
    """``codes (B,h,w) int64, label (B,) int64 -> logits (B,K,h,w)``; a slice-context prior also takes
    ``below (B,h,w) int64``, the codes of the slice below (or its bottom / unknown token everywhere)."""

    def __init__(self, prior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, codes: torch.Tensor, label: torch.Tensor, below: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.prior(codes, label, below).logits
        return logits if self.prior.config.conditional else _uses(logits, label)


class ContextGraph(nn.Module):
    """``below (B,h,w) int64, rows (B,R) int64 -> bias (B,R,w,L*2C)``, those rows of each grid's bias:
    :class:`brainvq.models.pixelcnn.SliceContextNet`. Exports before ``rows`` returned every row."""

    def __init__(self, prior) -> None:
        super().__init__()
        self.net = prior.context_module().eval()

    def forward(self, below: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.net(below, rows).bias


class RowGraph(nn.Module):
    """:class:`brainvq.models.pixelcnn.PixelCNNRowStep` with a fixed interface (label kept when unconditional)."""

    def __init__(self, prior) -> None:
        super().__init__()
        self.row, self.conditional = prior.row_module().eval(), prior.config.conditional

    def forward(self, codes_row, vcache, label, row):
        vrow, vcache = self.row(codes_row, vcache, label, row)
        return (vrow if self.conditional else _uses(vrow, label)), vcache


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter about the legacy exporter
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False, do_constant_folding=True)


def _stamp(path: Path, meta: dict[str, str]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def export_models(vqvae, prior, out_dir, opset: int = 17, meta: dict | None = None) -> dict[str, Path]:
    """Write ``decoder.onnx``, ``prior.onnx``, ``prior_row.onnx`` and ``prior_step.onnx`` to ``out_dir``, and
    ``prior_context.onnx`` for a prior with ``slice_context``.

    ``meta`` may carry ``vqvae_run_id`` and ``prior_run_id``; every file gets the same metadata (codebook size,
    code grid, image size, the class map, conditional, versions, run ids) and a shared pair id. Returns
    ``{name: path}``.
    """
    meta = dict(meta or {})
    vc, pc = vqvae.config, prior.config
    pc.check_decoder(vc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vqvae, prior = vqvae.cpu().eval(), prior.cpu().eval()
    vq_id, px_id = str(meta.get("vqvae_run_id") or ""), str(meta.get("prior_run_id") or "")
    pid = pair_id([vq_id, px_id, json.dumps(vc.to_dict(), sort_keys=True), json.dumps(pc.to_dict(), sort_keys=True),
                   _digest(vqvae), _digest(prior)])
    b, (h, w) = 2, pc.code_shape
    codes = torch.zeros(b, h, w, dtype=torch.int64)
    labels = torch.full((b,), pc.null_label, dtype=torch.int64)
    batch = {0: "batch"}
    paths = {name: out / fname for name, fname in FILES.items() if name != "prior_context" or pc.slice_context}
    dec_out = ["image", "loc", "scale"] if vc.pixel_noise else ["image"]
    _export(DecoderGraph(vqvae), (codes,), paths["decoder"], ["codes"], dec_out,
            {"codes": batch, **{name: batch for name in dec_out}}, opset)
    if pc.slice_context:
        below = torch.full((b, h, w), pc.unknown_token, dtype=torch.int64)
        _export(PriorGraph(prior), (codes, labels, below), paths["prior"], ["codes", "label", "below"], ["logits"],
                {"codes": batch, "label": batch, "below": batch, "logits": batch}, opset)
        # rows are dynamic too: the wavefront sampler feeds strips of 2 * radius + 1 rows and asks for one of each
        rows = torch.arange(h, dtype=torch.int64).expand(b, h)
        _export(ContextGraph(prior), (below, rows), paths["prior_context"], ["below", "rows"], ["bias"],
                {"below": {0: "batch", 1: "height"}, "rows": {0: "batch", 1: "rows"},
                 "bias": {0: "batch", 1: "rows"}}, opset)
    else:
        _export(PriorGraph(prior), (codes, labels), paths["prior"], ["codes", "label"], ["logits"],
                {"codes": batch, "label": batch, "logits": batch}, opset)
    _export(RowGraph(prior), (codes[:, 0], torch.zeros(pc.vcache_shape(b)), labels, torch.ones(1, dtype=torch.int64)),
            paths["prior_row"], ["codes_row", "vcache", "label", "row"], ["vrow", "vcache_out"],
            {"codes_row": batch, "vcache": batch, "label": batch, "vrow": {1: "batch"}, "vcache_out": batch}, opset)
    step = prior.step_module().eval()
    _export(step, (labels, torch.zeros(pc.hcache_shape(b)), torch.zeros(b, pc.num_layers, 2 * pc.hidden_channels)),
            paths["prior_step"], ["prev_code", "hcache", "vrow_j"], ["logits", "hcache_out"],
            {"prev_code": batch, "hcache": batch, "vrow_j": batch, "logits": batch, "hcache_out": batch}, opset)
    for name, path in paths.items():
        _stamp(path, build_metadata(
            name, pid, brainvq.__version__, vq_id, px_id, pc.num_embeddings, pc.code_shape, vc.image_size,
            pc.conditional, pc.num_layers, pc.hidden_channels, pc.kernel_size, pc.dilation_cycle, pc.level_bins,
            pc.classes, pc.slice_context, pc.stack_slices,
            prior.context_module().radius if pc.slice_context else 0))
    return paths
