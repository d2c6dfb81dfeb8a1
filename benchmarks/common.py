"""Shared plumbing for benchmark scripts: timing, stamps, and result files."""

import datetime
import json
import os
import platform
import time

import jax
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


def stamp() -> dict:
  """Where and when a measurement was taken."""
  import flax

  device = jax.devices()[0]
  return {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "platform": device.platform,
    "device": device.device_kind,
    "device_count": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "flax": flax.__version__,
    "numpy": np.__version__,
  }


def time_call(
  function, *, min_seconds: float, min_repeats: int = 2, warmup: bool = True
):
  """Median wall time (s) of ``function()``, after one warm-up call.

  ``function`` must block until its result is ready.
  """
  if warmup:
    function()
  times = []
  started = time.perf_counter()
  while len(times) < min_repeats or time.perf_counter() - started < min_seconds:
    begin = time.perf_counter()
    function()
    times.append(time.perf_counter() - begin)
  return float(np.median(times))


def write_results(
  name: str, payload: dict, markdown: str, directory: str = RESULTS_DIR
) -> tuple[str, str]:
  """Writes ``name``.json and ``name``.md in ``directory`` (default
  benchmarks/results/)."""
  os.makedirs(directory, exist_ok=True)
  json_path = os.path.join(directory, f"{name}.json")
  md_path = os.path.join(directory, f"{name}.md")
  with open(json_path, "w") as f:
    json.dump(payload, f, indent=2)
    f.write("\n")
  with open(md_path, "w") as f:
    f.write(markdown)
  return json_path, md_path


def markdown_table(header: list[str], rows: list[list]) -> str:
  """A GitHub markdown table."""
  lines = [
    "| " + " | ".join(header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"
