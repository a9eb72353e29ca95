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

from brainvq.errors import BrainVQError, one_line
from brainvq.logs import one_line_warnings, quiet_libraries


def _flags(name: str) -> list[str]:
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


class _StoreWithLegacy(argparse.Action):
    """Stores the value; an older flag name (``legacy``) still works, with the one-line deprecation note."""

    def __init__(self, *args, legacy: Sequence[str] = (), **kwargs):
        self.legacy = tuple(legacy)
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.legacy:
            from brainvq.values import deprecated

            deprecated(f"the parameter {option_string}", f"--{self.dest}")
        setattr(namespace, self.dest, values)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line like every other error (argparse prints the whole usage first), and a
    flag is never guessed from its prefix: ``--epoch 3`` is an error, not ``--epochs 3``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_param(parser: argparse.ArgumentParser, name: str, aliases: Sequence[str] = (), **kwargs) -> argparse.Action:
    """Add ``--name`` (and ``--name-with-dashes`` when different) with ``dest=name``. Older names in ``aliases`` are
    accepted too, with a one-line deprecation note."""
    if ("default" in kwargs and "help" in kwargs and kwargs["default"] not in (None, argparse.SUPPRESS)
            and "default" not in kwargs["help"]):
        kwargs["help"] = f"{kwargs['help']} (default: %(default)s)"
    if aliases:
        legacy = [f for a in aliases for f in _flags(a)]
        return parser.add_argument(*_flags(name), *legacy, dest=name, action=_StoreWithLegacy, legacy=legacy, **kwargs)
    return parser.add_argument(*_flags(name), dest=name, **kwargs)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_libraries()  # after basicConfig: the root handler it creates gets the filter too
    one_line_warnings()


def run_main(
    fn: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None, prog: str = "brainvq"
) -> int:
    """Run ``fn(argv)``; a ``BrainVQError`` becomes one line on stderr and exit code 2.

    Set ``BRAINVQ_DEBUG=1`` to see the full traceback instead.
    """
    import os

    from brainvq.tracking.store import apply_http_defaults, scrub

    apply_http_defaults()  # a CLI user wants a dead tracking server reported in seconds, not after minutes of retries
    quiet_libraries()
    one_line_warnings()
    try:
        fn(argv)
    except BrainVQError as exc:
        if os.environ.get("BRAINVQ_DEBUG"):
            traceback.print_exc()
        msg = scrub(one_line(exc, limit=None))  # always one line, never the tracking store's password
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
