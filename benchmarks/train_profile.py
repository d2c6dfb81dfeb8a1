"""Where a train step's time goes, per op, beside the forward pass's.

For each model, the jitted train step of ``pixeljax.train.make_steps``
(its optimizer and augmentation, the XLA options ``pixeljax train`` sets:
YNNPACK off) and its eval-mode forward pass (``eval_step``) are compiled at
one batch size, run untraced (median wall time), then under
``jax.profiler.trace``. Each XLA CPU thunk's share of a step is read from
the trace as ``benchmarks.incremental_profile`` reads it (an instant of the
step shared by the thunks running then; "idle": none), and the thunks are
put in categories from the compiled HLO:

- augmentation: the batch's gather, crop, flip and random keys;
- forward conv, input-grad conv, kernel grad: convolutions (and the matrix
  products of ``conv_as_matmul`` and ``train_ops.conv_kernel_grad``) by
  their place in the step: not under autodiff's transpose, under it with an
  activation's shape, under it with a kernel's shape; "conv-grad copies":
  the other ops of ``train_ops.conv_train``'s gradient (the slices and
  concatenations of the kernel gradient's patches, the phases' interleaving);
- dense: the other matrix products (dense layers, forward and backward);
- batch norm: the ops of ``train_ops.batch_norm_train`` and of the running
  statistics' update; pooling: those of ``layers.max_pool``, ``avg_pool``
  and ``train_ops.max_pool_train`` (their gradients included);
- optimizer: optax's update and ``apply_updates``;
- copy/transpose: ops that only move data and carry no source location;
  elementwise: the rest (ReLU, dropout, the loss, and their gradients).

An op without a source location that computes (a reduction split in two by
XLA, say) or only passes data on (a tuple) takes the category of the op
that uses it. Control-flow thunks
(while, call) are left out: the thunks of their bodies are traced. FLOPs
come from the HLO shapes (``incremental_profile.op_flops``), times the trip
count of the loop an op runs in; a convolution of an input that XLA dilates
with zeros (a strided convolution's plain input gradient) counts the zeros'
multiply-adds too.

    python -m benchmarks.train_profile --models allconv nin vgg16 smallcnn

Writes benchmarks/results/train_profile_<platform>.{json,md}.
"""

import argparse
import collections
import glob
import re
import sys
import tempfile
import time

from flax import nnx
import jax
import numpy as np
import optax

from benchmarks import common
from benchmarks.incremental_profile import op_flops
from benchmarks.incremental_profile import parse_hlo
from benchmarks.incremental_profile import shared_time
from benchmarks.incremental_profile import thunk_spans
from pixeljax import train as T
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.models import MODELS
from pixeljax.models import create_model
from pixeljax.xla_options import prefer_xla_cpu_convolutions

CATEGORIES = (
  "forward conv",
  "input-grad conv",
  "kernel grad",
  "conv-grad copies",
  "dense",
  "batch norm",
  "pooling",
  "augmentation",
  "optimizer",
  "elementwise",
  "copy/transpose",
  "idle",
)
_LAYOUT_OPCODES = {
  "copy",
  "transpose",
  "reverse",
  "slice",
  "pad",
  "concatenate",
  "reshape",
  "bitcast",
  "parameter",
  "constant",
  "tuple",
  "get-tuple-element",
  "fusion",
}
# Ops that move no data: they take the category of their users.
_PASS_THROUGH_OPCODES = {
  "bitcast",
  "parameter",
  "constant",
  "tuple",
  "get-tuple-element",
}
_CONTROL_OPCODES = {"while", "call", "conditional"}
_BATCH_NORM_FUNCTIONS = {
  "batch_norm_train",
  "ConvBN._batch_norm_relu_train",
  "channel_sums",
  "BatchNorm.__call__",
}
_POOL_FUNCTIONS = {"max_pool", "avg_pool", "max_pool_train"}
_OPTIMIZER = re.compile(r"update_fn|apply_updates|schedule")
_TRIP_COUNT = re.compile(r'body=%([\w.\-]+).*"known_trip_count":\{"n":"(\d+)"')


# --- the compiled HLO --------------------------------------------------------


