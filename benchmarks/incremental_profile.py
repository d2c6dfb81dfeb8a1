"""Where the time goes: the incremental program and the full pass, per op.

For each model and d, one model call of the attack (``batch`` candidates,
popsize per image, as ``batched_attack`` chunks them) is compiled twice, as
the attack compiles it: the full pass (pixels injected, the model run on
whole images) and the incremental program (the clean maps of the chunk's
images, then ``Evaluator.logits``; XLA options from
``xla_options.attack_program_options``). Each runs untraced (median wall
time), then under ``jax.profiler.trace``; the trace's XLA CPU
thunk events (an op's start, and its "end:" event where it finished
asynchronously, as convolutions do on the Eigen pool) give each op's span.
A call's time is shared among the ops running at each instant, so the
ops' shares add up to the traced call (plus "idle": no op running).

Ops are put in categories from the compiled HLO: by JAX name scope (the
clean maps, the pixel injection), by the incremental.py function that
emitted them (patch assembly: ``_assemble`` and ``_Maps.patch``; the
whole-map fallback: ``_materialize`` and ``_Maps.whole``), else by HLO
opcode (convolution, dot, reduce-window, reduce, copy/transpose,
elementwise). A convolution of the incremental program whose output is a
whole map (the size of the full pass's output at the same layer, the two
programs' convolutions paired in order) counts as "conv whole map", the
rest as "conv windows". FLOPs come from the HLO
shapes (2 x output elements x kernel elements per output channel).

Run from the repository root (the `pixeljax` program's XLA setting:
YNNPACK off):
  python -m benchmarks.incremental_profile
Writes benchmarks/results/incremental_profile_<platform>.{json,md}.
"""

import argparse
import collections
import glob
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from jax.profiler import ProfileData
import numpy as np

from benchmarks import common
from benchmarks import incremental as incremental_bench
from pixeljax.attack import canonical
from pixeljax.attack import driver
from pixeljax.attack import incremental
from pixeljax.attack import pixels as pixels_lib
from pixeljax.data import load_cifar10_sample
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.xla_options import attack_program_options
from pixeljax.xla_options import prefer_xla_cpu_convolutions

CATEGORIES = (
  "conv windows",
  "conv whole map",
  "dot",
  "patch assembly",
  "whole-map fallback",
  "clean maps",
  "inject",
  "pooling",
  "reduce",
  "copy/transpose",
  "gather/scatter",
  "elementwise",
  "idle",
)
# incremental.py functions whose ops build a window's input patch, and
# those that write windows into a whole map (see incremental.py).
_PATCH_FUNCTIONS = {"_assemble", "_assemble.<locals>.one", "_Maps.patch"}
_WHOLE_FUNCTIONS = {"_materialize", "_Maps.whole"}
_LAYOUT_OPCODES = {"copy", "transpose", "bitcast", "parameter", "constant"}
_INDEXING_OPCODES = {
  "gather",
  "scatter",
  "dynamic-slice",
  "dynamic-update-slice",
}


# --- the compiled HLO --------------------------------------------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+) = (.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+) \(")


def _split_shape(rest):
  """(shape text, the rest) of an instruction's right-hand side."""
  if rest.startswith("("):  # a tuple shape
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        return rest[: i + 1], rest[i + 2 :]
  shape, _, tail = rest.partition(" ")
  return shape, tail


def _dims(shape):
  """int dims of an array shape text, e.g. f32[8,3,3]{2,1,0} -> (8, 3, 3)."""
  match = re.match(r"\w+\[([\d,]*)\]", shape)
  return tuple(int(d) for d in match.group(1).split(",") if d) if match else ()


def _stack_functions(text):
  """Per stack frame id, the function names on its stack, innermost first,
  from the tables at the top of the compiled HLO text."""
  tables = collections.defaultdict(dict)
  table = None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      table = line
    elif not line.strip():
      table = None
    elif table:
      key, _, value = line.partition(" ")
      tables[table][int(key)] = value
  names = {k: v.strip('"') for k, v in tables["FunctionNames"].items()}
  location = {
    k: names[int(re.search(r"function_name_id=(\d+)", v).group(1))]
    for k, v in tables["FileLocations"].items()
  }
  frames = {}
  for k, v in tables["StackFrames"].items():
    loc, parent = map(int, re.findall(r"=(\d+)", v))
    # The text prints a frame's parent one above its id (0: none).
    frames[k] = (location[loc], parent - 1)
  stacks = {}
  for k in frames:
    stack, frame = [], k
    while frame in frames and len(stack) < 64:
      stack.append(frames[frame][0])
      frame = frames[frame][1]
    stacks[k] = tuple(stack)
  return stacks


