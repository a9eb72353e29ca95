"""INTERIM loader (lead's stand-in until the data module lands)."""
from __future__ import annotations
from dataclasses import dataclass
from pathlib import Path
import numpy as np, torch
from PIL import Image
from brainvq.errors import DataError

class SliceDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, subjects, paths):
        self.images, self.labels, self.subjects, self.paths = images, np.asarray(labels, np.int64), list(subjects), list(paths)
    def __len__(self): return len(self.images)
    def __getitem__(self, i): return torch.from_numpy(self.images[i].astype(np.float32) / 255)[None], int(self.labels[i])
    def batch(self, idx):
        idx = np.asarray(idx)
        return torch.from_numpy(self.images[idx].astype(np.float32) / 255)[:, None], torch.from_numpy(self.labels[idx])
    def subset(self, idx):
        idx = np.asarray(idx, dtype=int)
        return SliceDataset(self.images[idx], self.labels[idx], [self.subjects[i] for i in idx], [self.paths[i] for i in idx])

@dataclass
class ADNISplits:
    train: SliceDataset; val: SliceDataset; test: SliceDataset; root: str; skipped: int

def _load(root, split, size):
    d = Path(root) / split
    if not d.is_dir(): raise DataError(f"missing split folder {d}")
    files = sorted(d.glob("*/*.png")) + sorted(d.glob("*.png"))
    if not files: raise DataError(f"no PNG files in {d}")
    H, W = size; imgs = np.zeros((len(files), H, W), np.uint8)
    for k, f in enumerate(files):
        a = np.asarray(Image.open(f).convert("L")); h, w = a.shape
        hh, ww = min(h, H), min(w, W)
        imgs[k, (H-hh)//2:(H-hh)//2+hh, (W-ww)//2:(W-ww)//2+ww] = a[(h-hh)//2:(h-hh)//2+hh, (w-ww)//2:(w-ww)//2+ww]
    labels = [{"AD": 1, "NC": 0}.get(f.parent.name, -1) for f in files]
    subjects = [f.stem.rsplit("_", 1)[0] for f in files]
    return SliceDataset(imgs, labels, subjects, [str(f) for f in files])

def load_adni(root, image_size=(240, 256), val_fraction=0.1, seed=0, skip_bad=False, cache_dir=None, max_train_images=0):
    if not Path(root).is_dir(): raise DataError(f"data_dir {root} does not exist")
    tr, te = _load(root, "train", image_size), _load(root, "test", image_size)
    subs = sorted(set(tr.subjects)); rng = np.random.default_rng(seed); rng.shuffle(subs)
    nv = int(round(len(subs) * val_fraction)); vs = set(subs[:nv])
    vi = [i for i, s in enumerate(tr.subjects) if s in vs]; ti = [i for i, s in enumerate(tr.subjects) if s not in vs]
    if max_train_images: ti = ti[:max_train_images]
    return ADNISplits(tr.subset(ti), tr.subset(vi), te, str(root), 0)
