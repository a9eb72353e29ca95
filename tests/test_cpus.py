"""The one CPU count: a process limited to fewer CPUs (taskset, a container's cpuset) sizes its threads to that
limit, not to the host's count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux affinity calls and at least 2 CPUs to pin a child to fewer",
)


def _pinned(code: str, cpus: set[int]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_a_pinned_process_counts_only_the_cpus_it_may_use():
    one = {min(os.sched_getaffinity(0))}
    code = "from brainvq.cpus import usable_cpus, physical_cores; print(usable_cpus(), physical_cores())"
    assert _pinned(code, one) == "1 1"
    assert _pinned(code, os.sched_getaffinity(0)).split()[0] == str(len(os.sched_getaffinity(0)))


def test_torch_threads_follow_the_pinned_count():
    one = {min(os.sched_getaffinity(0))}
    code = "from brainvq.engine.common import configure_threads; print(configure_threads(0))"
    assert _pinned(code, one) == "1"
    assert int(_pinned(code, os.sched_getaffinity(0))) == len(os.sched_getaffinity(0))
