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


# XLA CPU flags that measured faster on a CPU kind (BENCHMARKS.md, "Per CPU kind"): on an Intel
# Xeon with AMX, XLA's fp32 matmuls without YNNPACK fusions. A kind without a measured gain
# keeps XLA's defaults.
CPU_XLA_FLAGS = {"intel": ("--xla_cpu_experimental_ynn_fusion_type=",), "amd": (), "other": ()}
CPU_FLAGS_ENV = "COREA_CPU_XLA_FLAGS"  # "off": keep XLA's defaults


def cpu_vendor() -> str:
    """"intel", "amd" or "other", from /proc/cpuinfo's vendor_id."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                    return {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(vendor, "other")
    except OSError:
        pass
    return "other"


def apply_cpu_xla_flags(environ=None, vendor: str | None = None) -> list[str]:
    """Adds this CPU kind's `CPU_XLA_FLAGS` to XLA_FLAGS in `environ` (os.environ by default) and
    returns the flags added. Call it before JAX starts its backend (before the first
    computation; importing jax is fine). A flag the user's XLA_FLAGS already names is left as
    the user set it; COREA_CPU_XLA_FLAGS=off adds nothing; any other value of it is an error
    naming the variable. The flags only affect XLA's CPU backend."""
    environ = os.environ if environ is None else environ
    setting = environ.get(CPU_FLAGS_ENV, "on")
    if setting not in ("on", "off"):
        raise ValueError(f"{CPU_FLAGS_ENV}: expected 'on' or 'off', found {setting!r}")
    if setting == "off":
        return []
    current = environ.get("XLA_FLAGS", "").split()
    named = {flag.split("=", 1)[0] for flag in current}
    added = [flag for flag in CPU_XLA_FLAGS[vendor or cpu_vendor()] if flag.split("=", 1)[0] not in named]
    if added:
        environ["XLA_FLAGS"] = " ".join(current + added)
    return added
