"""The CIFAR-10 table of Su et al. (2019), reproduced on the shipped victims.

The protocol of Su, Vargas and Sakurai, "One pixel attack for fooling deep
neural networks" (IEEE TEVC 2019, arXiv 1710.08864), for each model:
  * --images CIFAR-10 test images the model classifies correctly: the first
    ones of a shuffle of the test set seeded by --seed
    (``pixeljax.cli.images.select_images``); every attack on a model uses
    the same ones;
  * non-targeted attacks changing 1, 3 and 5 pixels (--pixels);
  * targeted attacks towards each of the 9 other classes (--targeted-pixels;
    the paper's 1 by default, 3 and 5 as GPU time allows), on the first
    --targeted-images of those images (default: all);
  * the paper's DE: population 400, 100 generations, F = 0.5, no crossover.
Reported: success rate and mean confidence (the adversarial label's
probability, over the successes) per attack; for targeted attacks, how many
of the 9 targets each image reached (the paper's histogram) and the success
rate per (original, target) class pair (a heatmap); the paper's published
numbers found in a source, with that source; the wall time.

Each (model, mode, pixels) is one resumable run folder of `pixeljax attack`
(``pixeljax.cli.run.run_attack``) under --out-dir: each attack's record is
appended to its results.jsonl as it finishes, and rerunning the same command
skips every finished attack. The non-targeted runs go first (the paper's
table), by pixel count, then the targeted ones, so a session cut short
leaves every victim's 1-pixel result done first. A run stopped by SIGTERM
or Ctrl-C (exit code 130) still writes the table so far, runs cut short
marked partial; sessions.jsonl in --out-dir adds up the wall time of every
session. The tables and figures are rebuilt from all the
run folders each time.

Cost: each attack evaluates the model at most popsize x (maxiter + 1) times
(40,400 with the paper's DE); the paper's table is 1,500 non-targeted and
4,500 targeted 1-pixel attacks per model: at most 242 million evaluations.

A model in --models without trained weights is skipped, with a message;
when none is left the command fails (exit code 3). Its run folders from
earlier sessions (VGG16's weights may exist only where it was trained) still
show in the table, as they are. Train a victim with
`pixeljax train --model NAME --out DIR`, then pass --weights-dir DIR (or
ship DIR/NAME.* under pixeljax/weights/).

Run from the repository root:
  python -m benchmarks.paper_table            # the paper's protocol (a GPU)
  timeout -s TERM 540 python -m benchmarks.paper_table --weights-dir DIR \
      --slots 256 --batch-size 4000 --quiet   # a slice of it; rerun to go on
  python -m benchmarks.paper_table --models smallcnn --images 20 \\
      --popsize 100 --maxiter 20 --out-dir /tmp/paper_cpu_smoke \\
      --name paper_table_cpu_smoke     # a CPU smoke run, not the protocol
Writes benchmarks/results/NAME.{json,md} and NAME_*.png (NAME: --name).
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import signal
import sys
import time

import jax
import numpy as np

from benchmarks import common
from pixeljax import cli
from pixeljax import errors
from pixeljax import host
from pixeljax import metrics
from pixeljax import plots
from pixeljax import runs
from pixeljax.cli import run as run_lib
from pixeljax.cli.settings import AttackSettings
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.models import weights as weights_lib
from pixeljax.xla_options import prefer_xla_cpu_convolutions

PAPER_MODELS = ("allconv", "nin", "vgg16")
PAPER_SETTINGS = dict(images=500, popsize=400, maxiter=100)
MUTATION = 0.5  # the paper's F
SESSIONS_FILE = "sessions.jsonl"

# Published numbers, only those found in a source during this work. The
# tables of the paper (success rate and confidence per model, 1/3/5 pixels,
# targeted and not) could not be read here; add them, naming the table.
PAPER = {
  "source": (
    "Su, Vargas, Sakurai, 'One pixel attack for fooling deep neural "
    "networks', arXiv 1710.08864 / IEEE TEVC 2019, text: non-targeted "
    "1-pixel attacks on Kaggle CIFAR-10 'on three common deep neural "
    "network structures with 68.71%, 71.66% and 63.53% success rates'. "
    "Seen quoted (translated) in a copy of D. Verma's Medium article 'Why "
    "you should be using Differential Evolution for your optimization "
    "problems'; not checked against the paper itself. The paper lists "
    "its networks as AllConv, NiN, VGG16; that these rates follow that "
    "order is assumed, not verified."
  ),
  # (mode, pixels) -> model -> success rate
  "success_rate": {
    ("non-targeted", 1): {"allconv": 0.6871, "nin": 0.7166, "vgg16": 0.6353},
  },
  "v1_abstract": (
    "arXiv 1710.08864v1 abstract (as shown by shortscience.org): 70.97% "
    "of the natural images can be perturbed to at least one target class "
    "by modifying one pixel, with 97.47% confidence on average (an early "
    "version; its experiments differ from the journal's)."
  ),
}


def _parser():
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=__doc__.split("\n\n", 1)[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--models",
    nargs="+",
    default=list(PAPER_MODELS),
    metavar="NAME",
    help="victims (default: the paper's allconv nin vgg16)",
  )
  parser.add_argument(
    "--weights-dir",
    metavar="DIR",
    help="folder of NAME.json weights cards (`pixeljax "
    "train --out DIR`); a card there wins over shipped "
    "weights",
  )
  parser.add_argument("--images", type=int, default=PAPER_SETTINGS["images"])
  parser.add_argument(
    "--targeted-images",
    type=int,
    default=None,
    help="images of the targeted attacks: the first of those the "
    "non-targeted ones attack (default: --images)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--popsize", type=int, default=PAPER_SETTINGS["popsize"])
  parser.add_argument("--maxiter", type=int, default=PAPER_SETTINGS["maxiter"])
  parser.add_argument(
    "--pixels",
    type=int,
    nargs="*",
    default=[1, 3, 5],
    help="pixel counts of the non-targeted attacks",
  )
  parser.add_argument(
    "--targeted-pixels",
    type=int,
    nargs="*",
    default=[1],
    help="pixel counts of the targeted attacks (each "
    "image towards each other class); none: skip them",
  )
  parser.add_argument(
    "--out-dir",
    default=os.path.join(common.RESULTS_DIR, "paper"),
    help="where the run folders go",
  )
  parser.add_argument(
    "--name",
    default="paper_table",
    help="stem of the result files (default paper_table)",
  )
  parser.add_argument("--results-dir", default=common.RESULTS_DIR)
  parser.add_argument(
    "--data",
    metavar="PATH",
    help="CIFAR-10 (default: PIXELJAX_DATA, other "
    "sources, then the packaged sample)",
  )
  parser.add_argument("--no-download", dest="download", action="store_false")
  parser.add_argument(
    "--slots", type=int, default=32, help="attacks in flight at once"
  )
  parser.add_argument(
    "--batch-size",
    type=int,
    default=None,
    help="candidates per model call (default: engine's)",
  )
  parser.add_argument(
    "--run-figures",
    action="store_true",
    help="also draw each run folder's figures (grids of "
    "adversarial images, class pairs) in its figures/",
  )
  parser.add_argument("--quiet", dest="progress", action="store_false")
  return parser


def find_weights(model: str, weights_dir):
  """The card ``weights_dir``/``model``.json if there, else None when the
  model's weights ship, else "" (no weights)."""
  if weights_dir is not None:
    card = pathlib.Path(weights_dir) / f"{model}.json"
    if card.is_file():
      return str(card)
  return None if model in weights_lib.shipped_models() else ""


