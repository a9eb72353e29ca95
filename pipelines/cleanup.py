"""Close the MLflow runs that killed processes left RUNNING (SIGKILL, the OOM killer, a lost node) as KILLED.

A run records the host and process that work on it; a RUNNING run whose process on this host is gone is closed,
with the reason in its ``brainvq.error`` tag. Runs of other hosts are closed only when older than
``--older_than_hours``. A resumable checkpoint is left as it is: ``resume=true`` still continues it.

Examples:
    brainvq cleanup --dry_run true
    brainvq cleanup --older_than_hours 48
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    return build_entry_parser("cleanup", __doc__)  # the parameters: brainvq.cli.params


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    import math

    from brainvq.errors import ConfigError
    from brainvq.tracking.stage import close_stale_runs

    if not (math.isfinite(args.older_than_hours) and args.older_than_hours >= 0):
        raise ConfigError("bad parameter: older_than_hours must be a finite number >= 0 (0 = dead processes here "
                          f"only), got {args.older_than_hours}")
    lines = close_stale_runs(args.older_than_hours, args.dry_run)
    for line in lines:
        print(line)
    if not lines:
        print("no RUNNING runs")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="cleanup"))
