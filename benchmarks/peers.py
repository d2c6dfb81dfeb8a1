"""Peers side by side: pixeljax, torchattacks OnePixel and ART PixelAttack.

One run, one victim, the same images, the same budget: each tool attacks the
same correctly classified CIFAR-10 test images (from the packaged sample),
non-targeted, with a population of 400 and 100 generations, for 1 and 3
pixels. The victim is a shipped trained model (SmallCNN by default, or
``--victim allconv``) or a weights card; the peers get it rebuilt in
PyTorch with the same weights (``torch_victims``), checked to give the same
logits (max |difference| <= 1e-4) on the images before any attack runs.
Every tool's returned images are scored the same way (``peer_runs.verify``).

The row "pixeljax-torch" is what a PyTorch user gets: pixeljax attacking
that same torch module through ``adapters.from_torch`` (translated into JAX
operations, ``backend="translate"``: an error rather than a silent fallback
to the host callback), beside pixeljax on the JAX model and the peers on
the module.

Needs the optional extra (on a CPU machine pin the CPU build of torch):
  pip install -e ".[peers]" "torch==2.13.0"
Run from the repository root (defaults: 8 images, about 8 minutes on 2 idle
CPU cores; other work on the machine slows the peers' Python loops most, and
ART spends up to 40,400 evaluations on an image it cannot fool):
  nice -n 10 python -m benchmarks.peers
  python -m benchmarks.peers --images 2 --maxiter 5     # a quick look
  python -m benchmarks.peers --images 12 --pixels 1 \
      --tools pixeljax,pixeljax-torch,torchattacks --name peers_torch_cpu
  python -m benchmarks.peers --victim allconv --images 8 --pixels 1 \
      --tools pixeljax,pixeljax-torch,torchattacks \
      --name peers_torch_allconv_cpu    # about 30 minutes: torchattacks 18
  python -m benchmarks.peers --weights DIR/allconv.json --images 16 \
      --torch-device cuda                                # a GPU, both sides
Writes benchmarks/results/peers_<platform>.{json,md,png}.
"""

import argparse
import contextlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import common
from benchmarks import peer_runs
from benchmarks import torch_victims
from pixeljax import adapters
from pixeljax import data
from pixeljax import models
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.models import weights

# run_benchmark's default tools; the command line adds TORCH_TOOL.
TOOLS = ("pixeljax", "torchattacks", "art")
# pixeljax on the torch module through adapters.from_torch.
TORCH_TOOL = "pixeljax-torch"
ALL_TOOLS = ("pixeljax", TORCH_TOOL, "torchattacks", "art")
LOGIT_TOLERANCE = 1e-4

# How each tool meets the budget, for the output.
SETTINGS_NOTES = {
  "pixeljax": (
    "batched_attack(pixels, popsize={popsize}, maxiter={maxiter}, "
    "batch_size={popsize}): the paper's DE: DE/rand/1, F = 0.5, no crossover; "
    "coordinates uniform, "
    "colours N(128, 127); population {popsize} for any number of pixels; "
    "all images at once in one jit; each image stops as soon as one "
    "candidate succeeds; integer pixels. Wall time excludes the first "
    "call's jit compilation (given apart)."
  ),
  TORCH_TOOL: (
    "batched_attack(adapters.from_torch(module, nchw=True, "
    "backend='translate'), ...) with the settings of pixeljax: the torch "
    "module the peers attack (without their [0, 1] wrapper), exported with "
    "torch.export and run as JAX operations inside the one jit (incremental "
    "evaluation where it pays, as for the JAX model). Wall time excludes "
    "the first call (export, translation and compilation; given apart); "
    "'evals/s / forward' divides by torch's own forward rate, the speed "
    "the module has in PyTorch."
  ),
  "torchattacks": (
    "OnePixel(pixels, steps={maxiter}, popsize={popsize}, "
    "inf_batch={popsize}): vendored scipy-style DE, best1bin, F dithered "
    "in [0.5, 1) per generation, recombination 1 (every gene from the "
    "mutant), uniform random start; population popsize // (5 d) * 5 d; "
    "stops when the population's best succeeds (checked once a "
    "generation); continuous colours in [0, 1], rounded to 8 bits by the "
    "model wrapper; one image at a time."
  ),
  "art": (
    "PixelAttack(th=pixels, es=1, max_iter={maxiter}): es=1 is "
    "differential evolution (es=0 is CMA-ES); vendored scipy-style DE, "
    "best1bin, F dithered in [0.5, 1), recombination 1, Latin-hypercube "
    "start; population fixed by ART at 400 // (5 d) * 5 d (popsize is not "
    "settable); prediction batch 128 (fixed); stops when the population's "
    "best succeeds (once a generation); integer colours; one image at a "
    "time."
  ),
}