def run_dir(out_dir, model: str, targeted: bool, pixels: int) -> pathlib.Path:
  mode = "targeted" if targeted else "untargeted"
  return pathlib.Path(out_dir) / f"{model}_{mode}_{pixels}px"


def count_records(out_dir, plan) -> int:
  """Attacks recorded in the run folders of ``plan`` so far."""
  directories = [run_dir(out_dir, *step) for step in plan]
  return sum(
    len(runs.RunStore.existing(d).records())
    for d in directories
    if (d / runs.SETTINGS_FILE).is_file()
  )


def targeted_images(args) -> int:
  """How many images the targeted attacks take (9 attacks each)."""
  return args.images if args.targeted_images is None else args.targeted_images


def run_one(args, model, card, targeted, pixels):
  """Runs (or resumes) one run folder."""
  cli.enable_compile_cache()  # as `pixeljax attack` does
  run_lib.run_attack(
    AttackSettings(
      out=str(run_dir(args.out_dir, model, targeted, pixels)),
      model=None if card else model,
      weights=card,
      data=args.data,
      download=args.download,
      images=targeted_images(args) if targeted else args.images,
      pixels=(pixels,),
      targeted=targeted,
      popsize=args.popsize,
      maxiter=args.maxiter,
      mutation=MUTATION,
      seed=args.seed,
      batch_size=args.batch_size,
      slots=args.slots,
      examples=False,
      figures=args.run_figures,
      progress=args.progress,
    )
  )