def trip_counts(text, computations):
  """{computation: times it runs per step}: a while body's known trip count,
  times that of the computation holding the loop (1 for the others)."""
  holder = {n: c for c, ops in computations.items() for n in ops}
  loops = {}  # body -> (trip count, the computation holding the while)
  for line in text.splitlines():
    match = _TRIP_COUNT.search(line) if " while(" in line else None
    head = re.match(r"\s*(?:ROOT\s+)?%(\S+) =", line)
    if match and head and head.group(1) in holder:
      loops[match.group(1)] = (int(match.group(2)), holder[head.group(1)])

  def times(name, depth=0):
    if name not in loops or depth > 16:
      return 1
    count, outer = loops[name]
    return count * times(outer, depth + 1)

  return {name: times(name) for name in computations}


def _fused(computations, op):
  """``op`` and the instructions of the computations it calls (fusions)."""
  ops = [op]
  for called in op["calls"]:
    for inner in computations.get(called, {}).values():
      ops += _fused(computations, inner)
  return ops


def _own_category(op, ops, kernel_shapes):
  """An op's category from its source location and opcodes; None for one
  with no location that does more than move data."""
  functions, op_name = set(op["functions"]), op["op_name"]
  opcodes = {o["opcode"] for o in ops}
  if opcodes & _CONTROL_OPCODES:
    return "control"
  if any(_OPTIMIZER.search(f) for f in functions):
    return "optimizer"
  if "augment" in functions or (
    op["functions"][:1] == ("make_steps.<locals>.train_step",)
    and "jvp(" not in op_name
  ):
    return "augmentation"
  products = [o for o in ops if o["opcode"] in ("convolution", "dot")]
  if products:
    # A fusion around a convolution or product: the product's own source
    # location and shape tell which it is.
    main = products[0]
    where = set(main["functions"]) | functions
    name = main["op_name"] or op_name
    transposed = "transpose(" in name
    # XLA rewrites some 1x1 convolutions as matrix products.
    if main["opcode"] == "convolution" or (
      "conv_as_matmul" in where or name.endswith("conv_general_dilated")
    ):
      # A gradient with a kernel's shape is a kernel's gradient.
      if tuple(sorted(main["shape"])) in kernel_shapes:
        return "kernel grad"
      return "input-grad conv" if transposed else "forward conv"
    return "kernel grad" if "conv_train" in where and transposed else "dense"
  if "conv_train" in functions and "transpose(" in op_name:
    return "conv-grad copies"
  if functions & _BATCH_NORM_FUNCTIONS:
    return "batch norm"
  if functions & _POOL_FUNCTIONS:
    return "pooling"
  if not op_name:
    if opcodes <= _PASS_THROUGH_OPCODES:
      return None
    return "copy/transpose" if opcodes <= _LAYOUT_OPCODES else None
  return "elementwise"


def classify(text):
  """{thunk name: (category, FLOPs per step)} for every instruction of
  compiled HLO ``text`` that the CPU runtime may run as a thunk (those of
  fused computations left out), control flow as "control"."""
  computations = parse_hlo(text)
  fused = {
    called
    for ops in computations.values()
    for o in ops.values()
    if o["opcode"] == "fusion"
    for called in o["calls"]
  }
  shapes = {
    n: op["shape"] for ops in computations.values() for n, op in ops.items()
  }
  kernels = [
    op["shape"]
    for n, op in computations["ENTRY"].items()
    if op["opcode"] == "parameter" and "kernel" in n and len(op["shape"]) == 4
  ]
  # As stored, and as conv_as_matmul's [kh * kw * Cin, Cout].
  kernel_shapes = {tuple(sorted(k)) for k in kernels}
  kernel_shapes |= {tuple(sorted((int(np.prod(k[:3])), k[3]))) for k in kernels}
  runs = trip_counts(text, computations)
  table, users = {}, collections.defaultdict(list)
  for computation, ops in computations.items():
    if computation in fused:
      continue
    for name, op in ops.items():
      inner = _fused(computations, op)
      category = _own_category(op, inner, kernel_shapes)
      flops = sum(op_flops(o, shapes) for o in inner) * runs[computation]
      table[name] = [category, flops]
      for operand in op["operands"]:
        users[operand].append(name)

  def inherited(name, seen):
    """The category of the first user of ``name`` that has one."""
    for user in users.get(name, []):
      if user in seen:
        continue
      seen.add(user)
      category = table[user][0] if user in table else None
      category = category or inherited(user, seen)
      if category and category != "control":
        return category
    return None

  for name, entry in table.items():
    if entry[0] is None:
      entry[0] = inherited(name, {name}) or "elementwise"
  return {name: tuple(entry) for name, entry in table.items()}


