"""ADNI-layout demo set generated from the MNI152 2009a template that nilearn ships inside its package (no download).

Each synthetic subject is the template under a random affine, a smooth elastic warp, a multiplicative bias field,
an intensity change and mild noise; AD subjects also get ventricle enlargement and cortical thinning. 20 consecutive
axial slices per subject, written as ``OUT/{train,test}/{AD,NC}/<subject>_<slice>.png`` (8-bit grey, 256×240).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from brainvq.data.images import new_output_folder, write_subject
from brainvq.errors import DataError

log = logging.getLogger(__name__)
VERSION = "demo-v1"
GENERATOR_REVISION = 2  # bump when the pictures change: part of the cache key
MARKER = "brainvq_demo.json"  # written last: its presence means the set is complete
SLICE_STEP = 2  # mm between consecutive slices: 20 slices span the ventricles like the cleaned ADNI slices
Z_MID = 82  # template voxel index (z) of the slab's centre: mid-ventricle level
SLAB_MARGIN = 16  # template slices kept beyond the slab: covers the drawn z shift (±3) and tilt (≤ ±4°)
_CENTRE = (98.0, 116.0)  # brain centre in template voxels (x, y)
_PIXEL_SCALE = 1.2  # output pixels per mm at 240x256, so the brain fills most of the frame as in cleaned ADNI


@dataclass(frozen=True)
class DemoConfig:
    """Validated parameters of a demo set (they also key its cache folder)."""

    train_subjects: int = 50
    test_subjects: int = 14
    seed: int = 0
    slices_per_subject: int = 20
    image_size: tuple[int, int] = (240, 256)  # (H, W)

    def __post_init__(self) -> None:
        for name in ("train_subjects", "test_subjects"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2 (one AD and one NC subject), got {getattr(self, name)}")
        if not 1 <= self.slices_per_subject <= 40:
            raise ValueError(f"slices_per_subject must be in [1, 40], got {self.slices_per_subject}")
        size = tuple(int(s) for s in self.image_size)
        object.__setattr__(self, "image_size", size)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(f"image_size must be two sizes >= 16, got {self.image_size}")


def _template_dir() -> Path:
    """nilearn's bundled data folder, which holds the MNI152 2009a template files."""
    try:
        import nilearn
    except ImportError:
        raise DataError("the demo set needs nilearn (pip install nilearn): it ships the MNI152 template") from None
    return Path(nilearn.__file__).parent / "datasets" / "data"


def load_template(slices_per_subject: int = 20) -> dict[str, np.ndarray]:
    """MNI152 2009a T1 times a filled brain mask, normalised so white matter is ~0.8, ``(x, y, z)`` at 1 mm.

    Only the axial slab that ``slices_per_subject`` slices can reach is kept (``"t1"``; ``"z_lo"`` is its first
    template slice), which keeps the trilinear sampling cache-friendly.
    """
    import nibabel as nib

    d = _template_dir()
    vols = {}
    for name in ("t1", "gm", "wm"):
        path = d / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
        if not path.exists():
            raise DataError(f"MNI152 template file not found: {path} (nilearn >= 0.11 ships it)")
        vols[name] = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    brain = ndimage.binary_closing((vols["gm"] + vols["wm"]) > 0.25, iterations=2)
    for z in range(brain.shape[2]):  # fill each axial slice so the ventricles belong to the brain
        brain[:, :, z] = ndimage.binary_fill_holes(brain[:, :, z])
    t1 = np.clip(vols["t1"] / np.percentile(vols["t1"][brain], 99.5), 0, 1.2)
    half = SLICE_STEP * slices_per_subject // 2 + SLAB_MARGIN
    z_lo, z_hi = max(0, Z_MID - half), min(t1.shape[2], Z_MID + half + 1)
    # skull-stripped like the cleaned ADNI slices
    return {"t1": np.ascontiguousarray((t1 * brain)[:, :, z_lo:z_hi]), "z_lo": np.int64(z_lo)}


@dataclass(frozen=True)
class _Draw:
    """One subject's random variation (all drawn up front so the draw order never depends on the image size)."""

    theta: float  # in-plane rotation (rad)
    tilt: tuple[float, float]  # slab tilt: z change per mm along x and y (small 3-D rotation)
    scale: tuple[float, float]
    shift: tuple[float, float]  # mm
    z0: int
    warp: np.ndarray  # (4, c, c) coarse elastic grids: rows/cols at the slab's bottom and top
    bias: np.ndarray  # (c, c) coarse bias grid
    gain: float
    gamma: float
    ventricles: float  # ventricle growth in mm (negative shrinks)
    thinning: float  # cortical thinning strength in [0, 1]
    noise_seed: int


