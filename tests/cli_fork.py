"""Run `brainvq` commands as real child processes without paying for `import torch` and `import mlflow` in each one.

A catalogue of bad inputs runs dozens of commands that fail within a second of work, after two to four seconds of
importing torch and as long again importing MLflow. multiprocessing's forkserver imports those two once (and numpy
and PIL; no brainvq), then forks one child per command. Each child is a separate process with its own environment,
working folder and stdout/stderr files, and calls the same ``brainvq.cli.main`` that ``python -m brainvq.cli`` calls;
brainvq is imported in the child, after its environment is set. What differs from a fresh interpreter is that
torch's and MLflow's modules are already in memory, imported under the server's environment. MLflow reads
``MLFLOW_LOGGING_LEVEL`` only at import, so the level brainvq gives it (``brainvq.logs.quiet_libraries``) must also
reach an MLflow imported earlier, as a host program may have done: the catalogue's one-line checks see it if not.
MLflow reads the tracking URI and its HTTP settings from the environment when it uses them, not at import.

This module imports nothing but the standard library at the top: the forkserver imports it to find the child's entry
function, and anything imported here would be imported before the child's environment is set.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile

_PRELOAD = ["torch", "mlflow", "numpy", "PIL.Image"]


def _child(argv: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["brainvq", *argv]
    try:
        from brainvq.cli import main

        code = main(argv)
    finally:
        atexit._run_exitfuncs()  # what interpreter exit runs (MLflow, logging); multiprocessing skips it
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


class Forked:
    """``run(cmd_args, env, cwd)`` → :class:`subprocess.CompletedProcess`, like ``subprocess.run`` of
    ``python -m brainvq.cli ARGS``; several threads may call it at once."""

    def __init__(self, env: dict[str, str]) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(_PRELOAD)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)  # the server's environment when it imports torch (OMP_NUM_THREADS=1 among it)
        try:
            from multiprocessing import forkserver

            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def run(self, argv: list[str], env: dict[str, str], cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
        capture = tempfile.mkdtemp(prefix="brainvq-fork-")  # outside cwd: the command's own folder stays its own
        out, err = os.path.join(capture, "stdout"), os.path.join(capture, "stderr")
        proc = self.ctx.Process(target=_child, args=(list(argv), dict(env), str(cwd), out, err))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["brainvq", *argv], timeout)
        with open(out) as o, open(err) as e:
            stdout, stderr = o.read(), e.read()
        shutil.rmtree(capture)
        return subprocess.CompletedProcess(["brainvq", *argv], proc.exitcode, stdout, stderr)
