"""L0 robustness of the shipped victims, alone and behind defences.

    PIXELJAX_DATA=../shared/data/cifar10-jpeg.tar.gz nice python -m \\
      benchmarks.robustness --weights runs/smallcnn-adv/smallcnn.json

runs `pixeljax eval` (resumable, in --out) on the first 100 test images of
the seed-0 shuffle, k = 1..10: every shipped model alone and behind each
--defence (--out/defences), and every --weights card (an adversarially
trained model, say) alone (--out/trained); then measures each row's clean
accuracy on the whole test split, to state what a defence costs. Writes
benchmarks/results/robustness_<platform>.json, .md and .png.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np

from pixeljax import data as data_lib
from pixeljax import defences
from pixeljax import plots
from pixeljax.attack import defaults
from pixeljax.cli import robustness as eval_lib
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.models import weights as weights_lib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
_ACCURACY_BATCH = 500


def test_accuracy(predict, test) -> float:
  """Share of the test split that ``predict`` gets right."""
  forward = jax.jit(predict)
  correct = 0
  for start in range(0, len(test.images), _ACCURACY_BATCH):
    batch = np.zeros((_ACCURACY_BATCH,) + test.images.shape[1:], np.float32)
    part = test.images[start : start + _ACCURACY_BATCH]
    batch[: len(part)] = part  # one shape: one compilation
    predicted = np.asarray(forward(batch)).argmax(-1)[: len(part)]
    correct += int(np.sum(predicted == test.labels[start : start + len(part)]))
  return correct / len(test.images)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--weights", action="append", default=[], metavar="CARD")
  p.add_argument("--defence", dest="defences", action="append", metavar="SPEC")
  p.add_argument("--images", type=int, default=100)
  p.add_argument("--max-pixels", type=int, default=defaults.L0_MAX_PIXELS)
  p.add_argument("--queries-per-k", type=int, default=defaults.L0_QUERIES_PER_K)
  p.add_argument("--data", help="CIFAR-10 source (default: PIXELJAX_DATA)")
  p.add_argument(
    "--out",
    default="pixeljax-runs/benchmark-robustness",
    help="the eval run folder (resumed when rerun)",
  )
  args = p.parse_args()
  specs = tuple(args.defences or ("none", "median:3"))
  common = dict(
    data=args.data,
    download=False,
    images=args.images,
    max_pixels=args.max_pixels,
    queries_per_k=args.queries_per_k,
    progress=False,
    figures=False,
  )
  evaluations = [
    eval_lib.EvalSettings(
      out=f"{args.out}/defences",
      models=weights_lib.shipped_models(),
      defences=specs,
      **common,
    )
  ]
  if args.weights:
    evaluations.append(
      eval_lib.EvalSettings(
        out=f"{args.out}/trained",
        weights=tuple(args.weights),
        defences=("none",),
        **common,
      )
    )
  resumed = sum(
    len((pathlib.Path(e.out) / "results.jsonl").read_text().splitlines())
    for e in evaluations
    if (pathlib.Path(e.out) / "results.jsonl").exists()
  )
  started = time.perf_counter()
  summary = [row for e in evaluations for row in eval_lib.run_eval(e)]
  seconds = time.perf_counter() - started

  test = data_lib.load_cifar10("test", source=args.data, download=False)
  victims = [v for e in evaluations for v in eval_lib.load_victims(e)]
  architecture = {name: v.identity["architecture"] for name, v in victims}
  full = {
    (name, spec): test_accuracy(defences.from_spec(victim.predict, spec), test)
    for e in evaluations
    for name, victim in eval_lib.load_victims(e)
    for spec in map(defences.canonical_spec, e.defences)
  }
  for row in summary:
    row["test_accuracy"] = full[(row["model"], row["defence"])]
    # A defence against the model alone; a trained card against the shipped
    # model of its architecture.
    baseline = (
      (architecture[row["model"]], "none")
      if row["defence"] == "none"
      else (row["model"], "none")
    )
    alone = full.get(baseline)
    row["accuracy_cost"] = (
      None if alone is None else round(alone - row["test_accuracy"], 4)
    )

  device = jax.devices()[0]
  command = (
    "python -m benchmarks.robustness "
    + " ".join(f"--weights {w}" for w in args.weights)
    + "".join(f" --defence {s}" for s in specs)
    + f" --images {args.images} --max-pixels {args.max_pixels} "
    f"--queries-per-k {args.queries_per_k}"
  )
  stamp = dict(
    date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    device=f"{device.platform}: {device.device_kind}",
    host_cores=os.cpu_count(),
    python=platform.python_version(),
    jax=jax.__version__,
    command=command,
    seconds=round(seconds, 1),
    resumed_evaluations=resumed,
    test_images=len(test.images),
  )
  RESULTS.mkdir(exist_ok=True)
  stem = RESULTS / f"robustness_{device.platform}"
  run_summary = json.loads(
    (pathlib.Path(evaluations[0].out) / "summary.json").read_text()
  )
  stem.with_suffix(".json").write_text(
    json.dumps(
      dict(**stamp, budget=run_summary["budget"], rows=summary), indent=1
    )
    + "\n"
  )
  plots.robust_accuracy(
    stem.with_suffix(".png"),
    summary,
    f"L0 robustness, {args.images} CIFAR-10 test images",
  )
  budget = run_summary["budget"]
  lines = [
    f"# L0 robustness ({stamp['device']}, {stamp['host_cores']} cores)",
    "",
    f"{stamp['date']}; jax {stamp['jax']}; `{command}`; "
    f"{seconds / 60:.0f} minutes"
    + (
      f" ({resumed} of the {sum(r['images'] for r in summary)} image "
      "evaluations were already in --out from an earlier invocation)."
      if resumed
      else "."
    ),
    "",
    f"Robust accuracy: the share of {args.images} CIFAR-10 test images (the "
    "first of the seed-0 shuffle, misclassified ones included) that no "
    "search fooled with k pixels or fewer; clean = k = 0. Budget per image: "
    f"the exhaustive one-pixel corner scan ({budget[0]:,} evaluations) at "
    f"k = 1, then {budget[1] if len(budget) > 1 else 0:,} evaluations of "
    "the corner search at each k from 2 on. The searches query the "
    "defended model (adaptive). They are incomplete: each number is an "
    "upper bound on the true robust accuracy.",
    "",
    eval_lib.format_markdown(summary, args.max_pixels).rstrip(),
    "",
    f"Clean accuracy on all {len(test.images):,} test images:",
    "",
    "| model | defence | test accuracy | clean accuracy lost |",
    "|---|---|---:|---:|",
  ]
  lines += [
    f"| {r['model']} | {r['defence']} | {100 * r['test_accuracy']:.2f}% | "
    + (
      "-"
      if r["accuracy_cost"] is None
      else f"{100 * r['accuracy_cost']:.2f} points"
    )
    + " |"
    for r in summary
  ]
  lines += [
    "",
    "Clean accuracy lost: against the model alone for a defence, against the "
    "shipped model of the same architecture for a trained card (negative: "
    "gained).",
    "",
    f"![robust accuracy against k]({stem.name}.png)",
  ]
  stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  restart_with_huge_pages()  # as the `pixeljax` program runs
  main()
