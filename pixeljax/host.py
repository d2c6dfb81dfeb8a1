"""The machine a result came from, for cards and benchmark stamps."""

from __future__ import annotations

import os
import pathlib
import platform


def cpu_name() -> str:
  """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` says."""
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if cpuinfo.is_file():
    for line in cpuinfo.read_text(errors="replace").splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "model name" and value.strip():
        return value.strip()
  return platform.processor() or platform.machine() or "unknown"


def describe() -> dict:
  """CPU model, logical cores, XLA_FLAGS and GLIBC_TUNABLES (huge pages for
  malloc: `pixeljax.huge_pages`): what the CPU timings depend on besides the
  code."""
  return dict(
    cpu=cpu_name(),
    cpu_count=os.cpu_count(),
    xla_flags=os.environ.get("XLA_FLAGS", ""),
    glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
  )
