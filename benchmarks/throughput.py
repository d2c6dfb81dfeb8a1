"""Attack throughput and engine efficiency on whatever device JAX sees.

Measures, for an AllConv-sized victim (random weights unless --weights):
  * plain ``predict`` images/s at the chunk size the attack uses;
  * attack model evaluations/s at the same chunk size with early stop off, so
    every generation is full; their ratio is the engine's efficiency (1.0:
    the attack costs exactly its forward passes);
  * images attacked per second at the paper's settings as N grows;
  * attack evaluations/s against the number of devices (on a CPU, forced host
    devices in subprocesses: they share the same cores);
  * continuous batching (``stream_attack``) against static batches on a
    trained victim (the shipped SmallCNN) and real CIFAR-10 test images, a
    natural mix of easy and hard images.

Run from the repository root:
  python -m benchmarks.throughput                      # CPU-sized defaults
  python -m benchmarks.throughput --sizes 64,256,1024 --batch 4000 \
      --devices 1 --stream-images 1024 --slots 256     # a GPU
Writes benchmarks/results/throughput_<platform>.{json,md}.
"""

import argparse
import json
import os
import subprocess
import sys
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


def measure_efficiency(predict, batch: int, popsize: int, generations: int,
                       repeats: int):
  """Plain predict images/s and attack evaluations/s at the same chunk size.

  The two are timed in alternation, ``repeats`` times each, and the medians
  compared, so that a change in the machine's load hits both alike. The attack
  runs with early stop off on as many images as fill two chunks exactly.
  """
  jitted = jax.jit(predict)
  batch_images = jnp.asarray(random_images(batch, 0), jnp.float32)
  count = max(1, 2 * batch // popsize)
  images, labels = random_images(count, 1), np.zeros(count, np.int64)
  evaluations = count * popsize * (generations + 1)

  def run_predict():
    jitted(batch_images).block_until_ready()

  def run_attack():
    result = pixeljax.batched_attack(
        predict, images, labels, key=jax.random.key(0), popsize=popsize,
        maxiter=generations, early_stop=False, batch_size=batch)
    assert int(result.queries.sum()) == evaluations

  run_predict(), run_attack()  # compile both
  # Enough predict calls to match one attack call's work.
  calls = max(1, evaluations // batch)
  predict_times, attack_times = [], []
  for _ in range(repeats):
    predict_times.append(common.time_call(run_predict, min_seconds=0,
                                          min_repeats=calls, warmup=False)
                         * calls)
    attack_times.append(common.time_call(run_attack, min_seconds=0,
                                         min_repeats=1, warmup=False))
  predict_rate = batch * calls / float(np.median(predict_times))
  attack_rate = evaluations / float(np.median(attack_times))
  return predict_rate, attack_rate, count, evaluations


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


def _device_worker(devices: int, model: str, batch: int, popsize: int,
                   generations: int, images: int):
  """In a subprocess with ``devices`` devices: attack evaluations/s."""
  predict, _ = build_predict(model, seed=0)
  pictures, labels = random_images(images, 3), np.zeros(images, np.int64)
  kwargs = dict(key=jax.random.key(0), popsize=popsize, maxiter=generations,
                early_stop=False, batch_size=batch)
  pixeljax.batched_attack(predict, pictures, labels, **kwargs)  # compile
  started = time.perf_counter()
  result = pixeljax.batched_attack(predict, pictures, labels, **kwargs)
  elapsed = time.perf_counter() - started
  print(json.dumps({"devices": jax.device_count(),
                    "seconds": elapsed,
                    "evaluations_per_second": int(result.queries.sum())
                                              / elapsed,
                    "images_per_second": images / elapsed}))


def measure_devices(counts, args):
  """Evaluations/s per device count; forced host devices on a CPU."""
  rows = []
  for devices in counts:
    env = dict(os.environ)
    if jax.devices()[0].platform == "cpu":
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={devices}")
    command = [sys.executable, "-m", "benchmarks.throughput",
               "--device-worker", str(devices), "--model", args.model,
               "--batch", str(args.batch), "--popsize", str(args.popsize),
               "--generations", str(args.generations),
               "--device-images", str(args.device_images)]
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          check=True, cwd=common.REPO_ROOT)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {row['devices']} device(s): "
          f"{row['evaluations_per_second']:.1f} evaluations/s")
    rows.append(row)
  return rows


