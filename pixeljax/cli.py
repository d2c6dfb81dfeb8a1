"""The `pixeljax` command: parses arguments and hands them to the module that
does the work.

  pixeljax attack [options]   attack CIFAR-10 test images, or your own
  pixeljax figures RUN_DIR    redraw a run folder's figures
  pixeljax train ...          train a victim network (pixeljax.train)
  pixeljax bench ...          attack throughput (benchmarks/throughput.py)

Run `pixeljax SUBCOMMAND --help` for each one's options.
"""

import argparse
import pathlib
import sys

from pixeljax import errors

# Quick defaults. Measured with the shipped SmallCNN on a 2-core CPU that
# three other jobs shared (load ~7): 83 s wall from a cold start,
# compilation included, 41 s of CPU time.
QUICK = dict(images=20, popsize=200, maxiter=20)
# The paper's settings (Su et al. 2019), for a GPU: --paper.
PAPER = dict(images=500, popsize=400, maxiter=100)

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
Su et al. (2019) and write per-image results, a summary and figures.

The model is a shipped one (--model), a weights card (--weights), an ONNX
file (--onnx) or a PyTorch module from a factory (--torch, with
--torch-weights). An --onnx or --torch model takes pixels 0..255 in its
input's dtype (normalisation is its own) as [B, H, W, C], or [B, C, H, W]
(--nchw), and returns logits [B, K], K the number of classes of the data
(10 for CIFAR-10 and --folder). The compiled search calls it back on the
host, slower than a JAX model; install onnxruntime or torch with pip
install "pixeljax[onnx]" or "pixeljax[torch]".

Images are CIFAR-10 test images (from --data, PIXELJAX_DATA, ...; the
packaged sample of 300 when no data set is found) or your own pictures
(--folder DIR with one sub-folder per CIFAR-10 class). Only images the model
classifies correctly are attacked, the first --images of a shuffle seeded
by --seed.

Defaults: {QUICK["images"]} images, popsize {QUICK["popsize"]}, maxiter \
{QUICK["maxiter"]}: well under two minutes
on a 2-core CPU. --paper: the paper's settings (popsize 400, maxiter 100,
500 images), meant for a GPU.

Each attack's result is written to the output folder as soon as it
finishes; rerun the same command after an interruption (even a kill) to
resume where it stopped. The progress bar moves with the model evaluations
spent against the run's budget (popsize x (maxiter + 1) per attack, an
attack that succeeds early being counted whole) and shows the attacks done
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
                   queries, generations, seconds_share (this attack's
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


def _int_at_least(minimum):
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
    return value

  return parse


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
    type=_int_at_least(1),
    default=32,
    help="--folder images are resized to SIZE x SIZE (default 32)",
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
    "--popsize",
    type=_int_at_least(4),
    help=f"DE population per image (default {QUICK['popsize']}; "
    f"--paper {PAPER['popsize']})",
  )
  p.add_argument(
    "--maxiter",
    type=_int_at_least(0),
    help=f"most DE generations (default {QUICK['maxiter']}; "
    f"--paper {PAPER['maxiter']})",
  )
  p.add_argument(
    "--mutation",
    type=_float_in(0.0, 2.0, open_low=True),
    default=0.5,
    help="DE scale factor F (default 0.5)",
  )
  p.add_argument(
    "--crossover",
    type=_float_in(0.0, 1.0),
    help="binomial crossover rate (default: none, the paper's)",
  )
  p.add_argument(
    "--paper",
    action="store_true",
    help="the paper's settings: popsize 400, maxiter 100, 500 "
    "images (options given explicitly still win)",
  )
  p.add_argument(
    "--seed",
    type=_int_at_least(0),
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
  p.add_argument(
    "--slots",
    type=_int_at_least(1),
    default=32,
    help="attacks in flight at once (default 32; results do not depend on it)",
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
  """The parser of `pixeljax`; train and bench pass their arguments on."""
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
  _figures_parser(subparsers)
  subparsers.add_parser(
    "train",
    add_help=False,
    help="train a victim network (pixeljax train --help)",
  )
  subparsers.add_parser(
    "bench",
    add_help=False,
    help="attack throughput benchmark (pixeljax bench --help)",
  )
  return parser


def _run_attack(args) -> int:
  from pixeljax import campaign  # flax and matplotlib: only when used

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
  chosen = PAPER if args.paper else QUICK
  options = campaign.AttackOptions(
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
    images=args.images or chosen["images"],
    pixels=tuple(sorted(set(args.pixels))),
    targeted=args.targeted,
    target=args.target,
    popsize=args.popsize or chosen["popsize"],
    maxiter=chosen["maxiter"] if args.maxiter is None else args.maxiter,
    mutation=args.mutation,
    crossover=args.crossover,
    seed=args.seed,
    batch_size=args.batch_size,
    slots=args.slots,
    examples=args.examples,
    figures=args.figures,
    progress=args.progress,
  )
  campaign.run_attack(options)
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
  except ValueError as e:  # train's own option checks
    raise errors.UsageError(str(e)) from None
  return errors.EXIT_OK


def _run_bench(argv) -> int:
  # benchmarks/ lives next to the package in a source checkout only.
  root = pathlib.Path(__file__).resolve().parent.parent
  if not (root / "benchmarks" / "throughput.py").is_file():
    raise errors.InputError(
      "pixeljax bench needs the repository's benchmarks/ folder, which a "
      "regular install lacks; clone the repository, `pip install -e .` "
      "there, and run `pixeljax bench` (or `python -m "
      "benchmarks.throughput`) from it"
    )
  sys.path.insert(0, str(root))
  from benchmarks import throughput

  throughput.main(argv)
  return errors.EXIT_OK


def _dispatch(argv) -> int:
  passthrough = {"train": _run_train, "bench": _run_bench}
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


if __name__ == "__main__":
  sys.exit(main())