def _shown(path) -> str:
  """``path`` relative to the repository when inside it."""
  path = os.path.abspath(path)
  inside = path.startswith(common.REPO_ROOT + os.sep)
  return os.path.relpath(path, common.REPO_ROOT) if inside else path


def _finite(value):
  return None if isinstance(value, float) and math.isnan(value) else value


def summarize_run(directory: pathlib.Path, model: str) -> dict:
  """One run folder's numbers, from its run.json, images.npz and records."""
  store = runs.RunStore.existing(directory)
  settings, records, saved = store.settings(), store.records(), store.images()
  num_classes = len(saved["class_names"])
  row = metrics.summarize(records)
  expected = len(saved["index"]) * (
    num_classes - 1 if settings["targeted"] else 1
  )
  entry = dict(
    expected_attacks=expected,
    complete=len(records) == expected,
    model=model,
    mode="targeted" if settings["targeted"] else "non-targeted",
    pixels=settings["pixels"][0],
    run_dir=_shown(directory),
    images=len(saved["index"]),
    looked=int(saved["looked"]),
    data=settings["data"]["source"],
    weights=settings["model"],
    evaluations=sum(r["queries"] for r in records),
    summary={k: _finite(v) for k, v in row[0].items()} if row else None,
  )
  if entry["complete"] and records:
    low, high = plots.wilson_interval(row[0]["successes"], len(records))
    entry["success_rate_wilson95"] = [float(low), float(high)]
  if settings["targeted"]:
    histogram, incomplete = metrics.targets_reached(records, num_classes)
    successes, attempts = metrics.class_pairs(records, num_classes)
    entry.update(
      targets_reached=histogram.tolist(),
      incomplete_images=incomplete,
      pair_successes=successes.tolist(),
      pair_attempts=attempts.tolist(),
    )
  return entry


def log_session(out_dir, record: dict):
  """Appends this session to sessions.jsonl."""
  with open(pathlib.Path(out_dir) / SESSIONS_FILE, "a") as f:
    f.write(json.dumps(record) + "\n")


def read_sessions(out_dir) -> list:
  """Every session logged in sessions.jsonl, oldest first."""
  path = pathlib.Path(out_dir) / SESSIONS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def _protocol_notes(args, models) -> list:
  """How the settings differ from the paper's protocol (empty: they don't)."""
  notes = [
    f"{key} {getattr(args, key)} (paper: {value})"
    for key, value in PAPER_SETTINGS.items()
    if getattr(args, key) != value
  ]
  if args.targeted_pixels and targeted_images(args) != args.images:
    notes.append(
      f"targeted attacks on {targeted_images(args)} images (paper: "
      f"{PAPER_SETTINGS['images']})"
    )
  if sorted(models) != sorted(PAPER_MODELS):
    notes.append(
      f"models run: {', '.join(models)} (paper: AllConv, NiN, VGG16)"
    )
  return notes


