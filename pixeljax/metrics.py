"""Summaries of attack records: per-pixel-count tables and class-pair counts.

A record is one finished attack as written to results.jsonl: a dict with at
least ``pixels``, ``label``, ``target`` (None when non-targeted), ``success``,
``adv_label``, ``adv_prob``, ``queries`` and ``seconds_share`` (its share of
the wall time: the time since the engine's previous hand-back, split evenly
among the attacks it handed back; run folders of earlier versions call it
``seconds``).
"""

import math

import numpy as np

_COLUMNS = (
  ("pixels", "pixels", "{}"),
  ("attacks", "attacks", "{}"),
  ("success_rate", "success rate", "{:.1%}"),
  ("mean_confidence", "mean confidence (successes)", "{:.1%}"),
  ("mean_queries", "mean queries", "{:.0f}"),
  ("seconds", "wall time (s)", "{:.1f}"),
  ("attacks_per_second", "attacks/s", "{:.2f}"),
)


def summarize(records) -> list:
  """One summary row per pixel count, in increasing order.

  Returns a list of dicts: pixels, attacks (images, or image-target pairs
  when targeted), successes, success_rate, mean_confidence (mean ``adv_prob``
  of the successes; NaN when none), mean_queries, seconds (attack wall time,
  summed over resumed sessions) and attacks_per_second (attacks, not images:
  a targeted run attacks each image K - 1 times).
  """
  rows = []
  for pixels in sorted({r["pixels"] for r in records}):
    group = [r for r in records if r["pixels"] == pixels]
    success = np.array([r["success"] for r in group], bool)
    confidence = np.array([r["adv_prob"] for r in group], np.float64)[success]
    seconds = float(sum(_seconds_share(r) for r in group))
    rows.append(
      dict(
        pixels=pixels,
        attacks=len(group),
        successes=int(success.sum()),
        success_rate=float(success.mean()),
        mean_confidence=(
          float(confidence.mean()) if confidence.size else math.nan
        ),
        mean_queries=float(np.mean([r["queries"] for r in group])),
        seconds=seconds,
        attacks_per_second=(len(group) / seconds if seconds > 0 else math.nan),
      )
    )
  return rows


def _seconds_share(record) -> float:
  # Run folders written before the field's rename call it "seconds".
  return record.get("seconds_share", record.get("seconds", 0.0))


def _cells(row) -> list:
  return [
    "-"
    if isinstance(row[key], float) and math.isnan(row[key])
    else fmt.format(row[key])
    for key, _, fmt in _COLUMNS
  ]


def format_table(rows) -> str:
  """The summary rows as an aligned plain-text table."""
  header = [title for _, title, _ in _COLUMNS]
  body = [_cells(row) for row in rows]
  widths = [
    max(len(line[i]) for line in [header] + body) for i in range(len(header))
  ]
  lines = [
    "  ".join(cell.rjust(w) for cell, w in zip(line, widths))
    for line in [header] + body
  ]
  return "\n".join(lines) + "\n"


def format_markdown(rows) -> str:
  """The summary rows as a GitHub markdown table."""
  lines = [
    "| " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
    "|" + "|".join("---:" for _ in _COLUMNS) + "|",
  ]
  lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def class_pairs(records, num_classes: int):
  """Success counts by (original class, reached class).

  Non-targeted: ``successes[i, j]`` counts images of class i turned into
  class j, and ``attempts[i, j]`` is the number of class-i images attacked
  (the same for every j), so the ratio is the share of class i that went to j.
  Targeted: ``j`` is the target, and ``attempts[i, j]`` counts the attacks
  from i towards j.

  Returns:
    (successes, attempts): int64 [K, K] each.
  """
  successes = np.zeros((num_classes, num_classes), np.int64)
  attempts = np.zeros((num_classes, num_classes), np.int64)
  for r in records:
    if r["target"] is None:
      attempts[r["label"]] += 1
      if r["success"]:
        successes[r["label"], r["adv_label"]] += 1
    else:
      attempts[r["label"], r["target"]] += 1
      successes[r["label"], r["target"]] += bool(r["success"])
  return successes, attempts


def targets_reached(records, num_classes: int):
  """How many of its K - 1 targeted attacks succeeded, per image.

  ``records`` hold one pixel count (one run of targeted attacks). Only images
  whose every targeted attack is recorded count (a resumed run may hold some
  images in part); non-targeted records are ignored.

  Returns:
    (histogram int64 [K]: entry c the images that reached exactly c targets,
    incomplete: images left out because some of their attacks are missing).
  """
  attacked, reached = {}, {}
  for r in records:
    if r["target"] is not None:
      attacked[r["image"]] = attacked.get(r["image"], 0) + 1
      reached[r["image"]] = reached.get(r["image"], 0) + bool(r["success"])
  histogram = np.zeros(num_classes, np.int64)
  complete = [i for i, n in attacked.items() if n == num_classes - 1]
  for image in complete:
    histogram[reached[image]] += 1
  return histogram, len(attacked) - len(complete)
