"""Test accuracy of the paper's victims against epoch and wall time, as they
trained on this repository's CPU.

    python -m benchmarks.training_curves

reads the per-epoch history that `pixeljax train` keeps (test accuracy after
each epoch, the epoch's wall seconds) from each victim's weights card, or
from its checkpoint while it still trains, in benchmarks/results/victims/
<model>/, and writes benchmarks/results/training_curves_cpu.{json,md,png}.
A run started from another run's card (`--init`) continues that run's
curve: its epochs and hours count on from where the other ended.
It measures nothing itself: the seconds are those the runs recorded, on a
machine that other jobs sometimes shared (an epoch that took much longer
than the run's median is marked).
"""

import argparse
import json
import pathlib
import statistics
import sys

from benchmarks.common import RESULTS_DIR
from benchmarks.common import markdown_table
from benchmarks.common import write_results

VICTIMS = ("allconv", "nin", "vgg16")
# Su et al. (2019), their victims' CIFAR-10 test accuracy.
PAPER_ACCURACY = dict(allconv=0.869, nin=0.874, vgg16=0.834)
TARGET_ACCURACY = 0.90
# An epoch this many times the run's median took is marked as shared.
SLOW_EPOCH = 1.3


def find_run(folder: pathlib.Path, model: str) -> pathlib.Path | None:
  """The run's card (<model>.json) once written, else its checkpoint."""
  for name in (f"{model}.json", "checkpoint.json"):
    if (folder / name).exists():
      return folder / name
  return None


def read_run(path: pathlib.Path) -> dict:
  """The history and state of one run, from its card or checkpoint."""
  meta = json.loads(path.read_text())
  is_card = "training" in meta
  training = meta["training"] if is_card else meta
  config = training["config"]
  return dict(
    source=f"{path.parent.name}/{path.name}",
    finished=is_card,
    epochs_planned=config["epochs"],
    history=training["history"],
    card_accuracy=meta.get("test_accuracy") if is_card else None,
    init=config.get("init"),
    model=config.get("model"),
  )


def _continuation(victims_dir: pathlib.Path, folder: str, model: str):
  """(folder, run) of the run started from the card in `folder`, or None."""
  for other in sorted(p for p in victims_dir.iterdir() if p.is_dir()):
    path = find_run(other, model)
    if path is None or other.name == folder:
      continue
    run = read_run(path)
    init = pathlib.Path(run["init"] or "")
    same_model = run["model"] in (None, model)
    if same_model and (init.parent.name, init.stem) == (folder, model):
      return other.name, run
  return None


def read_chain(victims_dir: pathlib.Path, model: str) -> dict | None:
  """The run in victims_dir/<model> and the runs that went on from it
  (--init), as one run: epochs numbered on, each tagged with its folder."""
  first = find_run(victims_dir / model, model)
  if first is None:
    return None
  parts = [(model, read_run(first))]
  while following := _continuation(victims_dir, parts[-1][0], model):
    if following[0] in {folder for folder, _ in parts}:  # a cycle
      break
    parts.append(following)
  history, done = [], 0
  for folder, run in parts:
    history += [
      dict(entry, epoch=done + entry["epoch"], run=folder)
      for entry in run["history"]
    ]
    done += len(run["history"])
  last = parts[-1][1]
  return dict(
    source=", then ".join(run["source"] for _, run in parts),
    finished=last["finished"],
    epochs_planned=done - len(last["history"]) + last["epochs_planned"],
    history=history,
    card_accuracy=last["card_accuracy"],
  )


def curve(run: dict) -> list[dict]:
  """Per epoch: test accuracy, the epoch's seconds, hours so far, and
  whether the epoch ran on a shared machine (slower than usual)."""
  seconds = [e["seconds"] for e in run["history"]]
  median = statistics.median(seconds)
  hours, rows = 0.0, []
  for entry in run["history"]:
    hours += entry["seconds"] / 3600
    rows.append(
      dict(
        epoch=entry["epoch"],
        run=entry.get("run", ""),
        test_acc=entry["test_acc"],
        seconds=entry["seconds"],
        hours=hours,
        shared=entry["seconds"] > SLOW_EPOCH * median,
      )
    )
  return rows


