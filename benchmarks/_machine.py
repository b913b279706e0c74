"""The conditions a benchmark ran under, printed with its figures: the same code is slower on a loaded machine.

Every script prints :func:`machine_line` first and :func:`load_line` just before its ratio, so a
figure copied from its output carries the cores, the CPU and the load average around it.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _load() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except (AttributeError, OSError):  # not on every platform
        return "unknown"


def machine_line() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {os.cpu_count()} cores ({usable} usable), {_cpu_model()}, {platform.machine()}, "
            f"torch {torch.__version__}; load average (1, 5, 15 min) at start: {_load()}")


def load_line() -> str:
    return f"machine: load average (1, 5, 15 min) at end: {_load()}"


def positive_int(text: str) -> int:
    """An argparse type for counts (repeats, layers, epochs, batch sizes): a bad one is refused in one line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value
