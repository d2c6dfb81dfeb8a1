"""Attack throughput and engine efficiency on whatever device JAX sees.

Measures, for an AllConv-sized victim (random weights unless --weights):
  * plain ``predict`` images/s at the chunk size the attack uses (with
    --bf16 also in bfloat16 compute and in float32 at full matmul precision:
    on a recent GPU JAX's default float32 precision is TF32);
  * attack model evaluations/s at the same chunk size with early stop off, so
    every generation is full; their ratio is the engine's efficiency (1.0:
    the attack costs exactly its forward passes);
  * the model's FLOPs per image (XLA's cost analysis) and the attack's
    FLOP/s as a share of the chip's peak, where the chip is known;
  * images attacked per second at the paper's settings as N grows (with
    --weights, on test images the victim classifies correctly; sizes whose
    projected time exceeds --budget-seconds are skipped and listed);
  * attack evaluations/s against the number of devices (on a CPU, forced host
    devices in subprocesses: they share the same cores);
  * continuous batching (``stream_attack``) against static batches on a
    trained victim (--weights, else the shipped SmallCNN) and real CIFAR-10
    test images, a natural mix of easy and hard images.

Run from the repository root:
  python -m benchmarks.throughput                      # CPU-sized defaults
  python -m benchmarks.throughput --sizes 64,256,1024 --batch 4000 \
      --devices 1 --stream-images 1024 --slots 256     # a GPU
  python -m benchmarks.throughput --weights runs/allconv/allconv.json --bf16 \
      --batch 4000 --generations 20 --devices "" \
      --sizes 1,4,16,64,256,1024,4096 --budget-seconds 240   # trained, a GPU
Writes benchmarks/results/throughput_<platform>.{json,md} (--results-dir).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
import pixeljax
from pixeljax import models
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.models import weights as weights_lib

# Dense peak FLOP/s by device kind, from NVIDIA's H100 and H200 SXM data
# sheets (the tensor-core figures there are quoted with sparsity: halved).
PEAK_FLOPS = {
  "NVIDIA H100 80GB HBM3": {
    "float32": 67e12,
    "tf32": 494.5e12,
    "bfloat16": 989.5e12,
  },
  "NVIDIA H200": {"float32": 67e12, "tf32": 494.5e12, "bfloat16": 989.5e12},
}


def build_predict(name: str, seed: int, weights=None, dtype=jnp.float32):
  """A pure predict for ``name`` with random weights, or for the model of
  the weights card ``weights``; ``dtype`` is the compute dtype."""
  if weights:
    model, _ = weights_lib.load_weights(weights, dtype=dtype)
  else:
    model = models.create_model(name, rngs=nnx.Rngs(seed), dtype=dtype)
  return models.make_predict(model), models.param_count(model)


def plain_rate(predict, batch: int, seconds: float = 2.0) -> float:
  """Plain jitted ``predict`` images/s on ``batch`` noise images; traced
  under the caller's ``jax.default_matmul_precision``."""
  jitted = jax.jit(predict)
  images = jnp.asarray(random_images(batch, 0), jnp.float32)
  return batch / common.time_call(
    lambda: jitted(images).block_until_ready(), min_seconds=seconds
  )


def flops_per_image(predict, batch: int):
  """FLOPs of one image's forward pass by XLA's cost analysis (of the
  program before compilation: nothing is compiled), or None."""
  shape = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  cost = jax.jit(predict).lower(shape).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get("flops")
  return float(flops) / batch if flops else None


def peak_flops(override_tflops=None):
  """(peak FLOP/s of float32 predict at JAX's matmul precision, its name)."""
  if override_tflops:
    return override_tflops * 1e12, "--peak-tflops"
  kind = jax.devices()[0].device_kind
  peaks = next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
  if peaks is None:
    return None, None
  # JAX's default float32 precision runs on TF32 tensor cores on these chips.
  full = jax.config.jax_default_matmul_precision in (
    "highest",
    "float32",
    "F32_F32_F32",
  )
  name = "float32" if full else "tf32"
  return peaks[name], f"{kind} dense {name}"


