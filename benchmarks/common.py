"""Shared plumbing for benchmark scripts: timing, stamps, and result files."""

import datetime
import json
import os
import platform
import time

import jax
import numpy as np

from pixeljax import host

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
    **host.describe(),
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


def _busy_cpu_seconds() -> float | None:
  """CPU seconds every process on the machine has run since boot (Linux's
  /proc/stat); None where it cannot be read."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
  """How busy other processes kept the CPU while a block ran.

      with OtherLoad() as load:
        ...  # the measurement
      load.cores  # CPU cores others used on average (None: not measurable)

  The machine's busy CPU time (/proc/stat) minus this process's own, over
  the block's wall time: unlike the load average, it leaves out the
  measurement itself and reacts at once when another job starts or stops.
  `load_before` and `load_after` keep the 1-minute load averages too.
  """

  def __enter__(self):
    self.load_before = os.getloadavg()[0]
    self._machine, self._own = _busy_cpu_seconds(), _own_cpu_seconds()
    self._wall = time.perf_counter()
    return self

  def __exit__(self, *exc):
    wall = time.perf_counter() - self._wall
    machine = _busy_cpu_seconds()
    self.load_after = os.getloadavg()[0]
    self.cores = None
    if machine is not None and self._machine is not None and wall > 0:
      others = machine - self._machine - (_own_cpu_seconds() - self._own)
      self.cores = max(others, 0.0) / wall
    return False

  def record(self) -> dict:
    """The fields a result row keeps."""
    return dict(
      load_before=round(self.load_before, 2),
      load_after=round(self.load_after, 2),
      other_cpu_cores=None if self.cores is None else round(self.cores, 2),
    )


def _own_cpu_seconds() -> float:
  times = os.times()
  return times.user + times.system


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