def _draw(rng: np.random.Generator, ad: bool) -> _Draw:
    """Draw one subject's variation; AD subjects get ventricle growth and cortical thinning."""
    return _Draw(
        theta=float(np.deg2rad(rng.uniform(-5, 5))),
        tilt=(float(np.tan(np.deg2rad(rng.uniform(-3, 3)))), float(np.tan(np.deg2rad(rng.uniform(-4, 4))))),
        scale=(float(rng.uniform(0.95, 1.05)), float(rng.uniform(0.95, 1.05))),
        shift=(float(rng.uniform(-4, 4)), float(rng.uniform(-4, 4))),
        z0=int(rng.integers(-3, 4)),
        warp=rng.normal(0, 1, (4, 6, 6)),
        bias=rng.normal(0, 1, (4, 4)),
        gain=float(rng.uniform(0.92, 1.05)),
        gamma=float(rng.uniform(1.3, 1.6)),  # T1 tone: contrast between grey and white matter as in ADNI exports
        ventricles=float(rng.uniform(3.0, 5.5) if ad else rng.uniform(-1.0, 1.0)),
        thinning=float(rng.uniform(0.6, 1.0) if ad else 0.0),
        noise_seed=int(rng.integers(2**31)),
    )


def _upsample(g: np.ndarray, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """Coarse grid ``g`` (c, c) -> smooth field ``shape`` scaled to peak ``amplitude``."""
    f = ndimage.zoom(g, (shape[0] / g.shape[0], shape[1] / g.shape[1]), order=3, grid_mode=True, mode="nearest")
    f = f[: shape[0], : shape[1]]
    return (amplitude * f / (np.abs(f).max() + 1e-8)).astype(np.float32)


def _render(t1: np.ndarray, z_lo: int, p: _Draw, n_slices: int, size: tuple[int, int]) -> np.ndarray:
    """Sample the slab ``(S, H, W)`` float32 of one subject from the template (one trilinear pass)."""
    h, w = size
    px = _PIXEL_SCALE * min(h / 240, w / 256)  # output pixels per mm: the brain fills the frame at any size
    t = np.linspace(0, 1, n_slices, dtype=np.float32)[:, None, None]  # (S,1,1) position in the slab
    warp_r = (1 - t) * _upsample(p.warp[0], size, 2.0) + t * _upsample(p.warp[2], size, 2.0)  # (S,H,W) pixels
    warp_c = (1 - t) * _upsample(p.warp[1], size, 2.0) + t * _upsample(p.warp[3], size, 2.0)
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    v = (rr - h / 2 + warp_r * px / _PIXEL_SCALE) / px  # (S,H,W) mm, image rows
    u = (cc - w / 2 + warp_c * px / _PIXEL_SCALE) / px
    cos, sin = np.cos(p.theta), np.sin(p.theta)
    xu = (cos * u - sin * v) / p.scale[0] + p.shift[0]
    yv = (sin * u + cos * v) / p.scale[1] + p.shift[1]
    z = (Z_MID + p.z0 - z_lo) + SLICE_STEP * (np.arange(n_slices, dtype=np.float32) - n_slices / 2)[:, None, None]
    # radiological axial view: nose (template +y) up, subject's left (template -x) on the image right
    coords = np.stack([_CENTRE[0] - xu, _CENTRE[1] - yv, z + p.tilt[0] * xu + p.tilt[1] * yv])  # (3,S,H,W)
    return ndimage.map_coordinates(t1, coords, order=1, mode="constant", output=np.float32)


def _enlarge_ventricles(img: np.ndarray, brain: np.ndarray, mm: float, px: float) -> np.ndarray:
    """Push tissue away from the deep dark interior (ventricles) by ~``mm``: a smooth displacement, no seams."""
    window = 2 * int(12 * px) + 1
    deep = ndimage.uniform_filter(brain.astype(np.float32), size=(1, window, window)) > 0.999
    csf = (deep & (img < 0.4)).astype(np.float32)  # (S,H,W) ventricle CSF inferred from low intensity inside
    g = ndimage.gaussian_filter(csf, sigma=(0, 3 * px, 3 * px))
    gr, gc = np.gradient(g, axis=(1, 2))
    norm = float(np.hypot(gr, gc).max()) + 1e-8
    d = mm * px / norm
    moved = np.nonzero(np.hypot(gr, gc) * abs(d) > 0.02)  # resample only where pixels move (~1/4 of the brain)
    kk, rr, cc = (a.astype(np.float32) for a in moved)
    # sampling up the gradient (towards the CSF) shows CSF further out: the ventricles grow, tissue moves outward
    coords = np.stack([kk, rr + d * gr[moved], cc + d * gc[moved]])  # (3, M)
    out = img.copy()
    out[moved] = ndimage.map_coordinates(img, coords, order=1, mode="nearest", output=np.float32)
    return out


def _thin_cortex(img: np.ndarray, brain: np.ndarray, strength: float, px: float) -> np.ndarray:
    """Cortical thinning: grey-level erosion (wider sulci, thinner gyri) blended in near the brain's outer surface."""
    k = 2 * max(1, int(round(4 * px))) + 1
    outer = ndimage.uniform_filter(brain.astype(np.float32), size=(1, k, k)) < 0.999  # within ~4 mm of the surface
    eroded = ndimage.grey_erosion(img, size=(1, 3, 3))
    band = ndimage.gaussian_filter((outer & brain).astype(np.float32), sigma=(0, 1, 1))
    return img + strength * band * (eroded - img) - 0.06 * strength * band * img


def _subject(tpl: dict, rng: np.random.Generator, ad: bool, cfg: DemoConfig) -> np.ndarray:
    """``slices_per_subject`` slices ``(S,H,W)`` uint8 of one synthetic subject."""
    p = _draw(rng, ad)
    size = cfg.image_size
    px = _PIXEL_SCALE * min(size[0] / 240, size[1] / 256)
    img = _render(tpl["t1"], int(tpl["z_lo"]), p, cfg.slices_per_subject, size)  # (S,H,W) in ~[0, 1.2]
    brain = img > 0.02
    if p.ventricles:
        img = _enlarge_ventricles(img, brain, p.ventricles, px)
    if p.thinning:
        img = _thin_cortex(img, brain, p.thinning, px)
    bias = 1.0 + _upsample(p.bias, size, 0.08)  # (H,W) multiplicative, smooth
    img = np.clip(img * p.gain, 0, 1) ** p.gamma * bias
    noise = np.random.default_rng(p.noise_seed).normal(0, 0.01, (2, *img.shape)).astype(np.float32)
    img = np.where(brain, np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2), 0)  # mild Rician noise inside the brain
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_demo_data(
    out: str | os.PathLike,
    train_subjects: int = 50,
    test_subjects: int = 14,
    seed: int = 0,
    slices_per_subject: int = 20,
    image_size=(240, 256),
    progress: bool = True,
) -> Path:
    """Write the demo set to ``out`` (created; must be empty or absent). Deterministic for a seed."""
    try:
        cfg = DemoConfig(train_subjects, test_subjects, seed, slices_per_subject, tuple(image_size))
    except ValueError as exc:
        raise DataError(f"make_demo_data: {exc}") from None
    out = new_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {out} ({exc.strerror})") from None
    tpl = load_template(cfg.slices_per_subject)
    jobs = [(split, i) for split, n in (("train", cfg.train_subjects), ("test", cfg.test_subjects)) for i in range(n)]
    for number, (split, i) in enumerate(
        tqdm(jobs, desc="demo subjects", unit="subject", disable=not progress, leave=False)
    ):
        ad = i % 2 == 1  # alternate classes: half AD, half NC in each split
        label = "AD" if ad else "NC"
        # One generator per subject keyed by (seed, split, index): a subject looks the same whatever the set size.
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        subject = f"{label}_s{number:04d}"  # unique across splits, like ADNI subject ids
        write_subject(out / split / label, subject, _subject(tpl, rng, ad, cfg))
    (out / MARKER).write_text(
        json.dumps({"version": VERSION, "generator": GENERATOR_REVISION, **asdict(cfg)}, default=list)
    )
    return out