def parse_hlo(text):
  """The instructions of compiled HLO ``text``: {computation: {name: op}}
  (the entry computation under "ENTRY"), each op a dict with opcode, shape
  (dims), operands, calls (called computations), op_name and functions
  (from its stack frame)."""
  stacks = _stack_functions(text)
  computations, current = {}, None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head and line.rstrip().endswith("{"):
      name = "ENTRY" if line.startswith("ENTRY") else head.group(1)
      current = computations.setdefault(name, {})
      continue
    match = _INSTRUCTION.match(line)
    if not match or current is None:
      continue
    name, rest = match.groups()
    shape, tail = _split_shape(rest)
    opcode = tail.partition("(")[0]
    operands = re.findall(r"%([\w.\-]+)", tail.partition(")")[0])
    frame = re.search(r"stack_frame_id=(\d+)", tail)
    current[name] = {
      "opcode": opcode,
      "shape": _dims(shape),
      "operands": operands,
      "calls": re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", tail),
      "op_name": (re.search(r'op_name="([^"]*)"', tail) or [None, ""])[1],
      "functions": stacks.get(int(frame.group(1)), ()) if frame else (),
      "dim_labels": (re.search(r"dim_labels=([^,\s]+)", tail) or [None, ""])[1],
      "contracting": re.search(r"lhs_contracting_dims=\{([\d,]*)\}", tail),
    }
  return computations


def _inner(computations, op):
  """``op`` and every instruction of the computations it calls."""
  ops = [op]
  for called in op["calls"]:
    for inner in computations.get(called, {}).values():
      ops += _inner(computations, inner)
  return ops


def _shapes(computations):
  return {
    n: op["shape"] for ops in computations.values() for n, op in ops.items()
  }


def op_flops(op, shapes) -> int:
  """2 x multiply-adds of a convolution or dot instruction; 0 otherwise."""
  out = int(np.prod(op["shape"]))
  if op["opcode"] == "convolution":
    kernel = shapes[op["operands"][1]]
    kernel_labels = op["dim_labels"].split("_")[1].split("->")[0]
    return 2 * out * int(np.prod(kernel)) // kernel[kernel_labels.index("o")]
  if op["opcode"] == "dot":
    lhs = shapes[op["operands"][0]]
    axes = [int(a) for a in op["contracting"].group(1).split(",") if a]
    return 2 * out * int(np.prod([lhs[a] for a in axes]))
  return 0


def conv_signature(op, shapes):
  """(kernel text, output spatial text) of a convolution, e.g.
  ("3x3 32>64", "16x16")."""
  rhs_labels, out_labels = op["dim_labels"].split("_")[1].split("->")
  kernel = shapes[op["operands"][1]]
  spatial = [kernel[i] for i, c in enumerate(rhs_labels) if c.isdigit()]
  inner, outer = kernel[rhs_labels.index("i")], kernel[rhs_labels.index("o")]
  out_spatial = [
    op["shape"][i] for i, c in enumerate(out_labels) if c.isdigit()
  ]
  return (
    "x".join(map(str, spatial)) + f" {inner}>{outer}",
    "x".join(map(str, out_spatial)),
  )


def classify(computations):
  """{thunk name: (category, flops, conv signature or None)} for the entry
  computation's instructions (the ops the CPU runtime runs as thunks), in
  program order. Convolutions are "conv" (``split_convs`` tells windows
  from whole maps)."""
  shapes = _shapes(computations)
  table = {}
  for name, op in computations["ENTRY"].items():
    ops = _inner(computations, op)
    opcodes = {o["opcode"] for o in ops}
    # A fusion carries its root's metadata: what it computes, while its
    # operands' producers (a clean map's padding, say) may be fused in.
    functions = set(op["functions"])
    convs = [o for o in ops if o["opcode"] == "convolution"]
    flops = sum(op_flops(o, shapes) for o in ops)
    signature = conv_signature(convs[0], shapes) if convs else None
    if "/clean_maps/" in op["op_name"]:
      category = "clean maps"
    elif "/inject/" in op["op_name"]:
      category = "inject"
    elif convs:
      category = "conv"
    elif "dot" in opcodes:
      category = "dot"
    elif functions & _WHOLE_FUNCTIONS:
      category = "whole-map fallback"
    elif functions & _PATCH_FUNCTIONS:
      category = "patch assembly"
    elif "reduce-window" in opcodes:
      category = "pooling"
    elif "reduce" in opcodes:
      category = "reduce"
    elif opcodes & _INDEXING_OPCODES:
      category = "gather/scatter"
    elif opcodes <= _LAYOUT_OPCODES | {"fusion"}:
      category = "copy/transpose"
    else:
      category = "elementwise"
    table[name] = (category, flops, signature)
  return table