def _victim_and_images(count: int):
  """The shipped SmallCNN and ``count`` test images it classifies correctly."""
  from pixeljax import data
  from pixeljax.models import weights
  predict = weights.load_predict("smallcnn")
  try:
    images, labels = data.load_cifar10("test")[:2]
    source = "CIFAR-10 test split (PIXELJAX_DATA or another source)"
  except data.DataNotFoundError:
    images, labels = data.load_cifar10_sample()[:2]
    source = "the packaged 300-image CIFAR-10 test sample"
  predicted = np.concatenate([
      np.asarray(jnp.argmax(jax.jit(predict)(
          jnp.asarray(images[i:i + 500], jnp.float32)), -1))
      for i in range(0, len(images), 500)])
  correct = np.flatnonzero(predicted == labels)[:count]
  return predict, images[correct], labels[correct], source


def measure_streaming(args):
  """Wall time of static batches against continuous batching, same images."""
  predict, images, labels, source = _victim_and_images(args.stream_images)
  settings = dict(key=jax.random.key(0), popsize=args.popsize,
                  maxiter=args.stream_maxiter, batch_size=args.batch)
  slots = args.slots
  count = len(images) // slots * slots  # whole static batches: one shape

  def static(count):
    results = [pixeljax.batched_attack(
        predict, images[i:i + slots], labels[i:i + slots],
        image_ids=np.arange(i, min(i + slots, count)), **settings)
               for i in range(0, count, slots)]
    return np.concatenate([r.queries for r in results]), np.concatenate(
        [r.success for r in results])

  def continuous(count):
    queries, success = np.zeros(count, np.int64), np.zeros(count, bool)
    for index, result in pixeljax.stream_attack(
        predict, images[:count], labels[:count], slots=slots,
        refill_every=args.refill_every, **settings):
      queries[index], success[index] = result.queries, result.success
    return queries, success

  timings = {}
  for name, run in (("static", static), ("continuous", continuous)):
    run(slots)  # one batch of slots compiles every shape the timed run needs
    started = time.perf_counter()
    timings[name] = (run(count), time.perf_counter() - started)
  (static_q, static_s), static_t = timings["static"]
  (cont_q, cont_s), cont_t = timings["continuous"]
  assert np.array_equal(static_q, cont_q) and np.array_equal(static_s, cont_s)
  row = {"victim": "smallcnn (shipped)", "images": count, "source": source,
         "slots": slots, "refill_every": args.refill_every,
         "maxiter": args.stream_maxiter, "success_rate": float(static_s.mean()),
         "mean_queries": float(static_q.mean()),
         "max_queries": int(static_q.max()),
         "static_seconds": static_t, "continuous_seconds": cont_t,
         "speedup": static_t / cont_t}
  print(f"  static {static_t:.1f} s, continuous {cont_t:.1f} s: "
        f"speedup {static_t / cont_t:.2f}")
  return row


