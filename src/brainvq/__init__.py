"""brainvq: a VQ-VAE and gated PixelCNN prior for 2D brain MRI slices.

Kept import-light on purpose: ``brainvq.export.sample_onnx`` imports this package and must not pull in torch.
:func:`load_sampler` imports the onnxruntime sampler when it is called, not before.
"""

__version__ = "0.2.0"


def load_sampler(spec: str = "latest", provider: str = "auto", threads: int | None = None):
    """An exported sampler, torch-free: ``load_sampler("models:/brainvq-sampler@champion").sample(16, label="AD",
    seed=0)`` gives ``(16, 1, H, W)`` float32 slices in [0, 1], those ``brainvq sample-onnx`` writes for the same
    arguments. ``spec``: ``models:/<name>@<alias>`` (or ``/<version>``), ``runs:/<export run id>/onnx`` (or
    ``/sampler``), a folder with the ``.onnx`` files, or ``latest``. See :mod:`brainvq.export.api`."""
    from brainvq.export.api import load_sampler as load  # the package's front door: the one import that points up

    return load(spec, provider, threads)