# --- the trace ---------------------------------------------------------------


def thunk_spans(xspace_path):
  """Per model call (in order), [(thunk name, start ns, end ns)] from a
  trace's XLA CPU thunk events: a thunk ends at its own event's end or at
  its "end:" event's end, whichever is later (async thunks)."""
  data = ProfileData.from_file(xspace_path)
  starts, ends, calls = collections.defaultdict(list), {}, []
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if "hlo_op" in stats:
          starts[stats["hlo_op"]].append((event.start_ns, event.end_ns))
        elif event.name.startswith("end: "):
          ends.setdefault(event.name[5:], []).append(event.end_ns)
        elif event.name.startswith("PjitFunction("):
          calls.append(event.start_ns)
  spans = []
  for name, events in starts.items():
    finished = sorted(ends.get(name, []))
    for i, (start, end) in enumerate(sorted(events)):
      spans.append(
        (name, start, max(end, finished[i] if i < len(finished) else 0))
      )
  # A call's thunks start after its dispatch and before the next one's.
  bounds = sorted(set(calls)) + [np.inf]
  per_call = [[] for _ in bounds[:-1]]
  for span in spans:
    index = np.searchsorted(bounds, span[1], side="right") - 1
    if 0 <= index < len(per_call):
      per_call[index].append(span)
  return [c for c in per_call if c]


def shared_time(spans):
  """({thunk name: ns}, idle ns, total ns) of one call: each instant of the
  call's span shared equally by the thunks running then."""
  edges = sorted({t for _, start, end in spans for t in (start, end)})
  own, idle = collections.Counter(), 0.0
  for left, right in zip(edges, edges[1:]):
    running = [n for n, start, end in spans if start <= left and end >= right]
    if running:
      for name in running:
        own[name] += (right - left) / len(running)
    else:
      idle += right - left
  return own, idle, edges[-1] - edges[0]


def profile(function, args_list, repeats):
  """Median untraced wall ms per call, and from a traced run the mean ms
  per call of each thunk (shared time), idle and the traced call."""
  for args in args_list:  # compile and warm up
    jax.block_until_ready(function(*args))
  walls = []
  for _ in range(repeats):
    for args in args_list:
      begin = time.perf_counter()
      jax.block_until_ready(function(*args))
      walls.append(time.perf_counter() - begin)
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory):
      for _ in range(repeats):
        for args in args_list:
          jax.block_until_ready(function(*args))
    (path,) = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
    calls = thunk_spans(path)
  ms, idle, traced = collections.Counter(), 0.0, 0.0
  for spans in calls:
    own, call_idle, total = shared_time(spans)
    ms.update({name: ns / 1e6 / len(calls) for name, ns in own.items()})
    idle += call_idle / 1e6 / len(calls)
    traced += total / 1e6 / len(calls)
  return float(np.median(walls)) * 1e3, dict(ms), idle, traced, len(calls)


# --- the two programs --------------------------------------------------------


def programs(predict, evaluator):
  """The full and incremental scoring of one chunk of B candidates, as
  ``evaluate.score_candidates`` runs them: jitted functions of (images
  uint8 [M, H, W, C], image index int32 [B], perturbation int32
  [B, d, 2 + C]) -> logits float32 [B, K]."""
  model = canonical.for_loops(predict)

  def full(images, index, perturbation):
    with jax.named_scope("inject"):
      perturbed = pixels_lib.inject(images[index], perturbation)
    return model(perturbed.astype(jnp.float32))

  def windowed(images, index, perturbation):
    with jax.named_scope("clean_maps"):
      maps = evaluator.clean_maps(images)
    return evaluator.logits(maps, index, perturbation)

  return (
    jax.jit(full, compiler_options=dict(attack_program_options(False))),
    jax.jit(windowed, compiler_options=dict(attack_program_options(True))),
  )


