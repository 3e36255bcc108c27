"""What host this is: the CPU model name (as `lscpu` prints it) and its core count, for
reports and benchmark headers (float results and speeds differ between CPU families)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """"Intel(R) Xeon(R) Processor, 2 cores" or "AMD EPYC 7B13, 2 cores"; the machine type
    where /proc/cpuinfo has no model name (not Linux, or an ARM host)."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"