def default_demo_dir(**params) -> Path:
    """Cache folder ``<BRAINVQ_CACHE or ~/.cache/brainvq>/demo-v1-<hash>`` of the demo set for these parameters."""
    try:
        cfg = DemoConfig(**params)
    except (TypeError, ValueError) as exc:
        raise DataError(f"demo set: {exc}") from None
    # the generator revision is hashed too, so a changed generator never reuses an old cached set
    key = {"generator": GENERATOR_REVISION, **asdict(cfg)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:10]
    root = Path(os.environ.get("BRAINVQ_CACHE") or Path.home() / ".cache" / "brainvq")
    return root / f"{VERSION}-{digest}"


def ensure_demo_data(**params) -> Path:
    """The demo set for ``params`` (defaults: 50+14 subjects), generated into the cache on first use, then reused.

    Generated in a temporary folder and renamed into place, so a killed or concurrent run never leaves half a set.
    """
    target = default_demo_dir(**params)
    if (target / MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        make_demo_data(tmp / "set", **params)
        if target.exists() and not (target / MARKER).exists():
            shutil.rmtree(target, ignore_errors=True)  # debris of something that was not an atomic publish
        try:
            os.replace(tmp / "set", target)
        except OSError:
            if not (target / MARKER).exists():  # a concurrent run that published first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("demo set ready at %s", target)
    return target


def preview_grid(root: str | os.PathLike, per_class: int = 6) -> np.ndarray:
    """uint8 ``(2*H, per_class*W)`` picture of train slices: NC in the top row, AD below (each subject's middle
    slice)."""
    rows = []
    for label in ("NC", "AD"):
        by_subject: dict[str, list[Path]] = {}
        for f in sorted((Path(root) / "train" / label).glob("*.png")):
            by_subject.setdefault(f.stem.rsplit("_", 1)[0], []).append(f)
        picks = [files[len(files) // 2] for files in list(by_subject.values())[:per_class]]
        if picks:
            rows.append(np.hstack([np.asarray(Image.open(f).convert("L")) for f in picks]))
    if not rows:
        raise DataError(f"no demo slices under {Path(root) / 'train'}")
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows])
