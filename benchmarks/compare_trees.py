"""Attack throughput of two source trees of pixeljax, measured in one run.

For a refactor that must not slow anything down: each search runs on the
shipped SmallCNN and packaged CIFAR-10 test images, with early stop off so
that both trees do the same work, in alternating subprocesses (before,
after, before, after, ...) that import pixeljax from each tree in turn. On a
shared machine the alternation spreads other jobs' load over both trees;
the medians and their ratio are what to quote.

Run from the repository root, with the old tree checked out beside it:
  git worktree add /tmp/before <commit>
  python -m benchmarks.compare_trees --before /tmp/before --after .
Writes benchmarks/results/compare_trees_<platform>.{json,md} (--name).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from pixeljax.huge_pages import restart_with_huge_pages

RESULTS = pathlib.Path(__file__).parent / "results"

# name -> (function, keyword options); early stop off: a fixed amount of
# work whatever the tree finds.
SEARCHES = {
  "batched_attack d=1": (
    "batched_attack",
    dict(pixels=1, popsize=200, maxiter=20, early_stop=False),
  ),
  "batched_attack d=3": (
    "batched_attack",
    dict(pixels=3, popsize=200, maxiter=20, early_stop=False),
  ),
  "corner_attack": ("corner_attack", dict(early_stop=False)),
  "corner_search d=3": (
    "corner_search",
    dict(pixels=3, max_queries=8192 + 1024, early_stop=False),
  ),
  "seeded_attack d=1": (
    "seeded_attack",
    dict(pixels=1, popsize=200, maxiter=4, early_stop=False),
  ),
}


def _worker(images: int, repeats: int):
  """Prints {search: [evaluations/s per timed run]} for the pixeljax that
  this interpreter imports."""
  import jax
  import numpy as np

  import pixeljax
  from pixeljax.data import load_cifar10_sample
  from pixeljax.models.weights import load_predict

  sample = load_cifar10_sample()
  batch = sample.images[:images]
  labels = np.asarray(sample.labels[:images])
  predict = load_predict("smallcnn")
  rates = {}
  for name, (function, options) in SEARCHES.items():
    attack = getattr(pixeljax, function)
    if function != "corner_attack":
      options = dict(options, key=jax.random.key(0))
    attack(predict, batch, labels, **options)  # compiles
    rates[name] = []
    for _ in range(repeats):
      start = time.perf_counter()
      result = attack(predict, batch, labels, **options)
      seconds = time.perf_counter() - start
      rates[name].append(float(result.queries.sum()) / seconds)
  print(json.dumps(rates))


def _run_tree(tree: pathlib.Path, images: int, repeats: int) -> dict:
  env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "benchmarks.compare_trees",
      "--worker",
      f"--images={images}",
      f"--repeats={repeats}",
    ],
    cwd=pathlib.Path(__file__).resolve().parent.parent,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  if done.returncode != 0:
    raise SystemExit(f"the run on {tree} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--before", type=pathlib.Path, help="the old tree")
  parser.add_argument("--after", type=pathlib.Path, help="the new tree")
  parser.add_argument(
    "--rounds",
    type=int,
    default=2,
    help="alternations of the two trees (default 2)",
  )
  parser.add_argument(
    "--images", type=int, default=8, help="images per attack (default 8)"
  )
  parser.add_argument(
    "--repeats",
    type=int,
    default=1,
    help="timed runs per search and process (default 1)",
  )
  parser.add_argument(
    "--name", default=None, help="results file name (default by platform)"
  )
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return _worker(args.images, args.repeats)
  if args.before is None or args.after is None:
    parser.error("--before and --after are required")

  import jax

  runs = {"before": [], "after": []}
  for _ in range(args.rounds):
    for which in ("before", "after"):
      runs[which].append(
        _run_tree(getattr(args, which), args.images, args.repeats)
      )
  rows = []
  for name in SEARCHES:
    median = {
      which: statistics.median(r for run in runs[which] for r in run[name])
      for which in runs
    }
    rows.append(
      dict(
        search=name,
        before=median["before"],
        after=median["after"],
        ratio=median["after"] / median["before"],
      )
    )
  platform = jax.devices()[0].platform
  name = args.name or f"compare_trees_{platform}"
  stamp = dict(
    date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    device=jax.devices()[0].device_kind,
    jax=jax.__version__,
    load_average_1min=round(os.getloadavg()[0], 2),
    command="python -m benchmarks.compare_trees "
    + " ".join(argv if argv is not None else sys.argv[1:]),
    settings=dict(
      images=args.images,
      rounds=args.rounds,
      repeats=args.repeats,
      searches={k: v[1] for k, v in SEARCHES.items()},
    ),
  )
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / f"{name}.json").write_text(
    json.dumps(dict(stamp, rows=rows, runs=runs), indent=1) + "\n"
  )
  lines = [
    f"# Throughput of two trees ({stamp['device']}, {stamp['date']})",
    "",
    f"`{stamp['command']}`; shipped SmallCNN, {args.images} packaged test "
    f"images, early stop off; median model evaluations/s over "
    f"{args.rounds} alternating processes x {args.repeats} runs each.",
    "",
    "| search | before | after | after / before |",
    "|---|---:|---:|---:|",
  ]
  lines += [
    f"| {r['search']} | {r['before']:,.0f} | {r['after']:,.0f} | "
    f"{r['ratio']:.3f} |"
    for r in rows
  ]
  (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  restart_with_huge_pages()  # its subprocesses inherit the setting
  main()