# --- the trace ---------------------------------------------------------------


def profile(call, repeats, control):
  """Median untraced wall ms of ``call()`` (which blocks), and from a
  traced run of ``repeats`` calls the mean ms per call of each thunk (the
  thunks named in ``control`` left out), idle ms and traced ms."""
  call()
  call()  # compiled, warm
  walls = []
  for _ in range(repeats):
    begin = time.perf_counter()
    call()
    walls.append(time.perf_counter() - begin)
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory):
      for _ in range(repeats):
        call()
    (path,) = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
    calls = thunk_spans(path)
  ms, idle, traced = collections.Counter(), 0.0, 0.0
  for spans in calls:
    own, call_idle, total = shared_time(
      [s for s in spans if s[0] not in control]
    )
    ms.update({name: ns / 1e6 / len(calls) for name, ns in own.items()})
    idle += call_idle / 1e6 / len(calls)
    traced += total / 1e6 / len(calls)
  return float(np.median(walls)) * 1e3, dict(ms), idle, traced, len(calls)


def breakdown(call, hlo_text, repeats, top=12):
  """One program's wall and traced ms per call, ms and GFLOP per category,
  and its ``top`` slowest thunks."""
  table = classify(hlo_text)
  control = {n for n, (c, _) in table.items() if c == "control"}
  wall, ms, idle, traced, calls = profile(call, repeats, control)
  categories = collections.Counter({"idle": idle})
  flops = collections.Counter()
  for name, (category, op_flops_) in table.items():
    if category != "control":
      categories[category] += ms.get(name, 0.0)
      flops[category] += op_flops_
  untraced = sorted(set(ms) - set(table))
  categories["elementwise"] += sum(ms[n] for n in untraced)
  slowest = sorted(ms, key=ms.get, reverse=True)[:top]
  return {
    "wall_ms": wall,
    "traced_ms": traced,
    "traced_calls": calls,
    "ms": {c: categories[c] for c in CATEGORIES},
    "gflop": {c: flops[c] / 1e9 for c in CATEGORIES if flops[c]},
    "top_thunks": [
      dict(
        name=n,
        category=table.get(n, ("elementwise",))[0],
        ms=ms[n],
        gflop=table[n][1] / 1e9 if n in table else 0.0,
      )
      for n in slowest
    ],
    "untraced_thunks": untraced,
  }


# --- the two programs --------------------------------------------------------


