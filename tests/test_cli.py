"""The `brainvq` command line: every subcommand explains itself and bad values are one-line errors."""

import subprocess
import sys

import pytest

from brainvq.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert "--" in capsys.readouterr().out


def test_unknown_command_is_one_line_error(capsys):
    assert main(["frobnicate"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bad_parameter_value_is_a_one_line_error_naming_it(tiny_adni, capsys):
    assert main(["train-vqvae", "--data_dir", str(tiny_adni), "--image_size", "32x32", "--latent_dim", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("brainvq")]
    assert len(err) == 1 and "latent_dim" in err[0]


def test_console_script_and_module_entry_work():
    proc = subprocess.run([sys.executable, "-m", "brainvq", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip()


def test_mlflow_float_spelling_of_integers_is_accepted():
    from brainvq.pipelines.train_vqvae import build_parser

    args = build_parser().parse_args(["--epochs", "5.0", "--ema", "false", "--image_size", "64x32"])
    assert args.epochs == 5 and args.ema is False and args.image_size == (64, 32)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--epochs", "5.5"])