def _percent(value) -> str:
  return "-" if value is None else f"{value:.1%}"


def _success_cell(entry) -> str:
  """A complete run's success rate with its Wilson 95% interval; a partial
  run's lower bound (its early records lean to successes, which stop
  early)."""
  s = entry["summary"]
  if s is None:
    return "-"
  if entry["complete"]:
    low, high = entry["success_rate_wilson95"]
    return f"{s['success_rate']:.1%} ({low:.1%}-{high:.1%})"
  at_least = s["successes"] / entry["expected_attacks"]
  return f"at least {at_least:.1%} ({s['successes']} of {s['attacks']} done)"


def _results_table(entries) -> str:
  rows = []
  for e in entries:
    s = e["summary"] or {}
    paper = PAPER["success_rate"].get((e["mode"], e["pixels"]), {})
    reached = ""
    if e["mode"] == "targeted" and sum(e["targets_reached"]):
      counts = e["targets_reached"]
      reached = f"{1 - counts[0] / sum(counts):.1%}"
    done = s.get("attacks", 0)
    if not e["complete"]:
      done = f"{done} of {e['expected_attacks']} (partial)"
    rows.append(
      [
        e["model"],
        e["mode"],
        e["pixels"],
        done,
        _success_cell(e),
        _percent(s.get("mean_confidence")),
        reached,
        _percent(paper.get(e["model"])),
        f"{s['mean_queries']:.0f}" if s else "-",
        f"{s['seconds']:.0f}" if s else "-",
        f"{e['evaluations'] / s['seconds']:.0f}" if s and s["seconds"] else "-",
      ]
    )
  return common.markdown_table(
    [
      "model",
      "attack",
      "pixels",
      "attacks",
      "success rate (Wilson 95%)",
      "mean confidence (successes)",
      "images reaching >= 1 target",
      "paper success rate",
      "mean queries",
      "attack seconds",
      "evaluations/s",
    ],
    rows,
  )


def _histogram_table(entries) -> str:
  targeted = [e for e in entries if e["mode"] == "targeted"]
  if not targeted:
    return ""
  width = len(targeted[0]["targets_reached"])
  rows = [
    [e["model"], e["pixels"], *e["targets_reached"], e["incomplete_images"]]
    for e in targeted
  ]
  return (
    "\nImages by the number of the 9 targeted attacks on them that "
    "succeeded (the paper's histogram of target classes reached):\n\n"
    + common.markdown_table(
      ["model", "pixels", *map(str, range(width)), "incomplete"], rows
    )
  )


