"""The machine a number was measured on (standard library only: the serving benchmark imports it too)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: the first ``model name`` in Linux's ``cpuinfo``, else ``platform.processor()`` (no
    such file or line, as on ARM). Timings and, through the BLAS kernels it picks, the last bits of every float
    depend on it."""
    try:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor()
