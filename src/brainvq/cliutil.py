"""Small argparse helpers shared by the `brainvq` CLI and the MLflow entry scripts.

One name everywhere: an MLproject parameter ``max_minutes`` is the CLI flag ``--max_minutes`` (``--max-minutes``
also works), the config field ``max_minutes`` and the MLflow param ``max_minutes``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Callable, Sequence

from brainvq.errors import BrainVQError


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


def intlike(value: str) -> int:
    """An integer that also accepts MLflow's float spelling (``17.0``) but not ``17.5``."""
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if not f.is_integer():
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


def add_param(parser: argparse.ArgumentParser, name: str, **kwargs) -> argparse.Action:
    """Add ``--name`` (and ``--name-with-dashes`` when different) with ``dest=name``."""
    flags = [f"--{name}"]
    dashed = f"--{name.replace('_', '-')}"
    if dashed != flags[0]:
        flags.append(dashed)
    if "default" in kwargs and "help" in kwargs and kwargs["default"] not in (None, argparse.SUPPRESS):
        kwargs["help"] = f"{kwargs['help']} (default: %(default)s)"
    return parser.add_argument(*flags, dest=name, **kwargs)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_main(fn: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None, prog: str = "brainvq") -> int:
    """Run ``fn(argv)``; a ``BrainVQError`` becomes one line on stderr and exit code 2.

    Set ``BRAINVQ_DEBUG=1`` to see the full traceback instead.
    """
    import os

    from brainvq.tracking_store import apply_http_defaults, scrub

    apply_http_defaults()  # a CLI user wants a dead tracking server reported in seconds, not after minutes of retries
    try:
        fn(argv)
    except BrainVQError as exc:
        if os.environ.get("BRAINVQ_DEBUG"):
            traceback.print_exc()
        msg = scrub(" ".join(str(exc).split()))  # always one line, never the tracking store's password
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