def markdown(payload) -> str:
  """The report: settings, results beside the paper's, the wall time."""
  stamp, settings = payload["stamp"], payload["settings"]
  entries = payload["runs"]
  # A smaller search is a smoke run; the paper's search on fewer images or
  # models is the paper's protocol at a smaller scale.
  search_differs = any(
    settings[key] != PAPER_SETTINGS[key] for key in ("popsize", "maxiter")
  )
  if search_differs:
    kind = " (a smoke run: not the paper's search)"
  elif payload["not_the_protocol"]:
    kind = " (the paper's search, on fewer images or models)"
  else:
    kind = ""
  text = (
    f"# Su et al. (2019), CIFAR-10: pixeljax on {stamp['device']} "
    f"({stamp['platform']}), {stamp['date']}{kind}\n\n"
  )
  if payload["not_the_protocol"]:
    text += (
      "**Not the paper's protocol**: "
      + "; ".join(payload["not_the_protocol"])
      + ".\n\n"
    )
  sources = sorted({e["data"] for e in entries})
  text += (
    f"Images: per model, the first {settings['images']} test images that "
    f"the model classifies correctly, in a shuffle of the test set seeded "
    f"with {settings['seed']} (numpy default_rng permutation); data: "
    f"{', '.join(sources) or '-'}. The JPEG copy of CIFAR-10 and the "
    "packaged sample differ slightly from the original images. DE: "
    f"population {settings['popsize']}, {settings['maxiter']} generations, "
    "F = 0.5, no crossover, early stop. Targeted: each image towards each "
    "of the other 9 classes. Confidence: the adversarial label's "
    "probability, averaged over successes.\n\n"
  )
  # The targeted runs take the first of the non-targeted runs' images, so a
  # model's largest selection is the one to describe.
  chosen = [
    max((e for e in entries if e["model"] == model), key=lambda e: e["images"])
    for model in dict.fromkeys(e["model"] for e in entries)
  ]
  text += (
    "Images attacked: "
    + "; ".join(
      f"{e['model']} {e['images']} (skipped {e['looked'] - e['images']} "
      f"misclassified of the first {e['looked']})"
      for e in chosen
    )
    + ".\n\n"
  )
  if payload.get("shown_from_earlier_sessions"):
    text += (
      "Not attacked in this session (no trained weights here), shown "
      "from earlier sessions' run folders: "
      f"{', '.join(payload['shown_from_earlier_sessions'])}.\n\n"
    )
  if payload["skipped"]:
    text += (
      f"Skipped, no trained weights: {', '.join(payload['skipped'])} "
      "(train with `pixeljax train --model NAME --out DIR`, then pass "
      "--weights-dir DIR).\n\n"
    )
  text += _results_table(entries) + _histogram_table(entries)
  if payload["not_started"]:
    text += f"\nNot run yet: {', '.join(payload['not_started'])}.\n"
  wall = payload["wall_time"]
  finished = not payload["not_started"] and all(e["complete"] for e in entries)
  text += (
    f"\nWall time of the {'whole table' if finished else 'table so far'}"
    f": {wall['seconds']:.0f} s over "
    f"{wall['sessions']} session(s) ({wall['attacks']} attacks, "
    f"{wall['evaluations']:,} model evaluations; this "
    f"session {wall['this_session_seconds']:.0f} s, "
    f"{wall['this_session_attacks']} new attacks), compilation and "
    "image selection included.\n"
  )
  text += (
    f"\nPaper numbers: {PAPER['source']} Other published numbers "
    "(3 and 5 pixels, targeted rates, confidence) are not quoted: "
    f"they could not be verified here. For reference, "
    f"{PAPER['v1_abstract']}\n"
  )
  return text


def draw(payload, results_dir, name) -> list:
  """The figures: per model a targeted class-pair heatmap and success
  against pixels, and the targets-reached histogram of every model."""
  out = pathlib.Path(results_dir)
  classes = payload["class_names"]
  written, histograms = [], {}
  for model in payload["models"]:
    mine = [e for e in payload["runs"] if e["model"] == model]
    for e in mine:
      if e["mode"] == "targeted" and e["summary"]:
        written.append(out / f"{name}_heatmap_{model}_{e['pixels']}px.png")
        plots.class_pair_heatmap(
          written[-1],
          np.asarray(e["pair_successes"]),
          np.asarray(e["pair_attempts"]),
          classes,
          targeted=True,
          title=f"{model}, {e['pixels']}-pixel targeted",
        )
        histograms[f"{model}, {e['pixels']} px"] = e["targets_reached"]
    rows = [
      e["summary"] for e in mine if e["mode"] == "non-targeted" and e["summary"]
    ]
    if rows:
      written.append(out / f"{name}_success_vs_pixels_{model}.png")
      plots.success_vs_pixels(written[-1], rows, f"{model}, non-targeted")
    one_pixel = [
      e for e in mine if (e["mode"], e["pixels"]) == ("non-targeted", 1)
    ]
    if one_pixel and one_pixel[0]["summary"]:
      written.append(out / f"{name}_figure1_{model}.png")
      _figure_one(written[-1], one_pixel[0], model, classes)
  if histograms:
    written.append(out / f"{name}_targets_reached.png")
    plots.targets_reached(
      written[-1], histograms, "Target classes each image was turned into"
    )
  return written


