"""Transparent huge pages for the buffers XLA allocates on the CPU.

Every call of a compiled program allocates its outputs and temporaries
afresh. glibc's malloc maps every large buffer (above a threshold of
128 KiB that rises with use to 32 MiB at most) with mmap and unmaps it when
freed, so the next call writes to new memory: one page fault per 4 KiB
page. On the 2-core EPYC development machine, doubling a 96 MiB array ran
at 8 GB/s (read and write) into a new buffer, at 29 GB/s with huge pages,
at 67 GB/s into the input's own buffer (donated).
With glibc's tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35 and later)
malloc asks the kernel for transparent huge pages (2 MiB, madvise) for
those mappings: 512 times fewer faults. A train step, which allocates its
activations and gradients at every call, then runs 1.11x faster on
AllConv, 1.13x on NiN and 1.02x on VGG16, a plain forward pass 1.16x,
1.26x and 1.06x; an attack, whose search loop runs inside one call and
reuses its buffers, gains nothing measurable (0.98-1.02x;
benchmarks/results/huge_pages_cpu.md).

glibc reads its tunables once, when the process starts. So the `pixeljax`
program, `python -m pixeljax.train` and the benchmarks restart themselves
once, before their work, with the tunable added to GLIBC_TUNABLES
(`restart_with_huge_pages`); a Python caller of pixeljax sets it in the
environment that starts Python. Setting ``glibc.malloc.hugetlb`` yourself,
to any value (0: 4 KiB pages as before), turns the restart off.
"""

from __future__ import annotations

import os
import pathlib
import sys

TUNABLE = "glibc.malloc.hugetlb"
# Where Linux says whether a process may have transparent huge pages: the
# word in brackets, "always", "madvise" or "never".
_THP_ENABLED = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version() -> tuple[int, ...] | None:
  """The C library's version when it is glibc, as (major, minor), else
  None."""
  try:
    name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
  except (AttributeError, ValueError, OSError):  # not glibc, or not POSIX
    return None
  if name != "glibc":
    return None
  try:
    return tuple(int(part) for part in version.split(".")[:2])
  except ValueError:
    return None


def transparent_huge_pages() -> str | None:
  """The kernel's transparent huge page mode ("always", "madvise",
  "never"), or None where the kernel has none (or is not Linux)."""
  try:
    text = _THP_ENABLED.read_text()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else None


def environment_with_huge_pages(environ) -> dict[str, str] | None:
  """`environ` with ``glibc.malloc.hugetlb=1`` added to GLIBC_TUNABLES, or
  None when restarting with it gains nothing: the C library is not glibc
  2.35 or later, the kernel gives no transparent huge pages, or
  GLIBC_TUNABLES already sets ``glibc.malloc.hugetlb`` (to any value: the
  user's choice stands)."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  names = [item.partition("=")[0] for item in tunables.split(":")]
  if TUNABLE in names:
    return None
  if (glibc_version() or (0,)) < (2, 35):
    return None
  if transparent_huge_pages() not in ("always", "madvise"):
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, f"{TUNABLE}=1")))
  return env


def restart_with_huge_pages() -> None:
  """Replaces this process by the same command with transparent huge pages
  for malloc (`environment_with_huge_pages`); returns, changing nothing,
  when that gains nothing or the restart fails.

  For programs' entry points only, before they print or start work: the
  process keeps its PID, arguments, open files and the rest of its
  environment, and starts again from the top.
  """
  env = environment_with_huge_pages(os.environ)
  argv = getattr(sys, "orig_argv", None)  # the command as typed, 3.10+
  if env is None or not argv or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    # argv[0] as the full path: Python finds its environment (a venv) from it.
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
  except OSError:
    return
