"""How many CPUs this process may use, counted one way everywhere (torch's threads, the image decoders' pool,
onnxruntime's threads, the test workers' share).

Standard library only: the test suite's ``conftest.py`` reads it before torch is first imported (torch fixes its
thread pool at import), and the onnxruntime sampler imports it where torch is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path


def usable_cpus() -> int:
    """Logical CPUs this process may run on: its affinity mask (a container's or ``taskset``'s limit), not the host's
    count that ``os.cpu_count()`` gives. At least 1."""
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS and Windows have no affinity call
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores among :func:`usable_cpus` (hyper-threads share one core's units; extra threads only contend).
    Falls back to the logical count where ``/proc/cpuinfo`` does not say."""
    logical = usable_cpus()
    try:
        pairs, phys = set(), None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "physical id":
                phys = val.strip()
            elif key.strip() == "core id":
                pairs.add((phys, val.strip()))
        cores = len(pairs) or logical
    except OSError:
        cores = logical
    return max(1, min(cores, logical))
