"""Attack throughput and engine efficiency on whatever device JAX sees.

Measures, for an AllConv-sized victim (random weights unless --weights):
  * plain ``predict`` images/s at the chunk size the attack uses;
  * attack model evaluations/s at the same chunk size with early stop off, so
    every generation is full; their ratio is the engine's efficiency (1.0:
    the attack costs exactly its forward passes);
  * images attacked per second at the paper's settings as N grows.

Run from the repository root:
  python -m benchmarks.throughput                      # CPU-sized defaults
  python -m benchmarks.throughput --sizes 64,256,1024 --batch 4000   # a GPU
Writes benchmarks/results/throughput_<platform>.{json,md}.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pixeljax
from benchmarks import common
from pixeljax import models


def build_predict(name: str, seed: int):
  """A pure predict for ``name`` with random weights."""
  model = models.create_model(name, rngs=nnx.Rngs(seed))
  return models.make_predict(model), models.param_count(model)


def random_images(count: int, seed: int):
  """uint8 [count, 32, 32, 3] noise images."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, 32, 32, 3)).astype(np.uint8)


def measure_predict(predict, batch: int, seconds: float) -> float:
  """Plain inference: images per second at ``batch``."""
  jitted = jax.jit(predict)
  images = jnp.asarray(random_images(batch, 0), jnp.float32)
  elapsed = common.time_call(lambda: jitted(images).block_until_ready(),
                             min_seconds=seconds)
  return batch / elapsed


def measure_attack_evaluations(predict, batch: int, popsize: int,
                               generations: int, seconds: float):
  """Attack model evaluations per second with early stop off.

  Uses as many images as fill two chunks exactly, so no chunk is padding.
  Returns (evaluations per second, images, evaluations per call).
  """
  count = max(1, 2 * batch // popsize)
  images = random_images(count, 1)
  labels = np.zeros(count, np.int64)
  evaluations = count * popsize * (generations + 1)

  def attack():
    result = pixeljax.batched_attack(
        predict, images, labels, key=jax.random.key(0), popsize=popsize,
        maxiter=generations, early_stop=False, batch_size=batch)
    assert int(result.queries.sum()) == evaluations

  elapsed = common.time_call(attack, min_seconds=seconds)
  return evaluations / elapsed, count, evaluations


def measure_images_per_second(predict, sizes, batch: int, popsize: int,
                              maxiter: int):
  """Images attacked per second with the paper's DE and early stop, per N."""
  rows = []
  for count in sizes:
    images = random_images(count, 2)
    labels = np.asarray(jnp.argmax(
        jax.jit(predict)(jnp.asarray(images, jnp.float32)), -1))
    kwargs = dict(key=jax.random.key(1), popsize=popsize, maxiter=maxiter,
                  batch_size=min(batch, count * popsize))
    pixeljax.batched_attack(predict, images, labels, **kwargs)  # compile
    started = time.perf_counter()
    result = pixeljax.batched_attack(predict, images, labels, **kwargs)
    elapsed = time.perf_counter() - started
    rows.append({
        "images": count,
        "seconds": elapsed,
        "images_per_second": count / elapsed,
        "evaluations_per_second": float(result.queries.sum()) / elapsed,
        "success_rate": result.success_rate,
        "mean_queries": float(result.queries.mean()),
    })
    print(f"  N={count}: {count / elapsed:.2f} images/s, "
          f"success {result.success_rate:.2f}")
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="allconv",
                      choices=sorted(models.MODELS))
  parser.add_argument("--batch", type=int, default=800,
                      help="candidates per model call (default 800)")
  parser.add_argument("--popsize", type=int, default=400)
  parser.add_argument("--generations", type=int, default=2,
                      help="generations for the efficiency run (default 2)")
  parser.add_argument("--maxiter", type=int, default=100,
                      help="generations for the images/s run (paper: 100)")
  parser.add_argument("--sizes", default="1,4,16",
                      help="comma-separated N for the images/s run")
  parser.add_argument("--seconds", type=float, default=10.0,
                      help="least time spent timing each measurement")
  parser.add_argument("--name", default=None,
                      help="results file stem (default throughput_<platform>)")
  args = parser.parse_args(argv)

  predict, params = build_predict(args.model, seed=0)
  print(f"{args.model} ({params:,} parameters, random weights) on "
        f"{jax.devices()[0].device_kind}")
  predict_rate = measure_predict(predict, args.batch, args.seconds)
  print(f"  predict: {predict_rate:.1f} images/s at batch {args.batch}")
  attack_rate, count, evaluations = measure_attack_evaluations(
      predict, args.batch, args.popsize, args.generations, args.seconds)
  print(f"  attack: {attack_rate:.1f} evaluations/s "
        f"({count} images, {evaluations} evaluations per call)")
  efficiency = attack_rate / predict_rate
  print(f"  efficiency: {efficiency:.3f}")
  sizes = [int(s) for s in args.sizes.split(",")]
  scaling = measure_images_per_second(predict, sizes, args.batch,
                                      args.popsize, args.maxiter)

  payload = {
      "stamp": common.stamp(),
      "settings": {"model": args.model, "weights": "random",
                   "parameters": params, "batch": args.batch,
                   "popsize": args.popsize, "mutation": 0.5,
                   "crossover": None, "pixels": 1,
                   "efficiency_generations": args.generations,
                   "maxiter": args.maxiter},
      "predict_images_per_second": predict_rate,
      "attack_evaluations_per_second": attack_rate,
      "efficiency": efficiency,
      "efficiency_run": {"images": count, "evaluations": evaluations},
      "images_per_second": scaling,
  }
  stamp = payload["stamp"]
  markdown = (
      f"# Attack throughput: {args.model}, {stamp['device']} "
      f"({stamp['platform']}), {stamp['date']}\n\n"
      f"jax {stamp['jax']}, {stamp['cpu_count']} CPU cores. Random weights, "
      f"{params:,} parameters; chunk of {args.batch} candidates.\n\n"
      + common.markdown_table(
          ["measure", "value"],
          [["plain predict, images/s", f"{predict_rate:.1f}"],
           ["attack (early stop off), evaluations/s", f"{attack_rate:.1f}"],
           ["efficiency (attack / predict)", f"{efficiency:.3f}"]])
      + f"\nImages attacked per second, popsize {args.popsize}, at most "
      f"{args.maxiter} generations, early stop on:\n\n"
      + common.markdown_table(
          ["N", "seconds", "images/s", "evaluations/s", "success rate",
           "mean queries"],
          [[r["images"], f"{r['seconds']:.1f}", f"{r['images_per_second']:.2f}",
            f"{r['evaluations_per_second']:.0f}", f"{r['success_rate']:.2f}",
            f"{r['mean_queries']:.0f}"] for r in scaling]))
  name = args.name or f"throughput_{stamp['platform']}"
  for path in common.write_results(name, payload, markdown):
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
