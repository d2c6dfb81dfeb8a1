"""Training throughput of each victim against its own forward pass, and of
AllConv against the same layers in PyTorch, timed alternately in one run.

    nice python -m benchmarks.train_throughput

times whole jitted train steps (`pixeljax.train.make_steps`: forward,
backward, optimizer update, on-device augmentation) at each model's recipe
batch size (`pixeljax.train.DEFAULTS`), and the eval-mode forward pass at the
same batch, on random images after warm-up calls that compile. The train
efficiency is train images/s x 3 / forward images/s: a backward pass costs
about two forward passes, so 1.0 means the step runs at the forward pass's
FLOP rate. With torch installed (the `peers` extra), AllConv's layers written
in PyTorch (NCHW and channels-last; SGD with Nesterov momentum) are timed in
the same rounds.

Like `pixeljax train`, it first turns off XLA's CPU use of YNNPACK
(`pixeljax.xla_options`); `--xla-defaults` keeps XLA's defaults and writes
train_throughput_<platform>_xla_defaults.* instead, for the comparison.

Each model's measurement records the 1-minute load average before and after,
and the CPU cores other processes used while it ran (`common.OtherLoad`); a
model measured while others used more than `--max-other-cores` is marked, and
the results are not written unless `--allow-load` is given. Writes
benchmarks/results/train_throughput_<platform>.json and .md.

    nice python -m benchmarks.train_throughput --models smallcnn \
      --adversarial 0.5 --adv-candidates 4

times clean and one-pixel adversarial steps (`pixeljax train --adversarial`)
in alternation instead, and writes the cost of adversarial training as their
ratio to train_throughput_<platform>_adversarial.json and .md. `--name`
replaces the stem train_throughput_<platform> of the result files.
"""

import argparse
import sys
import time

from flax import nnx
import jax
import numpy as np
import optax

from benchmarks.common import OtherLoad
from benchmarks.common import markdown_table
from benchmarks.common import stamp
from benchmarks.common import write_results
from pixeljax import train as T
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.models import MODELS
from pixeljax.models import create_model
from pixeljax.models import param_count
from pixeljax.xla_options import prefer_xla_cpu_convolutions

TRAIN_IMAGES = 50_000  # one CIFAR-10 epoch


