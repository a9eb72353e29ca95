"""How parameter values are spelled and read back, in one place: CLI flags, MLproject parameters and logged MLflow
params all go through these (one name, one spelling, one parser per kind of value)."""

from __future__ import annotations

import argparse
import logging
import math

from brainvq.errors import ConfigError


def str2bool(value: str | bool) -> bool:
    """Parse MLflow-style booleans (``true``/``false``/``1``/``0``)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in {"1", "true", "yes", "y", "on"}:
        return True
    if v in {"0", "false", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def intlike(value: str | int | float) -> int:
    """The one integer parser: also accepts MLflow's float spelling (``17.0``), never ``17.5``, ``inf`` or ``true``."""
    try:
        f = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if not math.isfinite(f) or not f.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
    return int(f)


def image_size(value: str) -> tuple[int, int]:
    """Parse ``240x256`` (H x W) or a single ``64`` (square)."""
    try:
        parts = [int(p) for p in str(value).lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image_size must look like 240x256 (HxW), got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"image_size must look like 240x256 (HxW), got {value!r}")
    return parts[0], parts[1]


def int_tuple(name: str, value) -> tuple[int, ...]:
    """A comma-separated integer list such as ``1,2,4`` (MLproject parameters are strings; logged as given)."""
    try:
        return tuple(int(p) for p in str(value).replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(
            f"bad parameter: {name} must be comma-separated integers such as 1,2,4, got {value!r}"
        ) from None


# The class map of everything written before class maps were recorded (checkpoints, code files, ONNX exports):
# label 0 = NC, 1 = AD. A data tree of exactly these two class folders still gets it (brainvq.data.labels.class_order).
LEGACY_CLASSES = ("NC", "AD")
# Sampling names that are not classes: the null label, and every class in turn.
RESERVED_LABELS = ("none", "all", "both")
# The prior's training precisions (PriorTrainConfig.precision, train_prior's precision, main's prior_precision).
PRECISIONS = ("fp32", "bf16")


def class_names(value, what: str = "classes") -> tuple[str, ...]:
    """The ``classes`` parameter: comma-separated class folder names such as ``CN,AD`` (the order given is the label
    order), or a sequence of names; empty = every class folder. Names must be distinct, non-empty folder names."""
    if value is None:
        return ()
    parts = [p.strip() for p in (str(value).split(",") if isinstance(value, str) else map(str, value))]
    if parts == [""]:
        return ()
    spelled = value if isinstance(value, str) else ",".join(map(str, value))
    for name in parts:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ConfigError(f"bad parameter: {what} must be comma-separated class folder names such as CN,AD; "
                              f"got {spelled!r}")
        if name in RESERVED_LABELS:
            raise ConfigError(f"bad parameter: {what}: {name!r} is a sampling name ({', '.join(RESERVED_LABELS)}), "
                              "not a class name")
    dupes = sorted({n for n in parts if parts.count(n) > 1})
    if dupes:
        raise ConfigError(f"bad parameter: {what} names {', '.join(dupes)} twice; got {spelled!r}")
    return tuple(parts)


def param_str(value: object) -> str:
    """Params as MLproject spells them: booleans lower-case, tuples as ``HxW``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "x".join(map(str, value))
    return "" if value is None else str(value)


def run_param(params: dict, name: str, cast=str, default=None):
    """A logged MLflow param cast back to its type; missing or empty gives ``default``.

    ``mlflow run`` logs an empty-string parameter shell-quoted, as the two characters ``''``: that is empty too.
    """
    value = params.get(name)
    return default if value in (None, "", "''", '""') else cast(value)


def deprecated(old: str, new: str) -> None:
    """The one deprecation note: an old name keeps working for one release (this one), with one warning line."""
    from brainvq import __version__

    logging.getLogger("brainvq").warning("deprecated: %s is now %s; brainvq %s still reads the old name, the next "
                                         "release will not", old, new, __version__)