def summary_rows(runs: dict) -> list[list]:
  rows = []
  for model, run in runs.items():
    points = curve(run)
    best = max(points, key=lambda p: p["test_acc"])
    state = (
      "finished"
      if run["finished"]
      else f"training ({len(points)} of {run['epochs_planned']} epochs)"
    )
    shipped = run["card_accuracy"]
    rows.append(
      [
        model,
        state,
        len(points),
        f"{points[-1]['test_acc']:.2%}",
        f"{best['test_acc']:.2%} (epoch {best['epoch']})",
        "-" if shipped is None else f"{shipped:.2%}",
        f"{PAPER_ACCURACY[model]:.1%}",
        f"{points[-1]['hours']:.2f}",
        sum(p["shared"] for p in points),
      ]
    )
  return rows


def markdown(runs: dict, command: str) -> str:
  text = (
    "# The paper's victims trained on CPU: test accuracy against epoch and "
    "wall time\n\n"
    f"`{command}`: the histories `pixeljax train` recorded (test accuracy "
    "on the 10,000 test images after each epoch, in float32; a "
    "card's accuracy is that of the stored float16 network). Wall time is "
    "each epoch's as recorded, on the 2-core development CPU; epochs that "
    f"took over {SLOW_EPOCH}x the run's median ran beside other jobs "
    "(marked *). A run started from another's card (`--init`, column "
    "run) goes on with its epochs and hours.\n\n"
  )
  text += markdown_table(
    [
      "model",
      "state",
      "epochs",
      "last test acc",
      "best test acc",
      "last card",
      "paper",
      "hours",
      "shared epochs",
    ],
    summary_rows(runs),
  )
  for model, run in runs.items():
    text += f"\n\n## {model} ({run['source']})\n\n"
    text += markdown_table(
      ["epoch", "run", "test acc", "epoch s", "hours so far"],
      [
        [
          p["epoch"],
          p["run"],
          f"{p['test_acc']:.2%}",
          f"{p['seconds']:.0f}{' *' if p['shared'] else ''}",
          f"{p['hours']:.2f}",
        ]
        for p in curve(run)
      ],
    )
  return text + f"\n\nTarget: {TARGET_ACCURACY:.0%} (issue 25).\n"


def plot(runs: dict, path: pathlib.Path) -> None:
  """Test accuracy against epoch and against hours, one line per model."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for model, run in runs.items():
    points = curve(run)
    accuracy = [p["test_acc"] for p in points]
    axes[0].plot(
      [p["epoch"] for p in points], accuracy, marker=".", label=model
    )
    axes[1].plot(
      [p["hours"] for p in points], accuracy, marker=".", label=model
    )
  for ax, label in zip(axes, ("epoch", "wall hours (2-core CPU)")):
    ax.axhline(TARGET_ACCURACY, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy")
  axes[0].legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--victims-dir",
    type=pathlib.Path,
    default=pathlib.Path(RESULTS_DIR) / "victims",
    help="one folder per model, as `pixeljax train --out` writes them",
  )
  parser.add_argument("--out-dir", default=RESULTS_DIR)
  parser.add_argument("--name", default="training_curves_cpu")
  args = parser.parse_args(argv)
  runs = {}
  for model in VICTIMS:
    run = read_chain(args.victims_dir, model)
    if run is not None:
      runs[model] = run
  if not runs:
    print(f"error: no training run under {args.victims_dir}", file=sys.stderr)
    return 3
  command = "python -m benchmarks.training_curves"
  payload = dict(
    command=command,
    runs={m: dict(r, curve=curve(r)) for m, r in runs.items()},
    paper_accuracy=PAPER_ACCURACY,
    target_accuracy=TARGET_ACCURACY,
  )
  json_path, md_path = write_results(
    args.name, payload, markdown(runs, command), args.out_dir
  )
  plot(runs, pathlib.Path(args.out_dir) / f"{args.name}.png")
  print(f"wrote {json_path}, {md_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
