"""The `pixeljax` command: parses arguments and hands them to the module that
does the work.

  pixeljax attack [options]   attack CIFAR-10 test images, or your own
  pixeljax eval [options]     L0 robustness of models and defences
  pixeljax figures RUN_DIR    redraw a run folder's figures
  pixeljax train ...          train a victim network (pixeljax.train)

Benchmarks live in the repository's benchmarks/ folder (python -m
benchmarks.throughput, ...), not in the installed package.

Run `pixeljax SUBCOMMAND --help` for each one's options.
"""

import argparse
import pathlib
import sys

from pixeljax import errors
from pixeljax.attack import defaults
from pixeljax.attack import methods
from pixeljax.cli.settings import METHOD_OPTIONS
from pixeljax.cli.settings import PAPER
from pixeljax.cli.settings import QUICK
from pixeljax.cli.settings import AttackSettings
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.xla_options import prefer_xla_cpu_convolutions

_EPILOG = """exit codes:
  0    success
  1    unexpected internal error (a bug; a traceback is printed)
  2    usage error: unknown option or bad value
  3    data, model or file problem (unknown model, missing data, unreadable
       image, output folder not writable, disk full)
  4    the output folder holds a run with other settings
  130  interrupted (Ctrl-C): finished work is kept, rerun to resume
"""

_ATTACK_HELP = f"""Attack images with the few-pixel differential evolution of
Su et al. (2019), or another of pixeljax's searches (--method), and write
per-image results, a summary and figures.

The model is a shipped one (--model), a weights card (--weights), an ONNX
file (--onnx) or a PyTorch module from a factory (--torch, with
--torch-weights). An --onnx or --torch model takes pixels 0..255 in its
input's dtype (normalisation is its own) as [B, H, W, C], or [B, C, H, W]
(--nchw), and returns logits [B, K], K the number of classes of the data
(10 for CIFAR-10 and --folder). A --torch module is translated into JAX
operations (torch.export) and runs inside the compiled search, as fast as a
JAX model; one that cannot be (an operator outside the translated set) and
an --onnx model are called back on the host, slower. Install onnxruntime or
torch with pip install "pixeljax[onnx]" or "pixeljax[torch]".

Images are CIFAR-10 test images (from --data, PIXELJAX_DATA, ...; the
packaged sample of 300 when no data set is found) or your own pictures
(--folder DIR with one sub-folder per CIFAR-10 class). Only images the model
classifies correctly are attacked, the first --images of a shuffle seeded
by --seed.

Defaults: {QUICK["images"]} images, popsize {QUICK["popsize"]}, maxiter \
{QUICK["maxiter"]}: about 30 s with the shipped AllConv on a 2-core CPU,
compilation included. --paper: the paper's settings (popsize \
{PAPER["popsize"]}, maxiter {PAPER["maxiter"]}, {PAPER["images"]} images), \
meant for a GPU.

Each attack's result is written to the output folder as soon as it
finishes; rerun the same command after an interruption (even a kill) to
resume where it stopped. The progress bar moves with the model evaluations
spent against the run's budget (the most an attack can cost: popsize x
(maxiter + 1) for de, --max-queries for corner-search and sparse-rs, ...;
an attack that succeeds early being counted whole) and shows the attacks done
and fooled per pixel count.

output folder (default pixeljax-runs/<model>_<data>_<settings>, named after
the model, the data and the settings, with a hash of the model's files (a
--weights card's, an --onnx file, a --torch factory file and its weights)
and of the images, so that the same command resumes and another starts anew):
  run.json         settings (a rerun must match them to resume; the data
                   is matched by content, not by path)
  images.npz       the attacked images (rebuilt from the settings if
                   damaged)
  results.jsonl    one line per attack: image (index in the data), label,
                   target, pixels, success, adv_label, adv_prob (the
                   probability of adv_label), true_prob, target_prob (of
                   the target class; non-targeted: of the likeliest class
                   other than the label), perturbation [[x, y, r, g, b], ...],
                   queries, generations (DE generations; for the other
                   methods the search's rounds: scan blocks, combination
                   rounds), seconds_share (this attack's
                   share of the wall time: the time between two hand-backs
                   of the engine, split evenly among the attacks finished
                   in it), and for --folder path (the image's file)
  summary.md/json  the summary table (attacks/s: attacks, not images, per
                   second of attack wall time)
  examples/        a PNG per attack: original, adversarial, pixels marked;
                   <d>px/<image>[_to<target>].png, or for --folder
                   <d>px/<path>[_to<target>].png
  figures/         grid_<d>px.png, class_pairs_<d>px.png,
                   success_vs_pixels.png
"""