def _figure_one(path, entry, model, class_names):
  """The paper's Figure 1 on ``model``: one-pixel attacks from its run
  folder, a success of each original class first."""
  store = runs.RunStore.existing(
    os.path.join(common.REPO_ROOT, entry["run_dir"])
  )
  summary = entry["summary"]
  plots.adversarial_grid(
    path,
    plots.grid_entries(store.records(), store.images()),
    class_names,
    f"{model}, one pixel changed (boxed): {summary['successes']} of "
    f"{summary['attacks']} images fooled\noriginal class → the model's "
    "label (its confidence)",
  )


def make_plan(models, pixels, targeted_pixels) -> list:
  """The (model, targeted, pixels) runs, most wanted first: the
  non-targeted ones (the paper's table) before the targeted ones (9 times
  the attacks each), then by pixel count, then by model; a session cut short
  leaves every victim's 1-pixel result complete before any 3-pixel one."""
  steps = [(m, False, p) for m in models for p in pixels]
  steps += [(m, True, p) for m in models for p in targeted_pixels]
  return sorted(steps, key=lambda s: (s[1], s[2], models.index(s[0])))


def _victims(args):
  """({model: weights card or None (shipped)}, {skipped model: why})."""
  models, skipped = {}, {}
  for model in args.models:
    card = find_weights(model, args.weights_dir)
    if card == "":
      skipped[model] = (
        f"no trained weights (none ship, no {model}.json in "
        f"--weights-dir); train with `pixeljax train --model "
        f"{model} --out DIR`, then pass --weights-dir DIR"
      )
      print(f"Skipping {model}: {skipped[model]}", file=sys.stderr)
    else:
      models[model] = card
  return models, skipped


def run_plan(args, models, plan):
  """Runs every step of ``plan`` not yet done, then logs the session (also
  when interrupted, so the wall time adds up)."""
  began = datetime.datetime.now(datetime.UTC)
  started = time.perf_counter()
  before = count_records(args.out_dir, plan)
  try:
    for model, targeted, pixels in plan:
      run_one(args, model, models[model], targeted, pixels)
  finally:
    log_session(
      args.out_dir,
      dict(
        started=began.isoformat(timespec="seconds"),
        seconds=time.perf_counter() - started,
        new_attacks=count_records(args.out_dir, plan) - before,
        device=jax.devices()[0].device_kind,
        **host.describe(),
      ),
    )


def _started(out_dir, step) -> bool:
  return (run_dir(out_dir, *step) / runs.SETTINGS_FILE).is_file()


