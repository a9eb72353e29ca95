"""Data: ADNI-layout folders (`adni`), slice files (`images`), the label map (`labels`), code grids (`codes`),
splits (`splits`) and the MNI152-derived demo set (`demo`).

The package itself imports nothing heavy: ``brainvq.data.images`` must stay importable without torch (the ONNX sampler
writes its PNGs with it). The names below load their module on first use (PEP 562).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "adni": ("ADNISplits", "Sample", "SliceDataset", "cache_root", "cap_by_subject", "find_classes", "load_adni",
             "load_split", "scan_split", "split_by_subject", "subject_of"),
    "demo": ("default_demo_dir", "ensure_demo_data", "make_demo_data"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"brainvq.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'brainvq.data' has no attribute {name!r}")
