"""brainvq: a VQ-VAE and gated PixelCNN prior for 2D brain MRI slices.

Kept import-light on purpose: ``brainvq.export.sample_onnx`` imports this package and must not pull in torch.
"""

__version__ = "0.2.0"