def _int_at_least(minimum, maximum=None):
  def parse(text):
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
        f"expected an integer, got {text!r}"
      ) from None
    if value < minimum:
      raise argparse.ArgumentTypeError(
        f"expected at least {minimum}, got {value}"
      )
    if maximum is not None and value > maximum:
      raise argparse.ArgumentTypeError(
        f"expected at most {maximum}, got {value}"
      )
    return value

  return parse


# jax.random.key keeps the low 32 bits of a seed (without x64): a larger one
# would repeat a smaller one's images and search.
_seed = _int_at_least(0, 2**32 - 1)
# --size: a 1024 x 1024 image is 12 MiB as float32, one model call's worth
# (the search batches about 16 MiB of candidates); larger ones would not fit
# a batch, and the decoded folder would outgrow memory.
MAX_SIZE = 1024


def _coordinator(text):
  from pixeljax import distributed

  try:
    return distributed.check_coordinator(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def _float_in(low, high, *, open_low=False):
  def parse(text):
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
        f"expected a number, got {text!r}"
      ) from None
    if not (low < value if open_low else low <= value) or value > high:
      bracket = "(" if open_low else "["
      raise argparse.ArgumentTypeError(
        f"expected a number in {bracket}{low}, {high}], got {value}"
      )
    return value

  return parse


