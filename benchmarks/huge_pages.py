"""Attacks and train steps with 4 KiB pages and with huge pages for malloc.

`pixeljax.huge_pages` restarts pixeljax's programs with glibc's tunable
``glibc.malloc.hugetlb=1``, so that the buffers XLA allocates afresh at
every call come as transparent huge pages rather than one page fault per
4 KiB. This measures what that buys, in alternating subprocesses with
GLIBC_TUNABLES ``glibc.malloc.hugetlb=0`` (glibc's default) and ``=1``:

- attacks: ``pixeljax attack`` on each victim, as a user runs it (a new
  process whose programs come from the compile cache that an untimed first
  run filled): the median of the attack's own wall time (the run's summary),
  of the whole process's, its peak memory (max RSS), and whether both
  settings found the same perturbations;
- train steps: ``benchmarks.train_throughput``'s train step and forward
  pass (batch of the recipe, random images), in a new process per round.

    python -m benchmarks.huge_pages --models allconv nin vgg16 --rounds 2

Writes benchmarks/results/huge_pages_cpu.{json,md}.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import common
from pixeljax import runs
from pixeljax.huge_pages import TUNABLE
from pixeljax.huge_pages import glibc_version
from pixeljax.huge_pages import transparent_huge_pages

SETTINGS = {"4 KiB pages": f"{TUNABLE}=0", "huge pages": f"{TUNABLE}=1"}


def run_child(command: list[str], tunable: str, scratch: pathlib.Path):
  """`command` in a new process with GLIBC_TUNABLES `tunable` and its
  compile cache in `scratch`: (stdout, wall seconds, rusage, the CPU cores
  others used meanwhile, the OtherLoad)."""
  env = dict(os.environ, GLIBC_TUNABLES=tunable, PIXELJAX_CACHE=str(scratch))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  with (
    tempfile.TemporaryFile("w+") as stdout,
    tempfile.TemporaryFile("w+") as stderr,
    common.OtherLoad() as load,
  ):
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(child.pid, 0)  # with the child's rusage
    seconds = time.perf_counter() - started
    stdout.seek(0)
    stderr.seek(0)
    code = os.waitstatus_to_exitcode(status)
    if code:
      raise RuntimeError(
        f"{' '.join(command)} exited {code}:\n{stderr.read()[-3000:]}"
      )
    output = stdout.read()
  # OtherLoad counts the child as another process: take its CPU time out.
  others = None
  if load.cores is not None:
    child_cpu = usage.ru_utime + usage.ru_stime
    others = max(load.cores - child_cpu / seconds, 0.0)
  return output, seconds, usage, others, load


def run_attack(model: str, tunable: str, args, out: pathlib.Path) -> dict:
  """One `pixeljax attack` writing to `out`: its attack seconds, process
  seconds, peak memory (MiB), the load, and its records less timings."""
  command = [sys.executable, "-m", "pixeljax.cli", "attack", "--model", model]
  command += ["--images", str(args.images), "--out", str(out), "--quiet"]
  if args.data:
    command += ["--data", args.data, "--no-download"]
  _, seconds, usage, others, load = run_child(command, tunable, out.parent)
  summary = json.loads((out / "summary.json").read_text())
  records = runs.RunStore.existing(out).records()
  for record in records:
    record.pop("seconds_share", None)
  return dict(
    attack_seconds=sum(row["seconds"] for row in summary["rows"]),
    process_seconds=seconds,
    max_rss_mib=usage.ru_maxrss / 1024,  # Linux reports KiB
    other_cpu_cores=others,
    load_before=load.load_before,
    load_after=load.load_after,
    records=records,
  )


def run_train_steps(model: str, tunable: str, args, scratch) -> dict:
  """`benchmarks.train_throughput`'s step timings of `model` in a new
  process (`train_worker`): images/s of the train step and forward pass."""
  command = [sys.executable, "-m", "benchmarks.huge_pages"]
  command += ["--train-worker", model, "--steps", str(args.steps)]
  output, _, usage, others, load = run_child(command, tunable, scratch)
  row = json.loads(output.strip().splitlines()[-1])
  return dict(
    train_images_per_s=row["train_images_per_s"],
    forward_images_per_s=row["forward_images_per_s"],
    max_rss_mib=usage.ru_maxrss / 1024,
    other_cpu_cores=others,
    load_before=load.load_before,
    load_after=load.load_after,
  )


def train_worker(model: str, steps: int) -> None:
  """Prints the train step's and forward pass's images/s as JSON: 3 rounds
  of `steps` steps each, taking turns (train_throughput.measure_model)."""
  from benchmarks import train_throughput
  from pixeljax.xla_options import prefer_xla_cpu_convolutions

  prefer_xla_cpu_convolutions()  # as `pixeljax train`
  settings = argparse.Namespace(
    batch_size=None, rounds=3, steps=steps, max_other_cores=1.0
  )
  (row,) = train_throughput.measure_model(model, settings, peer=False)
  print(json.dumps(row))


def _medians(runs: dict, keys) -> dict:
  return {
    name: {key: statistics.median(r[key] for r in results) for key in keys}
    for name, results in runs.items()
  }


def _load(runs: dict) -> dict:
  every = [r for results in runs.values() for r in results]
  others = [r["other_cpu_cores"] for r in every]
  return dict(
    other_cpu_cores=None if None in others else round(max(others), 2),
    load_before=round(every[0]["load_before"], 2),
    load_after=round(every[-1]["load_after"], 2),
  )


def measure(model: str, args) -> dict:
  """Alternating rounds of both settings on one victim: medians."""
  attacks = {name: [] for name in SETTINGS}
  steps = {name: [] for name in SETTINGS}
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    # Untimed: fills the compile cache, which every timed attack then reads,
    # so that no setting pays for compiling alone.
    run_attack(model, SETTINGS["huge pages"], args, scratch / "warm")
    for round_ in range(args.rounds):
      for name, tunable in SETTINGS.items():
        out = scratch / f"{name}-{round_}".replace(" ", "_")
        attacks[name].append(run_attack(model, tunable, args, out))
    for _ in range(args.rounds):
      for name, tunable in SETTINGS.items():
        steps[name].append(run_train_steps(model, tunable, args, scratch))
  first = attacks["4 KiB pages"][0]["records"]
  same = all(r["records"] == first for rs in attacks.values() for r in rs)
  attack = _medians(
    attacks, ("attack_seconds", "process_seconds", "max_rss_mib")
  )
  train = _medians(
    steps, ("train_images_per_s", "forward_images_per_s", "max_rss_mib")
  )
  small, huge = SETTINGS
  return dict(
    model=model,
    images=args.images,
    rounds=args.rounds,
    attack=dict(
      **attack,
      same_results=same,
      speedup=attack[small]["attack_seconds"] / attack[huge]["attack_seconds"],
      **_load(attacks),
    ),
    train=dict(
      **train,
      train_speedup=train[huge]["train_images_per_s"]
      / train[small]["train_images_per_s"],
      forward_speedup=train[huge]["forward_images_per_s"]
      / train[small]["forward_images_per_s"],
      **_load(steps),
    ),
  )


def markdown(rows, info, command) -> str:
  small, huge = SETTINGS

  def pair(part, key, digits):
    return f"{part[small][key]:.{digits}f} / {part[huge][key]:.{digits}f}"

  def load(part):
    return (
      f"{part['other_cpu_cores']}; {part['load_before']}, {part['load_after']}"
    )

  attacks = common.markdown_table(
    [
      "model",
      "images",
      "attack s",
      "speed-up",
      "process s",
      "max RSS MiB",
      "same results",
      "other cores (max); load avg before, after",
    ],
    [
      [
        r["model"],
        r["images"],
        pair(r["attack"], "attack_seconds", 1),
        f"{r['attack']['speedup']:.2f}x",
        pair(r["attack"], "process_seconds", 1),
        pair(r["attack"], "max_rss_mib", 0),
        "yes" if r["attack"]["same_results"] else "NO",
        load(r["attack"]),
      ]
      for r in rows
    ],
  )
  steps = common.markdown_table(
    [
      "model",
      "train img/s",
      "speed-up",
      "forward img/s",
      "speed-up",
      "max RSS MiB",
      "other cores (max); load avg before, after",
    ],
    [
      [
        r["model"],
        pair(r["train"], "train_images_per_s", 1),
        f"{r['train']['train_speedup']:.2f}x",
        pair(r["train"], "forward_images_per_s", 1),
        f"{r['train']['forward_speedup']:.2f}x",
        pair(r["train"], "max_rss_mib", 0),
        load(r["train"]),
      ]
      for r in rows
    ],
  )
  return (
    f"# Huge pages for malloc ({info['platform']}: {info['cpu']}, "
    f"{info['cpu_count']} cores)\n\n"
    f"{info['date']}; jax {info['jax']}; glibc "
    f"{'.'.join(map(str, glibc_version() or ()))}, transparent huge pages "
    f"`{transparent_huge_pages()}`; `{command}`.\n\n"
    f"Each cell: {small} (GLIBC_TUNABLES `glibc.malloc.hugetlb=0`, glibc's "
    f"default) / {huge} (`=1`, what pixeljax's programs restart with: "
    "`pixeljax.huge_pages`), medians over the rounds, the settings "
    "alternating in new processes. Other cores: CPU cores other processes "
    "used during a run (quiet: at most 0.15).\n\n"
    "## Attacks\n\n`pixeljax attack` at its defaults, after one untimed run "
    "that fills the compile cache. Attack s: the run's own wall time for the "
    "search; process s: the whole command.\n\n"
    + attacks
    + "\n## Train steps\n\n`benchmarks.train_throughput`'s train step "
    "(augmentation, optimizer) and eval-mode forward pass at the recipe's "
    "batch, random images, YNNPACK off as `pixeljax train`; each process "
    "times 3 rounds of a few steps of each.\n\n" + steps
  )


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", nargs="+", default=["allconv", "nin", "vgg16"])
  p.add_argument("--images", type=int, default=10, help="images per attack")
  p.add_argument("--rounds", type=int, default=2, help="runs per setting")
  p.add_argument(
    "--steps", type=int, default=2, help="train steps per turn (default 2)"
  )
  p.add_argument(
    "--data", help="CIFAR-10 archive (default: as `pixeljax attack` finds it)"
  )
  p.add_argument(
    "--name", help="result file stem (default huge_pages_<platform>)"
  )
  p.add_argument("--train-worker", metavar="MODEL", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.train_worker:
    train_worker(args.train_worker, args.steps)
    return 0
  if transparent_huge_pages() not in ("always", "madvise"):
    print("this kernel gives no transparent huge pages", file=sys.stderr)
    return 1
  rows = []
  for model in args.models:
    rows.append(measure(model, args))
    print(rows[-1], flush=True)
  info = common.stamp()
  command = "python -m benchmarks.huge_pages " + " ".join(
    sys.argv[1:] if argv is None else argv
  )
  common.write_results(
    args.name or f"huge_pages_{info['platform']}",
    dict(**info, command=command, results=rows),
    markdown(rows, info, command),
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
