"""Incremental evaluation against the full forward pass, in one run.

For each victim and d = 1, 3, 5 changed pixels: the FLOPs one candidate
costs (convolutions and matrix products, counted on the traced program) in
full and incrementally, the clean maps kept per image, and the evaluations
per second of the paper's DE (``batched_attack``, no early stop, so every
image runs every generation) with ``incremental=False`` and ``True``, the
two timed alternately on the same images. The victims are randomly
initialised (speed does not depend on the weights).

Run from the repository root:
  python -m benchmarks.incremental
Writes benchmarks/results/incremental_<platform>.{json,md}; about 15 minutes
on a 2-core CPU.
"""

import argparse
import sys

from flax import nnx
import jax
import numpy as np

from benchmarks import common
import pixeljax
from pixeljax.attack import incremental
from pixeljax.data import load_cifar10_sample
from pixeljax.models import create_model
from pixeljax.models import make_predict

MODELS = ("smallcnn", "allconv", "nin", "vgg16")


def measure(predict, images, labels, *, pixels, args) -> dict:
  """Counted FLOPs and DE evaluations/s of one victim at d = ``pixels``."""
  # The engine's cached evaluator: one trace serves the counts and `resolve`.
  evaluator = incremental.evaluator(predict, images.shape[1:], pixels)

  def run(on):
    return pixeljax.batched_attack(
      predict,
      images,
      labels,
      key=jax.random.key(0),
      pixels=pixels,
      popsize=args.popsize,
      maxiter=args.generations,
      early_stop=False,
      incremental=on,
    )

  evaluations = int(run(False).queries.sum())  # also the warm-up
  run(True)
  seconds = {False: [], True: []}
  for _ in range(args.repeats):
    for on in (False, True):
      seconds[on].append(
        common.time_call(
          lambda on=on: run(on), min_seconds=args.min_seconds, warmup=False
        )
      )
  full, windowed = (float(np.median(seconds[on])) for on in (False, True))
  return {
    "pixels": pixels,
    "full_mflops": evaluator.full_flops / 1e6,
    "incremental_mflops": evaluator.flops / 1e6,
    "flops_ratio": evaluator.full_flops / evaluator.flops,
    "auto_on": incremental.resolve(
      None, predict, images.shape[1:], pixels, incremental.AUTO_MIN_BUDGET
    ),
    "clean_map_mib_per_image": evaluator.map_bytes / 2**20,
    "evaluations": evaluations,
    "full_evals_per_s": evaluations / full,
    "incremental_evals_per_s": evaluations / windowed,
    "speedup": full / windowed,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS))
  parser.add_argument("--pixels", nargs="+", type=int, default=[1, 3, 5])
  parser.add_argument("--images", type=int, default=2)
  parser.add_argument("--popsize", type=int, default=400)
  parser.add_argument("--generations", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--min-seconds", type=float, default=0.0)
  args = parser.parse_args()

  sample = load_cifar10_sample()
  images = sample.images[: args.images]
  labels = np.asarray(sample.labels[: args.images])
  rows = []
  for name in args.models:
    predict = make_predict(create_model(name, rngs=nnx.Rngs(0)))
    for pixels in args.pixels:
      row = dict(
        model=name, **measure(predict, images, labels, pixels=pixels, args=args)
      )
      print(row, flush=True)
      rows.append(row)

  platform = jax.devices()[0].platform
  header = [
    "model",
    "d",
    "MFLOP full",
    "MFLOP incremental",
    "fewer FLOPs",
    "auto",
    "clean maps / image",
    "evals/s full",
    "evals/s incremental",
    "speed-up",
  ]
  table = [
    [
      r["model"],
      r["pixels"],
      f"{r['full_mflops']:.1f}",
      f"{r['incremental_mflops']:.1f}",
      f"{r['flops_ratio']:.2f}x",
      "on" if r["auto_on"] else "off",
      f"{r['clean_map_mib_per_image']:.2f} MiB",
      f"{r['full_evals_per_s']:.0f}",
      f"{r['incremental_evals_per_s']:.0f}",
      f"**{r['speedup']:.2f}x**",
    ]
    for r in rows
  ]
  stamp = common.stamp()
  command = " ".join(["python -m benchmarks.incremental", *sys.argv[1:]])
  markdown = (
    "# Incremental evaluation against the full pass\n\n"
    f"`{command}`, {stamp['device']} ({stamp['platform']}, "
    f"{stamp['cpu_count']} cores), jax {stamp['jax']}, {stamp['date']}.\n\n"
    "Paper DE on the first "
    f"{args.images} sample images, population {args.popsize}, "
    f"{args.generations} generation(s), no early stop; randomly initialised "
    "victims. FLOPs: convolutions and matrix products per candidate. "
    "Speed-up: median wall time of the full attack over the incremental "
    "one, timed alternately in this run. 'auto' is what "
    "`incremental=None` chooses here for an attack of at least "
    f"{incremental.AUTO_MIN_BUDGET} evaluations per image.\n\n"
    + common.markdown_table(header, table)
  )
  paths = common.write_results(
    f"incremental_{platform}",
    {"stamp": stamp, "command": command, "rows": rows},
    markdown,
  )
  print(markdown)
  print("wrote", *paths)


if __name__ == "__main__":
  main()
