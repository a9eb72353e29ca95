"""Data: ADNI-layout folders (`adni`), image decoding (`images`) and the MNI152-derived demo set (`demo`)."""

from brainvq.data.adni import (
    ADNISplits,
    Sample,
    SliceDataset,
    cache_root,
    cap_by_subject,
    load_adni,
    load_split,
    scan_split,
    split_by_subject,
    subject_of,
)
from brainvq.data.demo import default_demo_dir, ensure_demo_data, make_demo_data

__all__ = [
    "ADNISplits",
    "Sample",
    "SliceDataset",
    "cache_root",
    "cap_by_subject",
    "default_demo_dir",
    "ensure_demo_data",
    "load_adni",
    "load_split",
    "make_demo_data",
    "scan_split",
    "split_by_subject",
    "subject_of",
]