def _markdown(payload) -> str:
  stamp, settings = payload["stamp"], payload["settings"]
  text = (
      f"# Attack throughput: {settings['model']}, {stamp['device']} "
      f"({stamp['platform']}), {stamp['date']}\n\n"
      f"jax {stamp['jax']}, {stamp['cpu_count']} CPU cores. Random weights, "
      f"{settings['parameters']:,} parameters; chunk of {settings['batch']} "
      f"candidates; popsize {settings['popsize']}.\n\n"
      + common.markdown_table(
          ["measure", "value"],
          [["plain predict, images/s",
            f"{payload['predict_images_per_second']:.1f}"],
           ["attack (early stop off), evaluations/s",
            f"{payload['attack_evaluations_per_second']:.1f}"],
           ["efficiency (attack / predict)", f"{payload['efficiency']:.3f}"]]))
  if payload.get("images_per_second"):
    text += (f"\nImages attacked per second, at most {settings['maxiter']} "
             "generations, early stop on:\n\n" + common.markdown_table(
                 ["N", "seconds", "images/s", "evaluations/s", "success rate",
                  "mean queries"],
                 [[r["images"], f"{r['seconds']:.1f}",
                   f"{r['images_per_second']:.2f}",
                   f"{r['evaluations_per_second']:.0f}",
                   f"{r['success_rate']:.2f}", f"{r['mean_queries']:.0f}"]
                  for r in payload["images_per_second"]]))
  if payload.get("devices"):
    text += ("\nEvaluations per second against devices"
             + (" (forced host devices sharing the same CPU cores)"
                if stamp["platform"] == "cpu" else "") + ":\n\n"
             + common.markdown_table(
                 ["devices", "seconds", "evaluations/s", "images/s"],
                 [[r["devices"], f"{r['seconds']:.1f}",
                   f"{r['evaluations_per_second']:.1f}",
                   f"{r['images_per_second']:.3f}"]
                  for r in payload["devices"]]))
  stream = payload.get("streaming")
  if stream:
    text += (f"\nContinuous batching against static batches of "
             f"{stream['slots']} on {stream['images']} images of "
             f"{stream['source']} that the shipped SmallCNN classifies "
             f"correctly (at most {stream['maxiter']} generations; success "
             f"{stream['success_rate']:.2f}, mean queries "
             f"{stream['mean_queries']:.0f}, max {stream['max_queries']}; "
             "identical per-image results):\n\n" + common.markdown_table(
                 ["static s", "continuous s", "speedup"],
                 [[f"{stream['static_seconds']:.1f}",
                   f"{stream['continuous_seconds']:.1f}",
                   f"{stream['speedup']:.2f}"]]))
  return text


def _csv(text: str):
  return [int(v) for v in text.split(",") if v]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="allconv",
                      choices=sorted(models.MODELS))
  parser.add_argument("--batch", type=int, default=800,
                      help="candidates per model call (default 800)")
  parser.add_argument("--popsize", type=int, default=400)
  parser.add_argument("--generations", type=int, default=2,
                      help="generations for the efficiency run (default 2)")
  parser.add_argument("--repeats", type=int, default=3,
                      help="alternating timings of predict and attack")
  parser.add_argument("--maxiter", type=int, default=100,
                      help="generations for the images/s run (paper: 100)")
  parser.add_argument("--sizes", default="1,4",
                      help="comma-separated N for the images/s run; empty: skip")
  parser.add_argument("--devices", default="1,2,4",
                      help="device counts to compare; empty: skip")
  parser.add_argument("--device-images", type=int, default=4)
  parser.add_argument("--stream-images", type=int, default=64,
                      help="images for continuous vs static; 0: skip")
  parser.add_argument("--slots", type=int, default=16)
  parser.add_argument("--refill-every", type=int, default=5)
  parser.add_argument("--stream-maxiter", type=int, default=100)
  parser.add_argument("--device-worker", type=int, default=0,
                      help=argparse.SUPPRESS)
  parser.add_argument("--name", default=None,
                      help="results file stem (default throughput_<platform>)")
  args = parser.parse_args(argv)
  if args.device_worker:
    _device_worker(args.device_worker, args.model, args.batch, args.popsize,
                   args.generations, args.device_images)
    return

  predict, params = build_predict(args.model, seed=0)
  print(f"{args.model} ({params:,} parameters, random weights) on "
        f"{jax.devices()[0].device_kind}")
  predict_rate, attack_rate, count, evaluations = measure_efficiency(
      predict, args.batch, args.popsize, args.generations, args.repeats)
  efficiency = attack_rate / predict_rate
  print(f"  predict {predict_rate:.1f} images/s, attack {attack_rate:.1f} "
        f"evaluations/s: efficiency {efficiency:.3f}")
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
      "efficiency_run": {"images": count, "evaluations": evaluations,
                         "repeats": args.repeats},
      "images_per_second": measure_images_per_second(
          predict, _csv(args.sizes), args.batch, args.popsize, args.maxiter),
      "devices": measure_devices(_csv(args.devices), args),
      "streaming": measure_streaming(args) if args.stream_images else None,
  }
  name = args.name or f"throughput_{payload['stamp']['platform']}"
  for path in common.write_results(name, payload, _markdown(payload)):
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
