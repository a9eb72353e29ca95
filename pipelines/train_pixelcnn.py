"""Deprecated name of ``train_prior`` (``mlflow run . -e train_pixelcnn``, ``brainvq train-pixelcnn``): read for one
more release with a one-line note, then removed. Same parameters, same run."""

from __future__ import annotations

import sys

from brainvq.cli.args import run_main
from brainvq.pipelines import train_prior
from brainvq.values import deprecated


def main(argv=None) -> None:
    deprecated("the entry point train_pixelcnn", "train_prior")
    train_prior.main(argv)


build_parser = train_prior.build_parser

if __name__ == "__main__":
    sys.exit(run_main(main, prog="train_prior"))