def step_calls(name, batch):
  """(train call, its HLO text, forward call, its HLO text) for ``name`` at
  ``batch``: each call runs one blocking step on random images, the train
  step passing its donated state on, as ``benchmarks.train_throughput``
  times them."""
  model = create_model(name, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  cfg = T.TrainConfig(model=name, batch_size=batch).resolved()
  tx = T.make_optimizer(cfg, steps_per_epoch=1000)
  train_step, eval_step = T.make_steps(
    graphdef,
    tx,
    seed=0,
    do_augment=True,
    label_smoothing=cfg.label_smoothing,
  )
  rng = np.random.default_rng(0)
  images = jax.device_put(
    rng.integers(0, 256, (4 * batch, 32, 32, 3), dtype=np.uint8)
  )
  labels = jax.device_put(rng.integers(0, 10, 4 * batch))
  state = [params, rest, tx.init(params)]
  step = [0]
  idx = np.arange(batch, dtype=np.int32)
  train_text = (
    train_step.lower(*state, images, labels, idx, 0).compile().as_text()
  )

  def train():
    outputs = train_step(
      *state, images, labels, rng.permutation(4 * batch)[:batch], step[0]
    )
    state[:], step[0] = outputs[:3], step[0] + 1
    jax.block_until_ready(outputs[3])

  eval_args = (images[:batch], labels[:batch], np.ones(batch, bool))
  forward_text = eval_step.lower(*state[:2], *eval_args).compile().as_text()

  def forward():
    jax.block_until_ready(eval_step(*state[:2], *eval_args))

  return train, train_text, forward, forward_text


def measure(name, args):
  """The train step's and forward pass's breakdowns for one model."""
  train, train_text, forward, forward_text = step_calls(name, args.batch)
  with common.OtherLoad() as load:
    train_row = breakdown(train, train_text, args.repeats)
    forward_row = breakdown(forward, forward_text, args.repeats)
  return {
    "model": name,
    "batch": args.batch,
    "train": train_row,
    "forward": forward_row,
    # As benchmarks.train_throughput: train img/s x 3 / forward img/s.
    "train_efficiency": 3 * forward_row["wall_ms"] / train_row["wall_ms"],
    **load.record(),
  }


# --- the report --------------------------------------------------------------


def _cell(row, category):
  ms = row["ms"][category]
  if ms < 0.05:
    return "-"
  cell = f"{ms:.1f} ({100 * ms / row['traced_ms']:.0f}%)"
  gflop = row["gflop"].get(category)
  return cell + (f" {gflop / ms * 1e3:.0f} GF/s" if gflop else "")


def markdown(rows, stamp, command):
  """The result's markdown: per model and program the categories' ms,
  share and GFLOP/s, then each train step's slowest thunks."""
  header = ["model", "program", "ms / step", "traced ms", *CATEGORIES]
  header += ["GFLOP/s (all)", "load"]
  table = []
  for r in rows:
    for program in ("train", "forward"):
      p = r[program]
      gflop = sum(p["gflop"].values())
      table.append(
        [
          r["model"],
          program,
          f"{p['wall_ms']:.1f}",
          f"{p['traced_ms']:.1f}",
          *[_cell(p, c) for c in CATEGORIES],
          f"{gflop / p['wall_ms'] * 1e3:.0f}",
          f"{r['load_before']}, {r['load_after']}, "
          f"{r['other_cpu_cores']} other cores",
        ]
      )
  efficiency = ", ".join(
    f"{r['model']} {r['train_efficiency']:.2f}" for r in rows
  )
  top = [
    [
      r["model"],
      t["name"],
      t["category"],
      f"{t['ms']:.2f}",
      f"{t['gflop'] / t['ms'] * 1e3:.0f}" if t["gflop"] and t["ms"] else "-",
    ]
    for r in rows
    for t in r["train"]["top_thunks"]
  ]
  return (
    "# Train step: where the time goes\n\n"
    f"`{command}`, {stamp['device']} ({stamp['platform']}, "
    f"{stamp['cpu_count']} cores), jax {stamp['jax']}, flax "
    f"{stamp['flax']}, optax {optax.__version__}, {stamp['date']}.\n\n"
    f"Batch {rows[0]['batch']}, random images, models randomly initialised, "
    "float32, YNNPACK off (as `pixeljax train`). ms / step: median untraced "
    "wall time; traced ms: the same step under the profiler, which the "
    "categories share out (ms, % of the traced step, and GFLOP/s of the "
    "category's convolutions and matrix products over its share). "
    "GFLOP/s (all): every convolution's and matrix product's FLOPs over the "
    "untraced step. Load: the 1-minute load average before and after, and "
    "the CPU cores other processes used.\n\n"
    f"Train efficiency (train img/s x 3 / forward img/s): {efficiency}.\n\n"
    + common.markdown_table(header, table)
    + "\n## The train steps' slowest thunks\n\n"
    + common.markdown_table(
      ["model", "thunk", "category", "ms / step", "GFLOP/s"], top
    )
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS)
  )
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--name", default=None, help="results file stem")
  parser.add_argument("--out-dir", default=common.RESULTS_DIR)
  args = parser.parse_args(argv)
  prefer_xla_cpu_convolutions()
  rows = []
  for name in args.models:
    row = measure(name, args)
    print(
      name,
      f"train {row['train']['wall_ms']:.1f} ms",
      f"forward {row['forward']['wall_ms']:.1f} ms",
      flush=True,
    )
    rows.append(row)
  stamp = common.stamp()
  command = " ".join(
    ["python -m benchmarks.train_profile"]
    + (sys.argv[1:] if argv is None else list(argv))
  )
  text = markdown(rows, stamp, command)
  paths = common.write_results(
    args.name or f"train_profile_{stamp['platform']}",
    {"stamp": stamp, "command": command, "rows": rows},
    text,
    args.out_dir,
  )
  print(text)
  print("wrote", *paths)


if __name__ == "__main__":
  restart_with_huge_pages()  # as the `pixeljax` program runs
  main()
