"""Training throughput (images/s) of each victim on the current device.

    nice python benchmarks/train_throughput.py --batch-size 64 --steps 5

times whole jitted train steps (forward, backward, optimizer update, on-device
augmentation) on random images after one warm-up step that compiles, and
writes benchmarks/results/train_throughput_<platform>.json and .md.

    nice python benchmarks/train_throughput.py --models smallcnn \
      --adversarial 0.5 --adv-candidates 4 --steps 10

times clean and one-pixel adversarial steps (``pixeljax train
--adversarial``) in alternation, in one run, and writes the cost of
adversarial training as their ratio to
train_throughput_<platform>_adversarial.json and .md.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import time

import flax
from flax import nnx
import jax
import numpy as np
import optax

from pixeljax import train as T
from pixeljax.models import MODELS
from pixeljax.models import create_model
from pixeljax.models import param_count

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def measure(
  name: str,
  batch_size: int,
  steps: int,
  adversarial: float = 0.0,
  adv_candidates: int = 4,
) -> dict:
  model = create_model(name, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  cfg = T.TrainConfig(model=name).resolved()
  tx = T.make_optimizer(cfg, steps_per_epoch=1000)
  train_step, _ = T.make_steps(
    graphdef,
    tx,
    seed=0,
    do_augment=True,
    adversarial=adversarial,
    adv_candidates=adv_candidates,
  )
  rng = np.random.default_rng(0)
  images = jax.device_put(
    rng.integers(0, 256, (batch_size * 4, 32, 32, 3), dtype=np.uint8)
  )
  labels = jax.device_put(rng.integers(0, 10, batch_size * 4))
  state = (params, rest, tx.init(params))
  idx = [
    rng.permutation(batch_size * 4)[:batch_size].astype(np.int32)
    for _ in range(steps + 1)
  ]
  t0 = time.perf_counter()
  *state, loss, _ = train_step(*state, images, labels, idx[0], 0)
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(1, steps + 1):
    t0 = time.perf_counter()
    *state, loss, _ = train_step(*state, images, labels, idx[i], i)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t0)
  # The median and best step resist other jobs on a shared machine better than a
  # mean.
  median, best = float(np.median(times)), min(times)
  return dict(
    model=name,
    adversarial=adversarial,
    params=param_count(model),
    batch_size=batch_size,
    steps=steps,
    images_per_s=round(batch_size / median, 1),
    best_images_per_s=round(batch_size / best, 1),
    step_ms=round(1000 * median, 1),
    first_step_s=round(compile_s, 1),
  )


def _adversarial_table(rows, args) -> list:
  """Markdown rows: clean and adversarial steps and their ratio."""
  lines = [
    "| model | clean images/s | adversarial images/s | "
    "adversarial step / clean step |",
    "|---|---:|---:|---:|",
  ]
  for clean, adv in zip(rows[::2], rows[1::2]):
    lines.append(
      f"| {clean['model']} | {clean['images_per_s']} | "
      f"{adv['images_per_s']} | {adv['step_ms'] / clean['step_ms']:.2f} |"
    )
  return lines + [
    "",
    f"Adversarial: {args.adversarial:g} of each batch replaced by one-pixel "
    f"examples, {args.adv_candidates} pixels tried each "
    "(pixeljax.adversarial).",
  ]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument(
    "--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS)
  )
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument(
    "--adversarial",
    type=float,
    default=0.0,
    help="also time steps with this share of one-pixel adversarial examples",
  )
  p.add_argument("--adv-candidates", type=int, default=4)
  args = p.parse_args()
  rows = []
  for name in args.models:
    rows.append(measure(name, args.batch_size, args.steps))
    print(rows[-1], flush=True)
    if args.adversarial:
      rows.append(
        measure(
          name,
          args.batch_size,
          args.steps,
          args.adversarial,
          args.adv_candidates,
        )
      )
      print(rows[-1], flush=True)
  device = jax.devices()[0]
  stamp = dict(
    date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    device=f"{device.platform}: {device.device_kind}",
    cpu=platform.processor() or platform.machine(),
    host_cores=os.cpu_count(),
    python=platform.python_version(),
    jax=jax.__version__,
    flax=flax.__version__,
    optax=optax.__version__,
    batch_size=args.batch_size,
    steps=args.steps,
    command="nice python benchmarks/train_throughput.py "
    + " ".join(
      f"--{k.replace('_', '-')} "
      f"{' '.join(map(str, v)) if isinstance(v, list) else v}"
      for k, v in vars(args).items()
    ),
    load_average_1min=round(
      os.getloadavg()[0], 2
    ),  # other jobs on a shared machine
    note="float32, augmentation on; a warm-up step compiles first and is "
    "not timed",
  )
  RESULTS.mkdir(exist_ok=True)
  stem = RESULTS / f"train_throughput_{device.platform}"
  if args.adversarial:
    stem = stem.with_name(stem.name + "_adversarial")
  stem.with_suffix(".json").write_text(
    json.dumps(dict(**stamp, results=rows), indent=1)
  )
  lines = [
    f"# Training throughput ({stamp['device']}, {stamp['host_cores']} cores)",
    "",
    f"{stamp['date']}; jax {stamp['jax']}, flax {stamp['flax']}, optax "
    f"{stamp['optax']}; batch {args.batch_size}, {args.steps} timed steps; "
    f"`{stamp['command']}`; 1-minute load average {stamp['load_average_1min']}",
    "",
  ]
  if args.adversarial:
    lines += _adversarial_table(rows, args)
  else:
    lines += [
      "| model | params | images/s (median step) | images/s (best step) | "
      "ms/step "
      "| first step (compile) s |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
      f"| {r['model']} | {r['params']:,} | {r['images_per_s']} | "
      f"{r['best_images_per_s']} | {r['step_ms']} | {r['first_step_s']} |"
      for r in rows
    ]
  stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