def random_images(count: int, seed: int):
  """uint8 [count, 32, 32, 3] noise images."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, 32, 32, 3)).astype(np.uint8)


def measure_efficiency(
  predict, batch: int, popsize: int, generations: int, repeats: int
):
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
      predict,
      images,
      labels,
      key=jax.random.key(0),
      popsize=popsize,
      maxiter=generations,
      early_stop=False,
      batch_size=batch,
    )
    assert int(result.queries.sum()) == evaluations

  run_predict(), run_attack()  # compile both
  # Enough predict calls to match one attack call's work.
  calls = max(1, evaluations // batch)
  predict_times, attack_times = [], []
  for _ in range(repeats):
    predict_times.append(
      common.time_call(
        run_predict, min_seconds=0, min_repeats=calls, warmup=False
      )
      * calls
    )
    attack_times.append(
      common.time_call(run_attack, min_seconds=0, min_repeats=1, warmup=False)
    )
  predict_rate = batch * calls / float(np.median(predict_times))
  attack_rate = evaluations / float(np.median(attack_times))
  return predict_rate, attack_rate, count, evaluations


def measure_images_per_second(
  predict, sizes, batch: int, popsize: int, maxiter: int, pool=None, budget=None
):
  """Images attacked per second with the paper's DE and early stop, per N.

  Attacks the first N images of ``pool`` (uint8 images, labels) if given,
  else N noise images labelled by the model. With ``budget`` (seconds), a
  size whose projected time (the last size's, scaled by N, twice: a
  compiling call and the timed one) would pass it is skipped.

  Returns:
    (rows, skipped sizes).
  """
  rows, skipped, spent = [], [], 0.0
  for count in sizes:
    last = rows[-1] if rows else None
    projected = 2 * last["seconds"] * count / last["images"] if last else 0.0
    if (budget is not None and spent + projected > budget) or (
      pool is not None and count > len(pool[0])
    ):
      skipped.append(count)
      print(
        f"  N={count}: skipped (projected {projected:.0f} s, "
        f"{spent:.0f} s of the budget spent)"
      )
      continue
    begun = time.perf_counter()
    if pool is not None:
      images, labels = pool[0][:count], pool[1][:count]
    else:
      images = random_images(count, 2)
      labels = np.asarray(
        jnp.argmax(jax.jit(predict)(jnp.asarray(images, jnp.float32)), -1)
      )
    kwargs = dict(
      key=jax.random.key(1),
      popsize=popsize,
      maxiter=maxiter,
      batch_size=min(batch, count * popsize),
    )
    pixeljax.batched_attack(predict, images, labels, **kwargs)  # compile
    started = time.perf_counter()
    result = pixeljax.batched_attack(predict, images, labels, **kwargs)
    elapsed = time.perf_counter() - started
    spent += time.perf_counter() - begun
    rows.append(
      {
        "images": count,
        "seconds": elapsed,
        "images_per_second": count / elapsed,
        "evaluations_per_second": float(result.queries.sum()) / elapsed,
        "success_rate": result.success_rate,
        "mean_queries": float(result.queries.mean()),
      }
    )
    print(
      f"  N={count}: {count / elapsed:.2f} images/s, "
      f"success {result.success_rate:.2f}"
    )
  return rows, skipped


def _device_worker(
  devices: int,
  model: str,
  batch: int,
  popsize: int,
  generations: int,
  images: int,
):
  """In a subprocess with ``devices`` devices: attack evaluations/s."""
  predict, _ = build_predict(model, seed=0)
  pictures, labels = random_images(images, 3), np.zeros(images, np.int64)
  kwargs = dict(
    key=jax.random.key(0),
    popsize=popsize,
    maxiter=generations,
    early_stop=False,
    batch_size=batch,
  )
  pixeljax.batched_attack(predict, pictures, labels, **kwargs)  # compile
  started = time.perf_counter()
  result = pixeljax.batched_attack(predict, pictures, labels, **kwargs)
  elapsed = time.perf_counter() - started
  print(
    json.dumps(
      {
        "devices": jax.device_count(),
        "seconds": elapsed,
        "evaluations_per_second": int(result.queries.sum()) / elapsed,
        "images_per_second": images / elapsed,
      }
    )
  )


def measure_devices(counts, args):
  """Evaluations/s per device count; forced host devices on a CPU."""
  rows = []
  for devices in counts:
    env = dict(os.environ)
    if jax.devices()[0].platform == "cpu":
      env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={devices}"
      )
    command = [
      sys.executable,
      "-m",
      "benchmarks.throughput",
      "--device-worker",
      str(devices),
      "--model",
      args.model,
      "--batch",
      str(args.batch),
      "--popsize",
      str(args.popsize),
      "--generations",
      str(args.generations),
      "--device-images",
      str(args.device_images),
    ]
    done = subprocess.run(
      command,
      env=env,
      capture_output=True,
      text=True,
      check=True,
      cwd=common.REPO_ROOT,
    )
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(
      f"  {row['devices']} device(s): "
      f"{row['evaluations_per_second']:.1f} evaluations/s"
    )
    rows.append(row)
  return rows


def _victim_and_images(count: int, predict=None):
  """``predict`` (default: the shipped SmallCNN) and ``count`` test images it
  classifies correctly (fewer if the test set holds fewer)."""
  from pixeljax import data

  if predict is None:
    predict = weights_lib.load_predict("smallcnn")
  try:
    images, labels = data.load_cifar10("test")[:2]
    source = "CIFAR-10 test split (PIXELJAX_DATA or another source)"
  except data.DataNotFoundError:
    images, labels = data.load_cifar10_sample()[:2]
    source = "the packaged 300-image CIFAR-10 test sample"
  predicted = np.concatenate(
    [
      np.asarray(
        jnp.argmax(
          jax.jit(predict)(jnp.asarray(images[i : i + 500], jnp.float32)), -1
        )
      )
      for i in range(0, len(images), 500)
    ]
  )
  correct = np.flatnonzero(predicted == labels)[:count]
  return predict, images[correct], labels[correct], source


def measure_streaming(args, predict=None, victim="smallcnn (shipped)"):
  """Wall time of static batches against continuous batching, same images,
  on ``predict`` (default: the shipped SmallCNN)."""
  predict, images, labels, source = _victim_and_images(
    args.stream_images, predict
  )
  settings = dict(
    key=jax.random.key(0),
    popsize=args.popsize,
    maxiter=args.stream_maxiter,
    batch_size=args.batch,
  )
  slots = args.slots
  count = len(images) // slots * slots  # whole static batches: one shape

  def static(count):
    results = [
      pixeljax.batched_attack(
        predict,
        images[i : i + slots],
        labels[i : i + slots],
        image_ids=np.arange(i, min(i + slots, count)),
        **settings,
      )
      for i in range(0, count, slots)
    ]
    return np.concatenate([r.queries for r in results]), np.concatenate(
      [r.success for r in results]
    )

  def continuous(count):
    queries, success = np.zeros(count, np.int64), np.zeros(count, bool)
    for index, result in pixeljax.stream_attack(
      predict,
      images[:count],
      labels[:count],
      slots=slots,
      refill_every=args.refill_every,
      **settings,
    ):
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
  row = {
    "victim": victim,
    "images": count,
    "source": source,
    "slots": slots,
    "refill_every": args.refill_every,
    "maxiter": args.stream_maxiter,
    "success_rate": float(static_s.mean()),
    "mean_queries": float(static_q.mean()),
    "max_queries": int(static_q.max()),
    "static_seconds": static_t,
    "continuous_seconds": cont_t,
    "speedup": static_t / cont_t,
  }
  print(
    f"  static {static_t:.1f} s, continuous {cont_t:.1f} s: "
    f"speedup {static_t / cont_t:.2f}"
  )
  return row


def _markdown(payload) -> str:
  stamp, settings = payload["stamp"], payload["settings"]
  text = (
    f"# Attack throughput: {settings['model']}, {stamp['device']} "
    f"({stamp['platform']}), {stamp['date']}\n\n"
    f"jax {stamp['jax']}, {stamp['cpu_count']} CPU cores, matmul precision "
    f"{stamp.get('matmul_precision', 'default')}. Weights: "
    f"{settings['weights']}, {settings['parameters']:,} parameters; chunk "
    f"of {settings['batch']} candidates; popsize {settings['popsize']}.\n\n"
    + common.markdown_table(["measure", "value"], _measures(payload))
  )
  if payload.get("images_per_second"):
    skipped = payload.get("images_per_second_skipped")
    images = settings.get("sweep_images", "noise images")
    text += (
      f"\nImages attacked per second ({images}), at most "
      f"{settings['maxiter']} generations, early stop on"
      + (
        f"; skipped, over the time budget: N = {', '.join(map(str, skipped))}"
        if skipped
        else ""
      )
      + ":\n\n"
      + common.markdown_table(
        [
          "N",
          "seconds",
          "images/s",
          "evaluations/s",
          "success rate",
          "mean queries",
        ],
        [
          [
            r["images"],
            f"{r['seconds']:.1f}",
            f"{r['images_per_second']:.2f}",
            f"{r['evaluations_per_second']:.0f}",
            f"{r['success_rate']:.2f}",
            f"{r['mean_queries']:.0f}",
          ]
          for r in payload["images_per_second"]
        ],
      )
    )
  if payload.get("devices"):
    text += (
      "\nEvaluations per second against devices"
      + (
        " (forced host devices sharing the same CPU cores)"
        if stamp["platform"] == "cpu"
        else ""
      )
      + ":\n\n"
      + common.markdown_table(
        ["devices", "seconds", "evaluations/s", "images/s"],
        [
          [
            r["devices"],
            f"{r['seconds']:.1f}",
            f"{r['evaluations_per_second']:.1f}",
            f"{r['images_per_second']:.3f}",
          ]
          for r in payload["devices"]
        ],
      )
    )
  stream = payload.get("streaming")
  if stream:
    text += (
      f"\nContinuous batching against static batches of "
      f"{stream['slots']} on {stream['images']} images of "
      f"{stream['source']} that the victim, {stream['victim']}, "
      f"classifies correctly (at most {stream['maxiter']} generations; "
      f"success {stream['success_rate']:.2f}, mean queries "
      f"{stream['mean_queries']:.0f}, max {stream['max_queries']}; "
      "identical per-image results):\n\n"
      + common.markdown_table(
        ["static s", "continuous s", "speedup"],
        [
          [
            f"{stream['static_seconds']:.1f}",
            f"{stream['continuous_seconds']:.1f}",
            f"{stream['speedup']:.2f}",
          ]
        ],
      )
    )
  return text


def _measures(payload) -> list:
  """The rows of the headline table (newer fields only where measured)."""
  rows = [
    ["plain predict, images/s", f"{payload['predict_images_per_second']:.1f}"]
  ]
  for name, rate in payload.get(
    "predict_images_per_second_variants", {}
  ).items():
    rows.append([f"plain predict, {name}, images/s", f"{rate:.1f}"])
  rows += [
    [
      "attack (early stop off), evaluations/s",
      f"{payload['attack_evaluations_per_second']:.1f}",
    ],
    ["efficiency (attack / predict)", f"{payload['efficiency']:.3f}"],
  ]
  if payload.get("flops_per_image"):
    rows.append(
      [
        "forward GFLOP per image (XLA cost analysis)",
        f"{payload['flops_per_image'] / 1e9:.3f}",
      ]
    )
    rows.append(
      ["attack TFLOP/s", f"{payload['attack_flops_per_second'] / 1e12:.2f}"]
    )
  if payload.get("attack_share_of_peak") is not None:
    rows.append(
      [
        f"share of peak ({payload['peak_flops_source']}, "
        f"{payload['peak_flops'] / 1e12:.0f} TFLOP/s)",
        f"{payload['attack_share_of_peak']:.1%}",
      ]
    )
  return rows


def _csv(text: str):
  return [int(v) for v in text.split(",") if v]


def main(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.throughput",
    description=__doc__.split("\n\n")[0],
  )
  parser.add_argument(
    "--model",
    default="allconv",
    choices=sorted(models.MODELS),
    help="victim architecture, random weights unless "
    "--weights (default allconv)",
  )
  parser.add_argument(
    "--batch",
    type=int,
    default=800,
    help="candidates per model call (default 800)",
  )
  parser.add_argument(
    "--popsize",
    type=int,
    default=400,
    help="DE population per image (default 400)",
  )
  parser.add_argument(
    "--generations",
    type=int,
    default=2,
    help="generations for the efficiency run (default 2)",
  )
  parser.add_argument(
    "--repeats",
    type=int,
    default=3,
    help="alternating timings of predict and attack",
  )
  parser.add_argument(
    "--maxiter",
    type=int,
    default=100,
    help="generations for the images/s run (paper: 100)",
  )
  parser.add_argument(
    "--sizes",
    default="1,4",
    help="comma-separated N for the images/s run; empty: skip",
  )
  parser.add_argument(
    "--devices", default="1,2,4", help="device counts to compare; empty: skip"
  )
  parser.add_argument(
    "--device-images",
    type=int,
    default=4,
    help="images attacked in the device-count run (default 4)",
  )
  parser.add_argument(
    "--stream-images",
    type=int,
    default=64,
    help="images for continuous vs static; 0: skip",
  )
  parser.add_argument(
    "--slots",
    type=int,
    default=16,
    help="continuous batching: images in flight, and the "
    "static batch size it is compared with (default 16)",
  )
  parser.add_argument(
    "--refill-every",
    type=int,
    default=5,
    help="continuous batching: rounds between refills (default 5)",
  )
  parser.add_argument(
    "--stream-maxiter",
    type=int,
    default=100,
    help="continuous vs static: most generations per image (default 100)",
  )
  parser.add_argument(
    "--device-worker", type=int, default=0, help=argparse.SUPPRESS
  )
  parser.add_argument(
    "--name",
    default=None,
    help="results file stem (default throughput_<platform>)",
  )
  parser.add_argument(
    "--weights",
    metavar="CARD",
    help="a trained victim's weights card (NAME.json); "
    "--model is then its architecture",
  )
  parser.add_argument(
    "--bf16",
    action="store_true",
    help="also time plain predict in bfloat16 compute and "
    "in float32 at full matmul precision",
  )
  parser.add_argument(
    "--budget-seconds",
    type=float,
    help="skip sizes of the images/s run projected to end "
    "past this many seconds of it",
  )
  parser.add_argument(
    "--peak-tflops",
    type=float,
    help="the device's peak TFLOP/s for the precision used "
    "(default: a table of known chips)",
  )
  parser.add_argument(
    "--results-dir",
    default=common.RESULTS_DIR,
    help="folder for the JSON and markdown results "
    "(default benchmarks/results)",
  )
  args = parser.parse_args(argv)
  if args.device_worker:
    _device_worker(
      args.device_worker,
      args.model,
      args.batch,
      args.popsize,
      args.generations,
      args.device_images,
    )
    return
  if args.weights:
    args.model = weights_lib.read_card(args.weights)["architecture"]

  predict, params = build_predict(args.model, 0, args.weights)
  weights = args.weights or "random"
  print(
    f"{args.model} ({params:,} parameters, weights {weights}) on "
    f"{jax.devices()[0].device_kind}"
  )
  predict_rate, attack_rate, count, evaluations = measure_efficiency(
    predict, args.batch, args.popsize, args.generations, args.repeats
  )
  efficiency = attack_rate / predict_rate
  print(
    f"  predict {predict_rate:.1f} images/s, attack {attack_rate:.1f} "
    f"evaluations/s: efficiency {efficiency:.3f}"
  )
  variants = {}
  if args.bf16:
    seconds = 0.5 * args.repeats
    with jax.default_matmul_precision("highest"):
      variants["float32_highest"] = plain_rate(predict, args.batch, seconds)
    variants["bfloat16"] = plain_rate(
      build_predict(args.model, 0, args.weights, jnp.bfloat16)[0],
      args.batch,
      seconds,
    )
    print(
      "  plain predict, images/s: "
      + ", ".join(f"{k} {v:.1f}" for k, v in variants.items())
    )
  flops = flops_per_image(predict, args.batch)
  peak, peak_name = peak_flops(args.peak_tflops)
  attack_flops = attack_rate * flops if flops else None
  pool = None
  if args.weights and _csv(args.sizes):
    pool = _victim_and_images(max(_csv(args.sizes)), predict)[1:3]
  sweep, skipped = measure_images_per_second(
    predict,
    _csv(args.sizes),
    args.batch,
    args.popsize,
    args.maxiter,
    pool,
    args.budget_seconds,
  )
  payload = {
    "stamp": {
      **common.stamp(),
      "matmul_precision": str(
        jax.config.jax_default_matmul_precision or "default"
      ),
    },
    "settings": {
      "model": args.model,
      "weights": weights,
      "parameters": params,
      "batch": args.batch,
      "popsize": args.popsize,
      "mutation": 0.5,
      "crossover": None,
      "pixels": 1,
      "efficiency_generations": args.generations,
      "maxiter": args.maxiter,
      "sweep_images": "correctly classified test images"
      if pool is not None
      else "noise images",
      "budget_seconds": args.budget_seconds,
    },
    "predict_images_per_second": predict_rate,
    "predict_images_per_second_variants": variants,
    "attack_evaluations_per_second": attack_rate,
    "efficiency": efficiency,
    "efficiency_run": {
      "images": count,
      "evaluations": evaluations,
      "repeats": args.repeats,
    },
    "flops_per_image": flops,
    "attack_flops_per_second": attack_flops,
    "peak_flops": peak,
    "peak_flops_source": peak_name,
    "attack_share_of_peak": attack_flops / peak
    if attack_flops and peak
    else None,
    "images_per_second": sweep,
    "images_per_second_skipped": skipped,
    "devices": measure_devices(_csv(args.devices), args),
    "streaming": (
      measure_streaming(
        args, *((predict, f"{args.model} ({weights})") if args.weights else ())
      )
      if args.stream_images
      else None
    ),
  }
  name = args.name or f"throughput_{payload['stamp']['platform']}"
  for path in common.write_results(
    name, payload, _markdown(payload), args.results_dir
  ):
    print(f"wrote {path}")


if __name__ == "__main__":
  restart_with_huge_pages()  # as the `pixeljax` program runs
  main()