def build_payload(args, models, skipped, plan, earlier=()) -> dict:
  """Everything the table reports, from the run folders and sessions.

  Run folders not started yet are listed under ``not_started``; a run cut
  short shows how many of its attacks are done (``complete`` false);
  ``earlier`` names the models shown from earlier sessions' run folders
  only (no weights this session).
  """
  # Shown by model, then mode and pixels.
  order = sorted(plan, key=lambda s: (list(models).index(s[0]), s[1], s[2]))
  started = [step for step in order if _started(args.out_dir, step)]
  entries = [
    summarize_run(run_dir(args.out_dir, *step), step[0]) for step in started
  ]
  saved = runs.RunStore.existing(run_dir(args.out_dir, *started[0])).images()
  sessions = read_sessions(args.out_dir)
  return dict(
    stamp=common.stamp(),
    settings=dict(
      images=args.images,
      seed=args.seed,
      popsize=args.popsize,
      maxiter=args.maxiter,
      mutation=MUTATION,
      crossover=None,
      pixels=args.pixels,
      targeted_pixels=args.targeted_pixels,
      targeted_images=targeted_images(args),
      out_dir=_shown(args.out_dir),
    ),
    not_the_protocol=_protocol_notes(args, list(models)),
    models=list(models),
    skipped=skipped,
    shown_from_earlier_sessions=list(earlier),
    class_names=[str(c) for c in saved["class_names"]],
    runs=entries,
    not_started=[
      f"{m} {'targeted' if t else 'non-targeted'} {p}-pixel"
      for m, t, p in plan
      if (m, t, p) not in started
    ],
    wall_time=dict(
      seconds=sum(s["seconds"] for s in sessions),
      sessions=len(sessions),
      attacks=sum((e["summary"] or {}).get("attacks", 0) for e in entries),
      evaluations=sum(e["evaluations"] for e in entries),
      this_session_seconds=sessions[-1]["seconds"],
      this_session_attacks=sessions[-1]["new_attacks"],
    ),
    paper=dict(
      source=PAPER["source"],
      v1_abstract=PAPER["v1_abstract"],
      success_rate=[
        dict(mode=mode, pixels=pixels, rates=rates)
        for (mode, pixels), rates in PAPER["success_rate"].items()
      ],
    ),
  )


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.targeted_images is not None and not (
    1 <= args.targeted_images <= args.images
  ):
    parser.error(
      f"--targeted-images: expected 1..{args.images} (--images), got "
      f"{args.targeted_images}"
    )
  models, skipped = _victims(args)
  if not models:
    print(
      "error: no model in --models has trained weights; nothing to run",
      file=sys.stderr,
    )
    return errors.EXIT_INPUT
  plan = make_plan(list(models), args.pixels, args.targeted_pixels)
  earlier = [
    m
    for m in skipped
    if any(
      _started(args.out_dir, step)
      for step in make_plan([m], args.pixels, args.targeted_pixels)
    )
  ]
  shown = {**models, **dict.fromkeys(earlier)}
  shown_plan = make_plan(list(shown), args.pixels, args.targeted_pixels)
  pathlib.Path(args.out_dir).mkdir(parents=True, exist_ok=True)
  # A kill by `timeout` or a scheduler, like Ctrl-C, still logs the session.
  signal.signal(signal.SIGTERM, _interrupt)
  status = 0
  try:
    run_plan(args, models, plan)
  except errors.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print(
      "interrupted: finished attacks are kept; rerun to resume. The "
      "table below is partial.",
      file=sys.stderr,
    )
    status = errors.EXIT_INTERRUPTED
  if any(_started(args.out_dir, step) for step in shown_plan):
    write_table(
      args,
      build_payload(
        args,
        shown,
        {m: why for m, why in skipped.items() if m not in earlier},
        shown_plan,
        earlier,
      ),
    )
  return status


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def write_table(args, payload):
  """Writes NAME.json, NAME.md and the figures; prints the table."""
  json_path = pathlib.Path(args.results_dir) / f"{args.name}.json"
  md_path = json_path.with_suffix(".md")
  json_path.parent.mkdir(parents=True, exist_ok=True)
  json_path.write_text(json.dumps(payload, indent=1) + "\n")
  md_path.write_text(markdown(payload))
  print(markdown(payload))
  for path in [json_path, md_path, *draw(payload, args.results_dir, args.name)]:
    print(f"wrote {path}")
  wall = payload["wall_time"]
  print(
    f"{wall['this_session_attacks']} new attacks this session, "
    f"{wall['this_session_seconds']:.0f} s."
  )


if __name__ == "__main__":
  # As the `pixeljax` program does: huge pages for malloc
  # (pixeljax.huge_pages), and YNNPACK off: XLA's CPU use of it makes the
  # attacks 2-3x slower on the CPUs measured (pixeljax.xla_options).
  restart_with_huge_pages()
  prefer_xla_cpu_convolutions()
  sys.exit(main())
