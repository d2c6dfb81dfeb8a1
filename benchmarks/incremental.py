"""Incremental evaluation against the full forward pass, in one run.

For each model and d = 1, 3, 5 changed pixels: the FLOPs one candidate
costs (convolutions and matrix products, counted on the traced program) in
full and incrementally, the clean maps kept per image, and the evaluations
per second (and GFLOP/s) of the paper's DE (``batched_attack``, no early
stop, so every image runs every generation) with ``incremental=False`` and
``True``, the two timed alternately on the same images. The models are the
victims and small CNNs written here in plain JAX, one in PyTorch's layout
(NCHW maps, OIHW kernels), all randomly initialised (speed does not depend
on the weights).

Like the `pixeljax` program, it first turns off XLA's CPU use of YNNPACK
(`pixeljax.xla_options`); `--xla-defaults` keeps XLA's defaults, as a
Python caller of `batched_attack` has them, and writes
incremental_<platform>_xla_defaults.* instead. Either way the incremental
program compiles without YNNPACK (`xla_options.attack_program_options`).
Each row records the load average and the CPU other processes used.

Run from the repository root:
  python -m benchmarks.incremental
Writes benchmarks/results/incremental_<platform>.{json,md}; about 15 minutes
on a 2-core CPU.
"""

import argparse
import os
import sys

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
import pixeljax
from pixeljax.attack import driver
from pixeljax.attack import incremental
from pixeljax.attack import incremental_choice
from pixeljax.data import load_cifar10_sample
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.models import create_model
from pixeljax.models import make_predict
from pixeljax.xla_options import prefer_xla_cpu_convolutions

VICTIMS = ("smallcnn", "allconv", "nin", "vgg16")
# Small CNNs of other shapes, not in the package: (stage widths, pooling,
# head, layout). Two 3x3 convolutions and a 2x2 pool per stage.
SMALL_CNNS = {
  "cnn_dense_head": ((32, 64), "max", "dense", "NHWC"),
  "cnn_dense_head_nchw": ((32, 64), "max", "dense", "NCHW"),
  "cnn_avg_gap": ((48, 96, 192), "avg", "global", "NHWC"),
}
MODELS = (*VICTIMS, *SMALL_CNNS)
# The paper's table on CPU (benchmarks/paper_table.py): 100 images, DE with
# population 400 for 100 generations.
PAPER_IMAGES, PAPER_BUDGET = 100, 40_400


def small_cnn(widths, pool, head, layout, seed=0):
  """A plain-JAX CNN, float32 [B, 32, 32, 3] pixels 0..255 -> logits
  [B, 10]: per stage two 3x3 convolutions with ReLU and a 2x2 pool (max or
  average); then a dense layer of 256 and the logits ("dense"), or global
  average pooling and the logits ("global"). ``layout`` "NCHW" computes in
  PyTorch's layout, with OIHW kernels."""
  nchw = layout == "NCHW"
  keys = iter(jax.random.split(jax.random.key(seed), 2 * len(widths) + 2))
  convs, channels = [], 3
  for width in widths:
    for _ in range(2):
      kernel = jax.random.normal(next(keys), (3, 3, channels, width))
      kernel *= (2 / (9 * channels)) ** 0.5
      convs.append(kernel.transpose(3, 2, 0, 1) if nchw else kernel)
      channels = width
  side = 32 // 2 ** len(widths)
  features = channels * (side * side if head == "dense" else 1)
  hidden = 256 if head == "dense" else features
  dense = jax.random.normal(next(keys), (features, hidden)) / features**0.5
  logits = jax.random.normal(next(keys), (hidden, 10)) / hidden**0.5
  spec = ("NCHW", "OIHW", "NCHW") if nchw else ("NHWC", "HWIO", "NHWC")
  window = (1, 1, 2, 2) if nchw else (1, 2, 2, 1)
  spatial = (2, 3) if nchw else (1, 2)

  def predict(images):
    x = images / 255.0 - 0.5
    if nchw:
      x = x.transpose(0, 3, 1, 2)
    for i, kernel in enumerate(convs):
      x = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", None, None, spec)
      x = jax.nn.relu(x)
      if i % 2:
        if pool == "max":
          x = lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID")
        else:
          x = lax.reduce_window(x, 0.0, lax.add, window, window, "VALID") / 4
    if head == "dense":
      x = jax.nn.relu(x.reshape(x.shape[0], -1) @ dense)
    else:
      x = x.mean(axis=spatial) @ dense
    return x @ logits

  return predict


def model_predict(name):
  if name in SMALL_CNNS:
    return small_cnn(*SMALL_CNNS[name])
  return make_predict(create_model(name, rngs=nnx.Rngs(0)))