def population(tool: str, popsize: int, pixels: int, channels: int) -> int:
  """The population each tool really runs for a requested ``popsize``.

  The peers' scipy-style DE takes a multiplier of the (2 + channels) * pixels
  genes; ART ignores ``popsize`` and asks for 400.
  """
  genes = (2 + channels) * pixels
  if tool == "pixeljax":
    return popsize
  return max(1, (400 if tool == "art" else popsize) // genes) * genes


def load_victim(card: str | None, name: str = "smallcnn"):
  """The victim model and a description of where it came from.

  Takes ``card`` if given, else the shipped model ``name`` (its trained
  weights from pixeljax/weights, e.g. "smallcnn" or "allconv").
  """
  if card:
    model, meta = weights.load_weights(card)
    model.eval()
    return model, {
      "weights": card,
      "architecture": meta["architecture"],
      "test_accuracy": meta.get("test_accuracy"),
    }
  if name in weights.shipped_models():
    meta = weights.shipped_card(name)
    return weights.load_victim(name), {
      "weights": f"shipped pixeljax/weights/{name}",
      "architecture": meta["architecture"],
      "test_accuracy": meta.get("test_accuracy"),
    }
  raise FileNotFoundError(
    f"no --weights card given and no shipped {name} weights; train one "
    f"with `python -m pixeljax.train --model {name} --out runs/{name}` "
    f"and pass --weights runs/{name}/{name}.json"
  )


def pick_images(predict, count: int):
  """The first ``count`` correctly classified sample images, classes in turn.

  Returns:
    (images uint8 [count, 32, 32, 3], labels int64 [count], sample indices).
  """
  sample = data.load_cifar10_sample()
  logits = jax.jit(predict)(jnp.asarray(sample.images, jnp.float32))
  correct = np.asarray(jnp.argmax(logits, -1)) == sample.labels
  # Round-robin over classes: the k-th correct image of each class in turn.
  rank = np.zeros(len(sample.labels), np.int64)
  for label in np.unique(sample.labels):
    where = np.flatnonzero(correct & (sample.labels == label))
    rank[where] = np.arange(len(where))
  order = [i for i in np.lexsort((sample.labels, rank)) if correct[i]]
  if len(order) < count:
    raise ValueError(
      f"images: asked for {count}, but the victim classifies "
      f"only {len(order)} sample images correctly"
    )
  chosen = np.asarray(order[:count])
  return sample.images[chosen], sample.labels[chosen], chosen


def _device(torch_model) -> torch.device:
  return next(torch_model.parameters()).device


@contextlib.contextmanager
def full_float32():
  """Both frameworks at full float32 precision: on a recent GPU their default
  float32 convolutions (JAX's matmuls too) run in TF32, whose rounding alone
  would exceed the logit tolerance."""
  saved = (
    torch.backends.cudnn.allow_tf32,
    torch.backends.cuda.matmul.allow_tf32,
  )
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  try:
    with jax.default_matmul_precision("highest"):
      yield
  finally:
    (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = (
      saved
    )


def logit_gap(predict, torch_model, images) -> float:
  """Max |JAX logits - torch logits| over ``images`` uint8 [N, H, W, C], both
  computed at full float32 precision."""
  with full_float32(), torch.no_grad():
    jax_logits = np.asarray(jax.jit(predict)(jnp.asarray(images, jnp.float32)))
    torch_logits = (
      torch_model(peer_runs.to_unit_nchw(images).to(_device(torch_model)))
      .cpu()
      .numpy()
    )
  return float(np.abs(jax_logits - torch_logits).max())


def forward_rate(function, batch, seconds: float) -> float:
  """Images per second of a blocking ``function()`` on ``batch`` images."""
  return batch / common.time_call(function, min_seconds=seconds)


def forward_rates(predict, torch_model, batch: int, seconds: float) -> dict:
  """Plain forward images/s of the JAX and the torch model at ``batch``."""
  images = (
    np.random.default_rng(0)
    .integers(0, 256, (batch, 32, 32, 3))
    .astype(np.uint8)
  )
  jitted = jax.jit(predict)
  jax_images = jnp.asarray(images, jnp.float32)
  device = _device(torch_model)
  torch_images = peer_runs.to_unit_nchw(images).to(device)

  def torch_forward():
    with torch.no_grad():
      torch_model(torch_images)
    if device.type == "cuda":
      torch.cuda.synchronize(device)

  return {
    "batch": batch,
    "jax_images_per_second": forward_rate(
      lambda: jitted(jax_images).block_until_ready(), batch, seconds
    ),
    "torch_images_per_second": forward_rate(torch_forward, batch, seconds),
  }


def run_benchmark(
  model,
  images,
  labels,
  *,
  pixel_counts,
  popsize: int,
  maxiter: int,
  tools=TOOLS,
  seed: int = 0,
  forward_seconds: float = 2.0,
  log=print,
  torch_device: str = "cpu",
) -> tuple[list[dict], float]:
  """Attacks ``images`` with each tool for each pixel count.

  Args:
    model: a pixeljax victim (NNX, float32).
    images: uint8 [N, H, W, 3]; labels: int [N], classified correctly.
    forward_seconds: time spent measuring the plain forward pass of the JAX
      and the torch model before each run.
    torch_device: where the peers' torch model runs ("cpu" or "cuda").

  Returns:
    (rows, logit gap): one row per (pixels, tool) with success, wall time,
    rates and the speedup of pixeljax over the tool (when pixeljax ran); and
    the max |JAX - torch| logit difference on ``images``.

  Raises:
    RuntimeError: the torch rebuild's logits differ by more than 1e-4.
  """
  predict = models.make_predict(model)
  torch_model = torch_victims.Pixels01(torch_victims.to_torch(model)).to(
    torch_device
  )
  gap = logit_gap(predict, torch_model, images)
  if not gap <= LOGIT_TOLERANCE:
    raise RuntimeError(
      f"the torch rebuild's logits differ from the JAX "
      f"model's by {gap:.3g} > {LOGIT_TOLERANCE}"
    )
  if TORCH_TOOL in tools:
    # The module as a torch user hands it over: NCHW pixels 0..255.
    translated = adapters.from_torch(
      torch_victims.to_torch(model), nchw=True, backend="translate"
    )
    with full_float32():
      translated_gap = float(
        jnp.abs(
          jax.jit(translated)(jnp.asarray(images, jnp.float32))
          - jax.jit(predict)(jnp.asarray(images, jnp.float32))
        ).max()
      )
    if not translated_gap <= LOGIT_TOLERANCE:
      raise RuntimeError(
        f"from_torch's translated logits differ from the JAX model's by "
        f"{translated_gap:.3g} > {LOGIT_TOLERANCE}"
      )
  num_classes = int(
    np.asarray(predict(jnp.asarray(images[:1], jnp.float32))).shape[-1]
  )
  rows = []
  for pixels in pixel_counts:
    runs = {}
    for tool in tools:
      # The machine's speed can drift (other work): measure the plain
      # forward pass right before each run, at the population's batch.
      forward = forward_rates(predict, torch_model, popsize, forward_seconds)
      own = forward[
        "jax_images_per_second"
        if tool == "pixeljax"
        else "torch_images_per_second"
      ]  # pixeljax-torch too: the module's speed in torch
      log(f"{tool}, {pixels} pixel(s), {len(images)} images ...")
      budget = dict(pixels=pixels, maxiter=maxiter, seed=seed)
      if tool == "pixeljax":
        run = peer_runs.run_pixeljax(
          predict, images, labels, popsize=popsize, **budget
        )
      elif tool == TORCH_TOOL:
        run = peer_runs.run_pixeljax(
          translated, images, labels, popsize=popsize, **budget
        )
      elif tool == "torchattacks":
        run = peer_runs.run_torchattacks(
          torch_model, images, labels, popsize=popsize, **budget
        )
      elif tool == "art":
        run = peer_runs.run_art(
          torch_model,
          images,
          labels,
          num_classes=num_classes,
          device_type="cpu" if torch_device == "cpu" else "gpu",
          **budget,
        )
      else:
        raise ValueError(f"tools: unknown tool {tool!r}; expected {ALL_TOOLS}")
      check = peer_runs.verify(predict, images, run.adv_images, labels, pixels)
      runs[tool] = run
      if tool == TORCH_TOOL:
        check["translation_logit_gap"] = translated_gap
      rows.append(
        {
          "tool": tool,
          "pixels": pixels,
          "images": len(images),
          "population": population(
            "pixeljax" if tool == TORCH_TOOL else tool,
            popsize,
            pixels,
            images.shape[-1],
          ),
          "success_rate": float(np.mean(check["success"])),
          "seconds": run.seconds,
          "images_per_second": len(images) / run.seconds,
          "evaluations": run.evaluations,
          "evaluations_per_second": run.evaluations / run.seconds,
          "first_call_seconds": run.first_call_seconds,
          "forward": forward,
          "efficiency": run.evaluations / run.seconds / own,
          **check,
        }
      )
      log(
        f"  success {rows[-1]['success_rate']:.2f}, {run.seconds:.1f} s, "
        f"{rows[-1]['evaluations_per_second']:.0f} evaluations/s"
      )
    if "pixeljax" in runs:
      fast = runs["pixeljax"]
      for row in rows[-len(tools) :]:
        row["pixeljax_speedup"] = row["seconds"] / fast.seconds
        row["pixeljax_speedup_first_call"] = (
          row["seconds"] / fast.first_call_seconds
        )
    if TORCH_TOOL in runs:
      # What a torch user gains: the tool's time over from_torch's.
      for row in rows[-len(tools) :]:
        row["from_torch_speedup"] = row["seconds"] / runs[TORCH_TOOL].seconds
  return rows, gap


def render_markdown(payload: dict) -> str:
  """The results as a short markdown page."""
  stamp, setup = payload["stamp"], payload["settings"]
  load = setup["load_average"]
  nan = float("nan")
  rows = [
    [
      r["pixels"],
      r["tool"],
      r["population"],
      f"{r['success_rate']:.0%}",
      f"{r['seconds']:.1f}",
      f"{r['images_per_second']:.3f}",
      f"{r['evaluations_per_second']:.0f}",
      f"{r['evaluations'] / r['images']:.0f}",
      f"{r.get('efficiency', nan):.2f}",
      f"{r.get('pixeljax_speedup', nan):.1f}x",
      f"{r.get('pixeljax_speedup_first_call', nan):.1f}x",
      f"{r.get('from_torch_speedup', nan):.1f}x",
    ]
    for r in payload["rows"]
  ]
  forward = [r["forward"] for r in payload["rows"]]
  jax_rate = np.median([f["jax_images_per_second"] for f in forward])
  torch_rate = np.median([f["torch_images_per_second"] for f in forward])
  first_calls = ", ".join(
    f"{r['first_call_seconds']:.0f} s for {r['pixels']} pixel(s)"
    for r in payload["rows"]
    if r["tool"] == "pixeljax"
  )
  notes = "\n".join(
    f"- **{tool}**: {note}" for tool, note in payload["tool_settings"].items()
  )
  return (
    f"# Peers side by side: {setup['victim']['architecture']}, "
    f"{stamp['device']} ({stamp['platform']}), {stamp['date']}\n\n"
    f"Victim: {setup['victim']['weights']} (test accuracy "
    f"{setup['victim']['test_accuracy']}). {setup['images']} correctly "
    f"classified images of the packaged CIFAR-10 test sample, non-targeted, "
    f"population {setup['popsize']}, at most {setup['maxiter']} "
    f"generations. The torch rebuild's logits match the JAX model's to "
    f"{payload['logit_gap']:.1e}. Success is re-checked on each tool's "
    f"returned uint8 images with the JAX model (at most d pixels changed). "
    f"jax {stamp['jax']}, torch {payload['versions']['torch']} (on "
    f"{setup.get('torch_device', 'cpu')}), "
    f"torchattacks {payload['versions']['torchattacks']}, ART "
    f"{payload['versions']['art']}; {stamp['cpu_count']} CPU cores, "
    f"load average {load['start']:.1f} at the start and {load['end']:.1f} "
    f"at the end (above {stamp['cpu_count']}, other work shared the CPU "
    f"and slowed every tool).\n\n"
    f"Command: `{setup['command']}`\n\n"
    + common.markdown_table(
      [
        "pixels",
        "tool",
        "population",
        "success",
        "wall s",
        "images/s",
        "model evals/s",
        "evals per image",
        "evals/s / forward",
        "pixeljax speedup",
        "speedup over its first call",
        "from_torch speedup",
      ],
      rows,
    )
    + f"\nPlain forward pass of the same model at batch "
    f"{forward[0]['batch']} (median of the measurements taken before each "
    f"run): JAX {jax_rate:.0f} images/s, torch {torch_rate:.0f} images/s "
    f"({jax_rate / torch_rate:.1f}x): about that much of pixeljax's speedup "
    f"comes from the framework's forward pass on this device, the rest "
    f'from the search. "evals/s / forward" divides each tool\'s model '
    f"evaluations per second by its own framework's forward rate, measured "
    f"just before its run (1.0: the attack costs only its forward "
    f"passes). Speedup is the tool's wall time over pixeljax's on the same "
    f"images (pixeljax's second call); its first call also compiles "
    f"({first_calls}), which the last column includes. pixeljax "
    f"evaluates one image's population per model call (batch_size = "
    f'popsize). "from_torch speedup" is the tool\'s wall time over '
    f"that of pixeljax on the torch module through adapters.from_torch "
    f"({TORCH_TOOL}, where it ran).\n\n"
    f"How each tool meets the budget:\n\n{notes}\n"
  )


def plot(payload: dict, path: str) -> None:
  """Bar chart: images/s (log scale) and success rate, per tool and pixels."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  rows = payload["rows"]
  tools = list(dict.fromkeys(r["tool"] for r in rows))
  pixel_counts = list(dict.fromkeys(r["pixels"] for r in rows))
  width = 0.8 / len(tools)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for k, tool in enumerate(tools):
    mine = {r["pixels"]: r for r in rows if r["tool"] == tool}
    where = np.arange(len(pixel_counts)) + (k - (len(tools) - 1) / 2) * width
    for ax, field in zip(axes, ("images_per_second", "success_rate")):
      ax.bar(where, [mine[p][field] for p in pixel_counts], width, label=tool)
  for ax, title in zip(
    axes, ("images attacked per second (log)", "success rate")
  ):
    ax.set_xticks(
      np.arange(len(pixel_counts)),
      [f"{p} pixel{'s' * (p > 1)}" for p in pixel_counts],
    )
    ax.set_title(title)
  axes[0].set_yscale("log")
  axes[1].set_ylim(0, 1)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(tools))
  setup = payload["settings"]
  fig.suptitle(
    f"Pixel attack on {setup['victim']['architecture']}, "
    f"{setup['images']} images, population {setup['popsize']}, "
    f"{setup['maxiter']} generations "
    f"({payload['stamp']['device']})"
  )
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--images",
    type=int,
    default=8,
    help="images attacked by every tool (default 8)",
  )
  parser.add_argument(
    "--pixels", default="1,3", help="comma-separated pixel counts (default 1,3)"
  )
  parser.add_argument("--popsize", type=int, default=400)
  parser.add_argument("--maxiter", type=int, default=100)
  parser.add_argument(
    "--tools",
    default=",".join(ALL_TOOLS),
    help=f"comma-separated, of {', '.join(ALL_TOOLS)} (default all)",
  )
  parser.add_argument(
    "--weights",
    default=None,
    help="a weights card (default: the shipped --victim)",
  )
  parser.add_argument(
    "--victim",
    default="smallcnn",
    help="a shipped victim, without --weights (default smallcnn)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--name", default=None, help="results file stem (default peers_<platform>)"
  )
  parser.add_argument(
    "--forward-seconds",
    type=float,
    default=2.0,
    help="time spent on each plain forward measurement",
  )
  parser.add_argument(
    "--torch-device",
    default="cpu",
    choices=("cpu", "cuda"),
    help="where the peers' torch model runs (default cpu)",
  )
  parser.add_argument("--results-dir", default=common.RESULTS_DIR)
  args = parser.parse_args(argv)

  import art
  import torchattacks

  model, victim = load_victim(args.weights, args.victim)
  predict = models.make_predict(model)
  images, labels, indices = pick_images(predict, args.images)
  load_before = os.getloadavg()[0]
  started = time.perf_counter()
  rows, gap = run_benchmark(
    model,
    images,
    labels,
    pixel_counts=[int(p) for p in args.pixels.split(",")],
    popsize=args.popsize,
    maxiter=args.maxiter,
    tools=args.tools.split(","),
    seed=args.seed,
    forward_seconds=args.forward_seconds,
    torch_device=args.torch_device,
  )
  total = time.perf_counter() - started
  payload = {
    "stamp": common.stamp(),
    "versions": {
      "torch": torch.__version__,
      "torchattacks": torchattacks.__version__,
      "art": art.__version__,
    },
    "settings": {
      "command": " ".join(
        ["python -m benchmarks.peers"]
        + (argv if argv is not None else sys.argv[1:])
      ),
      "victim": victim,
      "images": args.images,
      "sample_indices": indices.tolist(),
      "labels": labels.tolist(),
      "popsize": args.popsize,
      "maxiter": args.maxiter,
      "targeted": False,
      "seed": args.seed,
      "torch_threads": torch.get_num_threads(),
      "torch_device": args.torch_device,
      # The attacks run at each framework's default float32 precision.
      "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
      "jax_matmul_precision": str(
        jax.config.jax_default_matmul_precision or "default"
      ),
      # Above the core count, other work shared the CPU with this run.
      "load_average": {"start": load_before, "end": os.getloadavg()[0]},
    },
    "tool_settings": {
      tool: note.format(popsize=args.popsize, maxiter=args.maxiter)
      for tool, note in SETTINGS_NOTES.items()
      if tool in args.tools.split(",")
    },
    "logit_gap": gap,
    "total_seconds": total,
    "rows": rows,
  }
  name = args.name or f"peers_{payload['stamp']['platform']}"
  for path in common.write_results(
    name, payload, render_markdown(payload), args.results_dir
  ):
    print(f"wrote {path}")
  png = os.path.join(args.results_dir, f"{name}.png")
  plot(payload, png)
  print(f"wrote {png}")


if __name__ == "__main__":
  restart_with_huge_pages()  # as the `pixeljax` program runs
  main()