def jax_step_timers(name: str, batch: int, adversarial: float, candidates: int):
  """(train, forward) closures that each run one blocking step of `name`.

  The train step is the one `pixeljax.train` runs (its optimizer, its
  augmentation), on random uint8 images; the forward pass is the eval-mode
  model at the same batch.
  """
  model = create_model(name, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  cfg = T.TrainConfig(model=name, batch_size=batch).resolved()
  tx = T.make_optimizer(cfg, steps_per_epoch=1000)
  train_step, eval_step = T.make_steps(
    graphdef,
    tx,
    seed=0,
    do_augment=True,
    adversarial=adversarial,
    adv_candidates=candidates,
  )
  rng = np.random.default_rng(0)
  images = jax.device_put(
    rng.integers(0, 256, (4 * batch, 32, 32, 3), dtype=np.uint8)
  )
  labels = jax.device_put(rng.integers(0, 10, 4 * batch))
  state = [params, rest, tx.init(params)]
  step = [0]

  def train():
    idx = rng.permutation(4 * batch)[:batch].astype(np.int32)
    outputs = train_step(*state, images, labels, idx, step[0])
    state[:], step[0] = (
      outputs[:3],
      step[0] + 1,
    )  # the donated state's successor
    jax.block_until_ready(outputs[3])

  eval_images, eval_labels = np.asarray(images[:batch]), labels[:batch]
  mask = np.ones(batch, bool)

  def forward():
    jax.block_until_ready(
      eval_step(state[0], state[1], eval_images, eval_labels, mask)
    )

  return train, forward, param_count(model)


def torch_allconv_timers(batch: int, channels_last: bool):
  """(train, forward) closures for AllConv's layers written in PyTorch.

  The same layers as `pixeljax.models.AllConv` (3x3 convolutions without bias,
  batch norm and ReLU; stride-2 convolutions for pooling; dropout 0.3 after
  them; a 1x1 classifier and a global mean), as a PyTorch user writes them,
  trained by SGD with Nesterov momentum and weight decay on cross-entropy.
  """
  import torch
  from torch import nn

  def conv_bn(cin, cout, kernel, stride=1, padding=1):
    return [
      nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
      nn.BatchNorm2d(cout),
      nn.ReLU(inplace=True),
    ]

  layers = (
    conv_bn(3, 96, 3)
    + conv_bn(96, 96, 3)
    + conv_bn(96, 96, 3, 2)
    + [nn.Dropout(0.3)]
    + conv_bn(96, 192, 3)
    + conv_bn(192, 192, 3)
    + conv_bn(192, 192, 3, 2)
    + [nn.Dropout(0.3)]
    + conv_bn(192, 192, 3, padding=0)
    + conv_bn(192, 192, 1, padding=0)
    + [nn.Conv2d(192, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
  )
  model = nn.Sequential(*layers)
  memory_format = (
    torch.channels_last if channels_last else torch.contiguous_format
  )
  model = model.to(memory_format=memory_format)
  optimizer = torch.optim.SGD(
    model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
  )
  generator = torch.Generator().manual_seed(0)
  images = torch.rand(batch, 3, 32, 32, generator=generator) * 255
  images = images.contiguous(memory_format=memory_format)
  labels = torch.randint(0, 10, (batch,), generator=generator)

  def train():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()

  def forward():
    model.eval()
    with torch.inference_mode():
      model(images)

  return train, forward, sum(p.numel() for p in model.parameters())


def time_rounds(timers: dict, rounds: int, steps: int) -> dict:
  """Median seconds per call of each closure, the closures taking turns.

  Each closure is called twice first (compilation, warm-up); then, `rounds`
  times, each runs `steps` calls in a row, in turn, so that a slow spell of
  the machine falls on every closure alike.
  """
  for timer in timers.values():
    timer()
    timer()
  times = {name: [] for name in timers}
  for _ in range(rounds):
    for name, timer in timers.items():
      for _ in range(steps):
        started = time.perf_counter()
        timer()
        times[name].append(time.perf_counter() - started)
  return {name: float(np.median(t)) for name, t in times.items()}


def measure_model(name: str, args, peer: bool) -> list[dict]:
  """Rows for `name` (and its PyTorch peers when `peer`), timed in one run."""
  batch = args.batch_size or T.DEFAULTS[name]["batch_size"]
  timers, params = {}, {}
  train, forward, params["pixeljax"] = jax_step_timers(name, batch, 0.0, 4)
  timers[("pixeljax", "train")], timers[("pixeljax", "forward")] = (
    train,
    forward,
  )
  if peer:
    for layout in ("NCHW", "channels-last"):
      framework = f"PyTorch {layout}"
      train, forward, params[framework] = torch_allconv_timers(
        batch, layout == "channels-last"
      )
      timers[(framework, "train")], timers[(framework, "forward")] = (
        train,
        forward,
      )
  with OtherLoad() as load:
    seconds = time_rounds(timers, args.rounds, args.steps)
  rows = []
  for framework in params:
    train_rate = batch / seconds[(framework, "train")]
    forward_rate = batch / seconds[(framework, "forward")]
    rows.append(
      dict(
        model=name,
        framework=framework,
        params=params[framework],
        batch_size=batch,
        train_images_per_s=round(train_rate, 1),
        forward_images_per_s=round(forward_rate, 1),
        train_efficiency=round(3 * train_rate / forward_rate, 2),
        minutes_per_epoch=round(TRAIN_IMAGES / train_rate / 60, 1),
        **load.record(),
        quiet=load.cores is not None and load.cores <= args.max_other_cores,
      )
    )
  return rows


def measure_adversarial(name: str, args) -> dict:
  """Clean and adversarial train steps of `name`, timed alternately."""
  batch = args.batch_size or T.DEFAULTS[name]["batch_size"]
  clean, _, _ = jax_step_timers(name, batch, 0.0, args.adv_candidates)
  adversarial, _, _ = jax_step_timers(
    name, batch, args.adversarial, args.adv_candidates
  )
  with OtherLoad() as load:
    seconds = time_rounds(
      dict(clean=clean, adversarial=adversarial), args.rounds, args.steps
    )
  return dict(
    model=name,
    batch_size=batch,
    clean_images_per_s=round(batch / seconds["clean"], 1),
    adversarial_images_per_s=round(batch / seconds["adversarial"], 1),
    step_ratio=round(seconds["adversarial"] / seconds["clean"], 2),
    **load.record(),
    quiet=load.cores is not None and load.cores <= args.max_other_cores,
  )


def _mark(row: dict) -> str:
  return "" if row["quiet"] else " (under load)"


def _table(rows: list[dict]) -> str:
  header = [
    "model",
    "framework",
    "batch",
    "train img/s",
    "forward img/s",
    "train efficiency",
    "min/epoch",
    "load avg before, after",
    "other cores",
  ]
  return markdown_table(
    header,
    [
      [
        r["model"] + _mark(r),
        r["framework"],
        r["batch_size"],
        r["train_images_per_s"],
        r["forward_images_per_s"],
        r["train_efficiency"],
        r["minutes_per_epoch"],
        f"{r['load_before']}, {r['load_after']}",
        r["other_cpu_cores"],
      ]
      for r in rows
    ],
  )


def _peer_summary(rows: list[dict]) -> str:
  ours = next(
    (
      r
      for r in rows
      if r["model"] == "allconv" and r["framework"] == "pixeljax"
    ),
    None,
  )
  peers = [r for r in rows if r["framework"].startswith("PyTorch")]
  if ours is None or not peers:
    return ""
  best = max(peers, key=lambda r: r["train_images_per_s"])
  return (
    f"\nAllConv's train step: pixeljax {ours['train_images_per_s']} img/s, "
    f"PyTorch ({best['framework']}, its faster layout) "
    f"{best['train_images_per_s']} img/s: "
    f"{ours['train_images_per_s'] / best['train_images_per_s']:.2f}x. "
    # pixeljax's forward pass is XLA's convolutions almost alone
    # (train_profile): the ratio a train step faces before its own code.
    f"Forward pass: pixeljax {ours['forward_images_per_s']} img/s, PyTorch "
    f"{best['forward_images_per_s']} img/s: "
    f"{ours['forward_images_per_s'] / best['forward_images_per_s']:.2f}x.\n"
  )


def _adversarial_table(rows: list[dict], args) -> str:
  table = markdown_table(
    [
      "model",
      "batch",
      "clean img/s",
      "adversarial img/s",
      "adversarial step / clean step",
      "load avg before, after",
      "other cores",
    ],
    [
      [
        r["model"] + _mark(r),
        r["batch_size"],
        r["clean_images_per_s"],
        r["adversarial_images_per_s"],
        r["step_ratio"],
        f"{r['load_before']}, {r['load_after']}",
        r["other_cpu_cores"],
      ]
      for r in rows
    ],
  )
  return table + (
    f"\nAdversarial: {args.adversarial:g} of each batch replaced by one-pixel "
    f"examples, {args.adv_candidates} pixels tried each "
    "(pixeljax.adversarial).\n"
  )


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument(
    "--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS)
  )
  p.add_argument(
    "--batch-size",
    type=int,
    help="images per step (default: each model's recipe)",
  )
  p.add_argument(
    "--rounds", type=int, default=3, help="turns each step takes (default 3)"
  )
  p.add_argument(
    "--steps", type=int, default=3, help="steps per turn (default 3)"
  )
  p.add_argument(
    "--no-torch",
    dest="torch",
    action="store_false",
    help="leave out the PyTorch AllConv",
  )
  p.add_argument(
    "--max-other-cores",
    type=float,
    default=0.15,
    help="CPU cores other processes may use during a quiet measurement "
    "(default 0.15)",
  )
  p.add_argument(
    "--allow-load",
    action="store_true",
    help="write the results even if a measurement was not quiet",
  )
  p.add_argument(
    "--adversarial",
    type=float,
    default=0.0,
    help="time clean against adversarial steps with this share of one-pixel "
    "adversarial examples instead",
  )
  p.add_argument("--adv-candidates", type=int, default=4)
  p.add_argument(
    "--name",
    help="stem of the result files (default train_throughput_<platform>, "
    "with the suffixes below)",
  )
  p.add_argument(
    "--xla-defaults",
    action="store_true",
    help="keep XLA's default CPU options instead of those `pixeljax train` "
    "sets (pixeljax.xla_options)",
  )
  args = p.parse_args(argv)
  if not args.xla_defaults:
    prefer_xla_cpu_convolutions()
  if args.torch and not args.adversarial:
    try:
      import torch  # noqa: F401
    except ImportError:
      print("torch is not installed: no PyTorch rows", file=sys.stderr)
      args.torch = False
  rows = []
  for name in args.models:
    if args.adversarial:
      new = [measure_adversarial(name, args)]
    else:
      new = measure_model(name, args, args.torch and name == "allconv")
    for row in new:
      print(row, flush=True)
    rows += new
  command = "python -m benchmarks.train_throughput " + " ".join(
    sys.argv[1:] if argv is None else argv
  )
  loaded = [r["model"] for r in rows if not r["quiet"]]
  if loaded and not args.allow_load:
    print(
      f"not written: others used more than {args.max_other_cores} cores "
      f"while measuring {sorted(set(loaded))}; measure on a quiet machine, "
      "or pass --allow-load",
      file=sys.stderr,
    )
    return 1
  info = stamp()
  header = (
    f"# Training throughput ({info['platform']}: {info['cpu']}, "
    f"{info['cpu_count']} cores)\n\n{info['date']}; jax {info['jax']}, "
    f"flax {info['flax']}, optax {optax.__version__}; XLA_FLAGS "
    f"`{info['xla_flags']}`; GLIBC_TUNABLES `{info['glibc_tunables']}`; "
    f"`{command.strip()}`; "
    f"median of {args.rounds} rounds x {args.steps} steps, the steps taking "
    "turns; random images, augmentation on, float32.\n\n"
  )
  name = args.name or f"train_throughput_{info['platform']}"
  if args.xla_defaults:
    name += "_xla_defaults"
  if args.adversarial:
    name += "_adversarial"
    body = _adversarial_table(rows, args)
  else:
    body = _table(rows) + _peer_summary(rows)
  notes = (
    "\nTrain efficiency: train images/s x 3 / forward images/s (eval mode, "
    "same batch). Other cores: CPU cores other processes used during the "
    f"model's measurement (quiet: at most {args.max_other_cores}); rows "
    "marked (under load) are not results.\n"
  )
  write_results(
    name,
    dict(
      **info,
      optax=optax.__version__,
      command=command,
      results=rows,
    ),
    header + body + notes,
  )
  return 0


if __name__ == "__main__":
  restart_with_huge_pages()  # as the `pixeljax` program runs
  sys.exit(main())