def chunk_args(images, pixels, popsize, batch, key):
  """Per model call, (images of its clean maps, index, perturbation): the
  chunks ``evaluate.score_candidates`` makes of popsize candidates per image
  (sampled as the paper's DE starts), with the clean maps of
  (batch - 1) // popsize + 2 consecutive images."""
  count, height, width, channels = images.shape
  keys = jax.random.split(key, count)
  candidates = jnp.concatenate(
    [
      pixels_lib.sample_initial(k, popsize, pixels, height, width, channels)
      for k in keys
    ]
  )
  perturbation = pixels_lib.decode(candidates, height, width, channels)
  image = jnp.repeat(jnp.arange(count), popsize)
  chunks = []
  for start in range(0, count * popsize, batch):
    first = start // popsize
    entries = np.minimum(
      first + np.arange((batch - 1) // popsize + 2), count - 1
    )
    stop = min(start + batch, count * popsize)
    chunks.append(
      (
        images[entries],
        (image[start:stop] - first).astype(jnp.int32),
        perturbation[start:stop],
      )
    )
  return chunks


def breakdown(function, args, repeats):
  """One program's wall time per call, ms and FLOPs per category (the
  convolutions' left to ``split_convs``), and ms and FLOPs of each
  convolution thunk in program order (the clean maps' left out)."""
  hlo = parse_hlo(function.lower(*args[0]).compile().as_text())
  table = classify(hlo)
  wall, ms, idle, traced, calls = profile(function, args, repeats)
  categories = collections.Counter({"idle": idle})
  flops = collections.Counter()
  layers = []
  for name, (category, op_flops_, signature) in table.items():
    if category == "conv":
      kernel, out = signature
      layers.append(
        dict(
          kernel=kernel, out=out, ms=ms.get(name, 0.0), gflop=op_flops_ / 1e9
        )
      )
      continue
    categories[category] += ms.get(name, 0.0)
    flops[category] += op_flops_
  untraced = sorted(set(ms) - set(table))
  if untraced:  # thunks of nested computations (none seen): kept, listed
    categories["elementwise"] += sum(ms[n] for n in untraced)
  return {
    "wall_ms": wall,
    "traced_ms": traced,
    "traced_calls": calls,
    "ms": {c: categories[c] for c in CATEGORIES},
    "gflop": {c: flops[c] / 1e9 for c in CATEGORIES if flops[c]},
    "conv_layers": layers,
    "untraced_thunks": untraced,
  }


def split_convs(full_row, inc_row):
  """Marks each convolution layer of two ``breakdown`` rows as run on
  windows or on a whole map, and adds them to the rows' "conv windows" and
  "conv whole map" ms and GFLOP. The full pass runs whole maps; an
  incremental convolution does where its output has the size of the full
  pass's at the same layer (the programs' convolutions paired in order; by
  kernel and size where they do not pair)."""
  full, windowed = full_row["conv_layers"], inc_row["conv_layers"]
  for conv in full:
    conv["whole"] = True
  if [c["kernel"] for c in full] == [c["kernel"] for c in windowed]:
    for f, w in zip(full, windowed):
      w["whole"] = w["out"] == f["out"]
  else:
    sizes = {(c["kernel"], c["out"]) for c in full}
    for w in windowed:
      w["whole"] = (w["kernel"], w["out"]) in sizes
  for row in (full_row, inc_row):
    for category, whole in (("conv windows", False), ("conv whole map", True)):
      convs = [c for c in row["conv_layers"] if c["whole"] == whole]
      row["ms"][category] = sum(c["ms"] for c in convs)
      row["gflop"].pop(category, None)
      if convs:
        row["gflop"][category] = sum(c["gflop"] for c in convs)


def measure(name, pixels, images, args):
  """Both programs' breakdowns for one model at d = ``pixels``."""
  predict = incremental_bench.model_predict(name)
  evaluator = incremental.evaluator(predict, images.shape[1:], pixels)
  batch = args.batch or driver.default_batch_size(
    images.shape[1:], args.popsize, images.shape[0]
  )
  chunks = chunk_args(images, pixels, args.popsize, batch, jax.random.key(0))
  full, windowed = programs(predict, evaluator)
  with common.OtherLoad() as load:
    full_row = breakdown(full, chunks, args.repeats)
    inc_row = breakdown(windowed, chunks, args.repeats)
  split_convs(full_row, inc_row)
  return {
    "model": name,
    "pixels": pixels,
    "batch": batch,
    "chunks": len(chunks),
    "full_mflop_per_candidate": evaluator.full_flops / 1e6,
    "incremental_mflop_per_candidate": evaluator.flops / 1e6,
    "full": full_row,
    "incremental": inc_row,
    **load.record(),
  }


# --- the report --------------------------------------------------------------


def _gflops(row, categories):
  """GFLOP/s of the given categories' thunks alone."""
  seconds = sum(row["ms"][c] for c in categories) / 1e3
  gflop = sum(row["gflop"].get(c, 0.0) for c in categories)
  return gflop / seconds if seconds else float("nan")


def _rate(conv):
  return f"{conv['gflop'] / conv['ms'] * 1e3:.0f}" if conv["ms"] else "-"


def markdown(rows, args, stamp, command):
  """The result's markdown: one row per model, d and path, then one per
  convolution layer."""
  header = ["model", "d", "path", "ms / call", "traced ms", "evals/s"]
  header += [*CATEGORIES, "conv GFLOP/s", "conv+dot GFLOP/s", "load"]
  table = []
  for r in rows:
    for path in ("full", "incremental"):
      p = r[path]
      cells = [r["model"], r["pixels"], path, f"{p['wall_ms']:.1f}"]
      cells += [
        f"{p['traced_ms']:.1f}",
        f"{r['batch'] / p['wall_ms'] * 1e3:.0f}",
      ]
      cells += [
        f"{p['ms'][c]:.1f} ({100 * p['ms'][c] / p['traced_ms']:.0f}%)"
        if p["ms"][c] >= 0.05
        else "-"
        for c in CATEGORIES
      ]
      convs = ("conv windows", "conv whole map")
      cells += [
        f"{_gflops(p, convs):.0f}",
        f"{_gflops(p, (*convs, 'dot')):.0f}",
        f"{r['load_before']}, {r['load_after']}",
      ]
      table.append(cells)
  layer_rows = []
  for r in rows:
    full, windowed = r["full"]["conv_layers"], r["incremental"]["conv_layers"]
    if [c["kernel"] for c in full] != [c["kernel"] for c in windowed]:
      continue  # the programs' convolutions do not pair up layer by layer
    for layer, (f, w) in enumerate(zip(full, windowed), 1):
      layer_rows.append(
        [
          r["model"],
          r["pixels"],
          layer,
          f"{f['kernel']} @{f['out']}",
          f"{w['out']}" + (" (whole)" if w["whole"] else ""),
          f"{f['ms']:.2f}",
          f"{w['ms']:.2f}",
          _rate(f),
          _rate(w),
        ]
      )
  return (
    "# Incremental evaluation: where the time goes\n\n"
    f"`{command}`, {stamp['device']} ({stamp['platform']}, "
    f"{stamp['cpu_count']} cores), jax {stamp['jax']}, {stamp['date']}.\n\n"
    f"One model call of the attack: {rows[0]['batch']} candidates "
    f"(population {args.popsize}, the first {args.images} sample images), "
    "the incremental program with the clean maps of its images. ms / call: "
    "median untraced wall time; traced ms: the same call under the profiler, "
    "which the categories share out (ms and % of the traced call); idle: no "
    "op running. Models randomly initialised; YNNPACK off for both programs. "
    "GFLOP/s: the FLOPs of the convolution (and dot) thunks over their "
    "share of the time. Load: the 1-minute load average before and after "
    "the model's two programs ran.\n\n"
    + common.markdown_table(header, table)
    + "\n## Convolutions layer by layer\n\nEach convolution thunk's ms "
    "per call and GFLOP/s in the full pass (kernel, in > out channels, "
    "@ output map) and in the incremental program (output window; whole: "
    "the map went whole before it), the clean maps' left out. Models whose "
    "programs' convolutions do not pair up in order are left out.\n\n"
    + common.markdown_table(
      [
        "model",
        "d",
        "layer",
        "full: kernel @ map",
        "incremental output",
        "full ms",
        "incremental ms",
        "full GFLOP/s",
        "incremental GFLOP/s",
      ],
      layer_rows,
    )
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--models", nargs="+", default=list(incremental_bench.MODELS)
  )
  parser.add_argument("--pixels", nargs="+", type=int, default=[1, 3])
  parser.add_argument("--images", type=int, default=2)
  parser.add_argument("--popsize", type=int, default=400)
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out-dir", default=common.RESULTS_DIR)
  args = parser.parse_args()
  prefer_xla_cpu_convolutions()

  images = jnp.asarray(load_cifar10_sample().images[: args.images])
  rows = []
  for name in args.models:
    for pixels in args.pixels:
      row = measure(name, pixels, images, args)
      print(name, pixels, row["full"]["wall_ms"], row["incremental"]["wall_ms"])
      rows.append(row)
  stamp = common.stamp()
  command = " ".join(
    ["python -m benchmarks.incremental_profile", *sys.argv[1:]]
  )
  text = markdown(rows, args, stamp, command)
  paths = common.write_results(
    f"incremental_profile_{stamp['platform']}",
    {"stamp": stamp, "command": command, "rows": rows},
    text,
    args.out_dir,
  )
  print(text)
  print("wrote", *paths)


if __name__ == "__main__":
  restart_with_huge_pages()  # as the `pixeljax` program runs
  main()