def _attack_parser(subparsers):
  p = subparsers.add_parser(
    "attack",
    help="attack images and write results, summary and figures",
    description=_ATTACK_HELP,
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  victim = p.add_mutually_exclusive_group()
  victim.add_argument(
    "--model",
    metavar="NAME",
    help="a shipped model (default: the first shipped of "
    "allconv, nin, vgg16, smallcnn)",
  )
  victim.add_argument(
    "--weights",
    metavar="CARD",
    help="a weights card NAME.json written by "
    "`pixeljax train` (the .safetensors next to it)",
  )
  victim.add_argument(
    "--onnx",
    metavar="PATH",
    help="an ONNX model file: one input of images, its "
    "first output the logits [B, K]",
  )
  victim.add_argument(
    "--torch",
    metavar="MODULE:FUNCTION",
    help="a PyTorch model: FUNCTION() in MODULE (an "
    "importable module, or path/to/file.py) returns the "
    "torch.nn.Module; it runs in eval mode",
  )
  p.add_argument(
    "--torch-weights",
    metavar="FILE",
    help="--torch: a state dict loaded into the module, "
    "strictly: .safetensors, or a torch.save file (read with "
    "weights_only=True: no code in it runs)",
  )
  p.add_argument(
    "--nchw",
    action="store_true",
    default=None,
    help="--onnx/--torch: the model takes [B, C, H, W] images "
    "(default: an ONNX model's layout is read from its "
    "declared input shape, an error when both would fit; a "
    "torch module gets [B, H, W, C])",
  )
  source = p.add_mutually_exclusive_group()
  source.add_argument(
    "--data",
    metavar="PATH",
    help="CIFAR-10 source: image-folder tree, .tar.gz or "
    "the python archive (default: PIXELJAX_DATA, then "
    "pixeljax.data.load_cifar10's order)",
  )
  source.add_argument(
    "--folder",
    metavar="DIR",
    help="your own images: DIR/<cifar10 class>/*.png|jpg",
  )
  p.add_argument(
    "--size",
    type=_int_at_least(1, MAX_SIZE),
    default=32,
    help="--folder images are resized to SIZE x SIZE (default 32, at most "
    f"{MAX_SIZE})",
  )
  p.add_argument(
    "--skip-bad-images",
    action="store_true",
    help="--folder: leave out unreadable images (corrupt, or "
    "over 8192 x 8192 pixels) and list them, instead of "
    "stopping at the first",
  )
  p.add_argument(
    "--no-download",
    dest="download",
    action="store_false",
    help="never download CIFAR-10",
  )
  p.add_argument(
    "--images",
    type=_int_at_least(1),
    metavar="N",
    help=f"images to attack (default {QUICK['images']}; "
    f"--paper {PAPER['images']})",
  )
  p.add_argument(
    "--pixels",
    type=_int_at_least(1),
    nargs="+",
    default=[1],
    metavar="D",
    help="pixels changed per image; several run "
    "each (e.g. --pixels 1 3 5; default 1)",
  )
  aim = p.add_mutually_exclusive_group()
  aim.add_argument(
    "--targeted",
    action="store_true",
    help="attack each image towards each other class",
  )
  aim.add_argument(
    "--target",
    metavar="CLASS",
    help="attack every image towards CLASS (name or index)",
  )
  p.add_argument(
    "--method",
    choices=methods.METHODS,
    default="de",
    help="the search (default de, the paper's differential evolution); "
    "seeded-de: DE seeded by the one-pixel corner scan; corner: the "
    "exhaustive one-pixel corner scan (--pixels 1 only; deterministic); "
    "corner-search: the scan, then combinations of its best pixels; "
    "sparse-rs: combinations of random pixels and corners, no scan",
  )
  p.add_argument(
    "--popsize",
    type=_int_at_least(4),
    help=f"de, seeded-de: population per image (default {QUICK['popsize']}; "
    f"--paper {PAPER['popsize']})",
  )
  p.add_argument(
    "--maxiter",
    type=_int_at_least(0),
    help=f"de, seeded-de: most generations (default {QUICK['maxiter']}; "
    f"--paper {PAPER['maxiter']})",
  )
  p.add_argument(
    "--mutation",
    type=_float_in(0.0, 2.0, open_low=True),
    help=f"de, seeded-de: scale factor F (default {defaults.MUTATION})",
  )
  p.add_argument(
    "--crossover",
    type=_float_in(0.0, 1.0),
    help="de, seeded-de: binomial crossover rate (default: none, the paper's)",
  )
  p.add_argument(
    "--max-queries",
    type=_int_at_least(1),
    metavar="Q",
    help="corner-search, sparse-rs: model evaluations per attack, the "
    f"scan's included (default {defaults.MAX_QUERIES})",
  )
  p.add_argument(
    "--proposals",
    type=_int_at_least(1),
    help="corner-search, sparse-rs: candidates per attack and round "
    f"(default {defaults.PROPOSALS})",
  )
  p.add_argument(
    "--top-pixels",
    type=_int_at_least(1),
    metavar="K",
    help="corner-search, seeded-de: combinations draw from the K "
    f"best-ranked pixels (default min(H x W, {defaults.TOP_PIXELS_CAP}))",
  )
  p.add_argument(
    "--block",
    type=_int_at_least(1),
    help="corner, corner-search, seeded-de: scan candidates per attack and "
    "round (default: the largest divisor of H x W x 8 up to 256)",
  )
  p.add_argument(
    "--paper",
    action="store_true",
    help=f"the paper's settings: popsize {PAPER['popsize']}, maxiter "
    f"{PAPER['maxiter']}, {PAPER['images']} images (options given "
    "explicitly still win)",
  )
  p.add_argument(
    "--seed",
    type=_seed,
    default=0,
    help="chooses the images and seeds the search (default 0)",
  )
  p.add_argument(
    "--batch-size",
    type=_int_at_least(1),
    metavar="B",
    help="candidate images per model call (default: from "
    "memory; results do not depend on it)",
  )
  _add_incremental(p)
  p.add_argument(
    "--slots",
    type=_int_at_least(1),
    default=defaults.SLOTS,
    help=f"attacks in flight at once (default {defaults.SLOTS}; results do "
    "not depend on it)",
  )
  p.add_argument(
    "--distributed",
    action="store_true",
    help="one of several processes (hosts, or GPUs) that share the work "
    "through jax.distributed: start the same command in each; SLURM, TPU "
    "pods and the like are found by JAX itself, elsewhere give "
    "--coordinator, --num-processes and --process-id. Every process needs "
    "the same data; only process 0 writes the output folder",
  )
  p.add_argument(
    "--coordinator",
    type=_coordinator,
    metavar="HOST:PORT",
    help="--distributed: process 0's address for the others to join",
  )
  p.add_argument(
    "--num-processes",
    type=_int_at_least(1),
    metavar="N",
    help="--distributed: how many processes take part",
  )
  p.add_argument(
    "--process-id",
    type=_int_at_least(0),
    metavar="I",
    help="--distributed: this process's index, 0..N-1",
  )
  p.add_argument(
    "--distributed-timeout",
    type=_int_at_least(1),
    metavar="S",
    help="--distributed: seconds to wait for every process to join before "
    "giving up with exit code 3 (default 300, as JAX's own)",
  )
  p.add_argument(
    "--out",
    metavar="DIR",
    help="output folder (default pixeljax-runs/<model>_<data>_"
    "<settings>); an existing run with the same settings is "
    "resumed",
  )
  p.add_argument(
    "--no-examples",
    dest="examples",
    action="store_false",
    help="skip the per-attack PNGs",
  )
  p.add_argument(
    "--no-figures",
    dest="figures",
    action="store_false",
    help="skip the figures",
  )
  p.add_argument(
    "--quiet", dest="progress", action="store_false", help="no progress bar"
  )
  p.set_defaults(handler=_run_attack)


_EVAL_HELP = f"""L0 robustness: for each model behind each defence, the
fewest pixels that fool it on each image, and the robust accuracy at every
k <= --max-pixels: the share of the images not fooled with k pixels or
fewer (k = 0: the clean accuracy).

Per image the searches run cheapest first and stop at the first success:
the exhaustive one-pixel corner scan (H x W x 8 evaluations) for k = 1,
then a corner search of --queries-per-k evaluations at each k = 2, 3, ...
(pixeljax.l0_robustness). The searches query the defended model, so the
evaluation adapts to the defence. Every row sees the same images: the first
--images of a shuffle seeded by --seed, misclassified ones included.

Defences (--defence, repeatable; pixeljax.defences): none, median[:SIZE]
(a SIZE x SIZE median filter, default 3, SIZE at most 9: larger networks
compile and run for long), bits[:BITS] (colour depth reduced to BITS bits,
default 4, at most 8: a pixel's own), blur[:SIGMA] (Gaussian blur over
2 ceil(2 SIGMA) + 1 pixels, default 1, at most 8). A window larger than
the images is refused.

Results stream to the output folder as each image finishes; rerun the same
command to resume.

output folder (default pixeljax-runs/eval_<models>_<defences>_n<images>_
k<max pixels>_s<seed>):
  run.json            settings (a rerun must match them to resume)
  results.jsonl       one line per model, defence and image: min_pixels
                      (0: misclassified clean, -1: not fooled with
                      --max-pixels), adv_label, queries, perturbation
  summary.md/json     robust accuracy per row and k
  robust_accuracy.png the curves side by side

Defaults: {defaults.L0_MAX_PIXELS} pixels, {defaults.L0_QUERIES_PER_K} \
evaluations per k; 10 images of the
shipped AllConv (the default model) with no defence took 98 s on a quiet
2-core CPU, so 100 take about 15 minutes.
"""


def _defence_spec(text):
  """--defence's type: the spec in canonical form, checked at parse time."""
  from pixeljax import defences

  try:
    return defences.canonical_spec(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def _eval_parser(subparsers):
  p = subparsers.add_parser(
    "eval",
    help="L0 robustness of models and defences: robust accuracy against k",
    description=_EVAL_HELP,
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--model",
    dest="models",
    action="append",
    default=[],
    metavar="NAME",
    help="a shipped model; repeat for several (default, with no --weights: "
    "the first shipped of allconv, nin, vgg16, smallcnn)",
  )
  p.add_argument(
    "--weights",
    action="append",
    default=[],
    metavar="CARD",
    help="a weights card NAME.json written by `pixeljax train`; repeat for "
    "several (named after the card and its folder)",
  )
  p.add_argument(
    "--defence",
    dest="defences",
    action="append",
    type=_defence_spec,
    metavar="SPEC",
    help="none, median[:SIZE] (SIZE 1..9), bits[:BITS] (1..8) or "
    "blur[:SIGMA] (SIGMA above 0, at most 8); windows no larger than the "
    "images; repeat for several, each model is evaluated behind each "
    "(default: none)",
  )
  p.add_argument(
    "--data",
    metavar="PATH",
    help="CIFAR-10 source (default: PIXELJAX_DATA, then "
    "pixeljax.data.load_cifar10's order; the packaged sample if none)",
  )
  p.add_argument(
    "--no-download",
    dest="download",
    action="store_false",
    help="never download CIFAR-10",
  )
  p.add_argument(
    "--images",
    type=_int_at_least(1),
    default=100,
    help="test images evaluated (default 100)",
  )
  p.add_argument(
    "--seed",
    type=_seed,
    default=0,
    help="chooses the images and seeds the searches (default 0)",
  )
  p.add_argument(
    "--max-pixels",
    type=_int_at_least(1),
    default=defaults.L0_MAX_PIXELS,
    metavar="K",
    help=f"the most pixels changed (default {defaults.L0_MAX_PIXELS})",
  )
  p.add_argument(
    "--queries-per-k",
    type=_int_at_least(1),
    default=defaults.L0_QUERIES_PER_K,
    metavar="Q",
    help="evaluations per image at each k from 2 on, in whole rounds of "
    f"--proposals (default {defaults.L0_QUERIES_PER_K})",
  )
  p.add_argument(
    "--proposals",
    type=_int_at_least(1),
    default=defaults.PROPOSALS,
    help=f"candidates per image and round (default {defaults.PROPOSALS})",
  )
  p.add_argument(
    "--top-pixels",
    type=_int_at_least(1),
    help="how many of the scan's best pixels the k-pixel search draws from "
    "(default: min(H * W, 128))",
  )
  p.add_argument(
    "--block",
    type=_int_at_least(1),
    help="scan candidates per image and round (default: the largest "
    "divisor of the scan up to 256)",
  )
  p.add_argument(
    "--batch-size",
    type=_int_at_least(1),
    metavar="B",
    help="candidate images per model call (default: from memory; results "
    "do not depend on it)",
  )
  _add_incremental(p)
  p.add_argument(
    "--slots",
    type=_int_at_least(1),
    default=defaults.SLOTS,
    help=f"images in flight at once (default {defaults.SLOTS}; results do "
    "not depend on it)",
  )
  p.add_argument(
    "--out",
    metavar="DIR",
    help="output folder; an existing evaluation with the same settings is "
    "resumed",
  )
  p.add_argument(
    "--no-figures",
    dest="figures",
    action="store_false",
    help="skip the figure",
  )
  p.add_argument(
    "--quiet", dest="progress", action="store_false", help="no progress bar"
  )
  p.set_defaults(handler=_run_eval)


def _figures_parser(subparsers):
  p = subparsers.add_parser(
    "figures",
    help="redraw a run folder's figures from its results",
    description="Redraws RUN_DIR/figures/ (adversarial grid, class-pair "
    "heatmap, success rate vs pixels) from RUN_DIR/results.jsonl; works "
    "on an interrupted run too.",
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "run_dir",
    metavar="RUN_DIR",
    help="the --out folder of a `pixeljax attack` run",
  )
  p.set_defaults(handler=_run_figures)


def build_parser() -> argparse.ArgumentParser:
  """The parser of `pixeljax`; train passes its arguments on."""
  parser = argparse.ArgumentParser(
    prog="pixeljax",
    description="The one-pixel attack (Su et al. 2019) in JAX, from the shell.",
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  subparsers = parser.add_subparsers(
    dest="command", required=True, metavar="SUBCOMMAND"
  )
  _attack_parser(subparsers)
  _eval_parser(subparsers)
  _figures_parser(subparsers)
  subparsers.add_parser(
    "train",
    add_help=False,
    help="train a victim network (pixeljax train --help)",
  )
  return parser


def enable_compile_cache():
  """Keeps compiled attacks on disk (PIXELJAX_CACHE/jax), so that a rerun
  or a resumed run with the same shapes skips compilation. A cache folder
  the user chose (JAX_COMPILATION_CACHE_DIR) is left as it is."""
  import jax

  from pixeljax import data as data_lib

  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update(
      "jax_compilation_cache_dir", str(data_lib.cache_dir() / "jax")
    )
    jax.config.update("jax_compilation_cache_max_size", 2**30)
    # Small programs too: a run compiles a few, each worth a second or so.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# --incremental: the engine's ``incremental`` argument.
INCREMENTAL = {"auto": None, "on": True, "off": False}


def _add_incremental(p):
  p.add_argument(
    "--incremental",
    choices=tuple(INCREMENTAL),
    default="auto",
    help="score candidates by recomputing only what their pixels change: "
    "auto (default: where it pays, on CPU), on or off; results do not "
    "depend on it beyond float rounding",
  )


def _search_fields(args) -> dict:
  """The search options given on the command line, checked against
  --method, with the defaults of --paper or the quick preset filled in."""
  chosen = PAPER if args.paper else QUICK
  given = {
    name: getattr(args, name)
    for name in (
      "popsize",
      "maxiter",
      "mutation",
      "crossover",
      "max_queries",
      "proposals",
      "top_pixels",
      "block",
    )
    if getattr(args, name) is not None
  }
  foreign = [n for n in given if n not in METHOD_OPTIONS[args.method]]
  if foreign:
    flags = ", ".join("--" + n.replace("_", "-") for n in foreign)
    takes = ", ".join(
      "--" + n.replace("_", "-") for n in METHOD_OPTIONS[args.method]
    )
    raise errors.UsageError(
      f"{flags}: not an option of --method {args.method} (it takes {takes})"
    )
  if args.method == "corner" and args.pixels != [1]:
    raise errors.UsageError(
      "--method corner changes one pixel: --pixels 1 only, got --pixels "
      + " ".join(map(str, args.pixels))
      + " (corner-search and sparse-rs change several)"
    )
  fields = dict(given)
  if args.method in ("de", "seeded-de"):
    fields.setdefault("popsize", chosen["popsize"])
    fields.setdefault("maxiter", chosen["maxiter"])
  return fields


def _distributed(args):
  """Joins the other processes for --distributed, before any device use."""
  manual = (args.coordinator, args.num_processes, args.process_id)
  if not args.distributed:
    if any(v is not None for v in (*manual, args.distributed_timeout)):
      raise errors.UsageError(
        "--coordinator, --num-processes, --process-id, "
        "--distributed-timeout: only with --distributed"
      )
    return
  from pixeljax import distributed

  timeout = args.distributed_timeout or distributed.TIMEOUT_S
  try:
    distributed.initialize(*manual, timeout=timeout)
  except ValueError as e:
    raise errors.UsageError(f"--distributed: {e}") from None


def _run_attack(args) -> int:
  if args.torch_weights is not None and args.torch is None:
    raise errors.UsageError(
      "--torch-weights: only with --torch (an ONNX file "
      "holds its weights; a --weights card names its "
      "own)"
    )
  if args.nchw and args.onnx is None and args.torch is None:
    raise errors.UsageError(
      "--nchw: only with --onnx or --torch (the "
      "shipped models and weights cards take NHWC)"
    )
  settings = AttackSettings(
    out=args.out,
    model=args.model,
    weights=args.weights,
    onnx=args.onnx,
    torch=args.torch,
    torch_weights=args.torch_weights,
    nchw=args.nchw,
    data=args.data,
    folder=args.folder,
    size=args.size,
    skip_bad_images=args.skip_bad_images,
    download=args.download,
    images=args.images or (PAPER if args.paper else QUICK)["images"],
    pixels=tuple(sorted(set(args.pixels))),
    targeted=args.targeted,
    target=args.target,
    method=args.method,
    seed=args.seed,
    batch_size=args.batch_size,
    incremental=INCREMENTAL[args.incremental],
    slots=args.slots,
    examples=args.examples,
    figures=args.figures,
    progress=args.progress,
    distributed=args.distributed,
    **_search_fields(args),
  )
  _distributed(args)
  enable_compile_cache()
  from pixeljax.cli import run  # flax and matplotlib: only when used

  run.run_attack(settings)
  return errors.EXIT_OK


def _run_eval(args) -> int:
  enable_compile_cache()
  from pixeljax.cli import robustness  # flax and matplotlib: only when used

  robustness.run_eval(
    robustness.EvalSettings(
      out=args.out,
      models=tuple(args.models),
      weights=tuple(args.weights),
      defences=tuple(args.defences or ("none",)),
      data=args.data,
      download=args.download,
      images=args.images,
      seed=args.seed,
      max_pixels=args.max_pixels,
      queries_per_k=args.queries_per_k,
      proposals=args.proposals,
      top_pixels=args.top_pixels,
      block=args.block,
      batch_size=args.batch_size,
      incremental=INCREMENTAL[args.incremental],
      slots=args.slots,
      figures=args.figures,
      progress=args.progress,
    )
  )
  return errors.EXIT_OK


def _run_figures(args) -> int:
  from pixeljax import plots
  from pixeljax import runs

  try:
    with runs.writing(pathlib.Path(args.run_dir) / "figures"):
      written = plots.draw_run(args.run_dir)
  except runs.DamagedImagesError as e:
    raise errors.InputError(
      f"{e}; rerun the `pixeljax attack` command of "
      "that run: it rebuilds the file"
    ) from None
  for path in written:
    print(path)
  return errors.EXIT_OK


def _run_train(argv) -> int:
  from pixeljax import data
  from pixeljax import train

  try:
    train.main(argv)
  except (data.DataNotFoundError, data.DataCorruptError, OSError) as e:
    raise errors.InputError(str(e)) from None
  except errors.UserError:  # a damaged checkpoint, ...: their own exit code
    raise
  except ValueError as e:  # train's own option checks
    raise errors.UsageError(str(e)) from None
  return errors.EXIT_OK


def _dispatch(argv) -> int:
  passthrough = {"train": _run_train}
  if argv and argv[0] in passthrough:
    return passthrough[argv[0]](argv[1:])
  args = build_parser().parse_args(argv)
  return args.handler(args)


def main(argv=None) -> int:
  """Runs `pixeljax` on ``argv`` (default: sys.argv[1:]); returns the exit
  code (see the module's --help)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    return _dispatch(argv)
  except errors.UserError as e:
    print(f"pixeljax: error: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print(
      "pixeljax: interrupted; finished work is saved, rerun the same "
      "command to resume",
      file=sys.stderr,
    )
    return errors.EXIT_INTERRUPTED


def program() -> None:
  """The `pixeljax` program: the process's options for it, then main's exit
  code.

  Huge pages for malloc make training faster (`pixeljax.huge_pages`: a
  restart, a no-op when `pixeljax.launch` did it before importing JAX), and
  XLA's CPU use of YNNPACK runs the attacks 2-3x slower on the CPUs measured
  (`pixeljax.xla_options`). Both are set here, before JAX starts, rather
  than in main(), so that a call of main() from Python leaves the process
  alone.
  """
  restart_with_huge_pages()
  prefer_xla_cpu_convolutions()
  sys.exit(main())


if __name__ == "__main__":
  program()