def measure(predict, images, labels, *, pixels, args) -> dict:
  """Counted FLOPs and DE evaluations/s of one victim at d = ``pixels``."""
  # The engine's cached evaluator: one trace serves the counts and `resolve`.
  evaluator = incremental.evaluator(predict, images.shape[1:], pixels)
  batch_size = driver.default_batch_size(
    images.shape[1:], args.popsize, len(images)
  )
  # What `incremental=None` measures and chooses for the paper's table (its
  # trial times one chunk of this attack's size, before the timed runs).
  trial_speedup = incremental_choice.measured_speedup(
    predict, images.shape[1:], pixels, batch_size, args.popsize
  )
  auto_on = incremental_choice.resolve(
    None,
    predict,
    images.shape[1:],
    pixels,
    PAPER_BUDGET,
    num_images=PAPER_IMAGES,
    batch_size=batch_size,
    round_size=args.popsize,
  )

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
  with common.OtherLoad() as load:
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
    "trial_speedup": trial_speedup,
    "auto_on": auto_on,
    "clean_map_mib_per_image": evaluator.map_bytes / 2**20,
    "evaluations": evaluations,
    "full_evals_per_s": evaluations / full,
    "incremental_evals_per_s": evaluations / windowed,
    "full_gflops": evaluations * evaluator.full_flops / full / 1e9,
    "incremental_gflops": evaluations * evaluator.flops / windowed / 1e9,
    "speedup": full / windowed,
    **load.record(),
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
  parser.add_argument("--out-dir", default=common.RESULTS_DIR)
  parser.add_argument(
    "--xla-defaults",
    action="store_true",
    help="keep XLA's CPU defaults (YNNPACK on) for the full pass",
  )
  args = parser.parse_args()
  if not args.xla_defaults:
    prefer_xla_cpu_convolutions()

  sample = load_cifar10_sample()
  images = sample.images[: args.images]
  labels = np.asarray(sample.labels[: args.images])
  rows = []
  for name in args.models:
    predict = model_predict(name)
    for pixels in args.pixels:
      row = dict(
        model=name, **measure(predict, images, labels, pixels=pixels, args=args)
      )
      print(row, flush=True)
      rows.append(row)

  platform = jax.devices()[0].platform
  name = f"incremental_{platform}" + (
    "_xla_defaults" if args.xla_defaults else ""
  )
  setting = (
    "XLA's CPU defaults for the full pass (YNNPACK on, as a Python caller "
    "has them)"
    if args.xla_defaults
    else f"YNNPACK off (`XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}`, as "
    "the `pixeljax` program sets it)"
  )
  header = [
    "model",
    "d",
    "MFLOP full",
    "MFLOP incremental",
    "fewer FLOPs",
    "trial",
    "auto",
    "clean maps / image",
    "evals/s full",
    "evals/s incremental",
    "GFLOP/s full",
    "GFLOP/s incremental",
    "speed-up",
    "load before, after",
  ]
  table = [
    [
      r["model"],
      r["pixels"],
      f"{r['full_mflops']:.1f}",
      f"{r['incremental_mflops']:.1f}",
      f"{r['flops_ratio']:.2f}x",
      f"{r['trial_speedup']:.2f}x",
      "on" if r["auto_on"] else "off",
      f"{r['clean_map_mib_per_image']:.2f} MiB",
      f"{r['full_evals_per_s']:.0f}",
      f"{r['incremental_evals_per_s']:.0f}",
      f"{r['full_gflops']:.0f}",
      f"{r['incremental_gflops']:.0f}",
      f"**{r['speedup']:.2f}x**",
      f"{r['load_before']}, {r['load_after']}",
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
    f"models (the small CNNs: {_describe_small_cnns()}). {setting}; the "
    "incremental program always compiles without YNNPACK. "
    "FLOPs: convolutions and matrix products per candidate. "
    "Speed-up: median wall time of the full attack over the incremental "
    "one, timed alternately in this run. 'trial': the speed-up "
    "`incremental=None` measured on one chunk of candidates before choosing "
    "(incremental_choice.py); 'auto': what it chose for the paper's "
    f"attack ({PAPER_IMAGES} images of {PAPER_BUDGET} evaluations).\n\n"
    + common.markdown_table(header, table)
  )
  paths = common.write_results(
    name,
    {"stamp": stamp, "command": command, "rows": rows},
    markdown,
    args.out_dir,
  )
  print(markdown)
  print("wrote", *paths)


def _describe_small_cnns() -> str:
  return "; ".join(
    f"{name}: widths {'/'.join(map(str, widths))}, {pool} pool, {head} head, "
    f"{layout}"
    for name, (widths, pool, head, layout) in SMALL_CNNS.items()
  )


if __name__ == "__main__":
  restart_with_huge_pages()  # as the `pixeljax` program runs
  main()
