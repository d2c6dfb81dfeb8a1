"""Pictures of attack results: per-image panels and the run's figures.

* ``save_example``: one attack as a PNG strip (original | adversarial, or
  the best failed try | changed pixels marked) with labels and confidences,
  drawn with Pillow (milliseconds per image, so every attack of a long run
  gets one).
* ``adversarial_grid``: adversarial images with their original and new
  labels, like Figure 1 of Su et al. (2019); failed attacks, shown when
  successes are too few to fill it, are labelled as the best failed try.
* ``class_pair_heatmap``: success by original class and reached (or target)
  class, with the attacks per row and a legend for the cells left blank.
* ``success_vs_pixels``: success rate against the number of pixels changed,
  with k/n and Wilson 95% intervals.
* ``wilson_interval``: that interval.
* ``robust_accuracy``: robust accuracy against the pixels changed, one
  curve per model and defence, with Wilson 95% bands (``pixeljax eval``).
* ``targets_reached``: how many target classes each image could be turned
  into, per model, like Figure 3 of Su et al. (2019).
* ``draw_run``: all figures of a run folder, from its saved results.

Figures use matplotlib's object API with the Agg canvas: no display needed.
Each figure is built by a private ``_..._figure`` function that returns it,
so that tests can read its texts and layout.
"""

import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.patches import Rectangle
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from pixeljax import metrics
from pixeljax import runs

_SCALE = 8  # screen pixels per image pixel in the per-image strips
_GRID_MAX = 12
_MARK = (0, 255, 0)
_FAILED = "firebrick"  # titles of failed attacks
_NO_ATTACKS = "0.85"  # heatmap cells of pairs never attacked
_Z95 = 1.959963984540054  # two-sided 95% normal quantile


def inject(image, perturbation):
  """``image`` (uint8 [H, W, C]) with each (x, y, colour...) row of
  ``perturbation`` (int [d, 2 + C]) written in: uint8 [H, W, C]."""
  out = np.array(image, np.uint8)
  for x, y, *colour in np.asarray(perturbation, np.int64):
    out[y, x] = colour
  return out


def _boxed(image, perturbation):
  """``image`` (uint8 [H, W, 3]) enlarged _SCALE times, each changed pixel
  of ``perturbation`` (int [d, 5]) boxed: a PIL image."""
  height, width = image.shape[:2]
  big = Image.fromarray(image).resize(
    (width * _SCALE, height * _SCALE), Image.NEAREST
  )
  draw = ImageDraw.Draw(big)
  for x, y, *_ in perturbation:
    draw.rectangle(
      (
        x * _SCALE - 3,
        y * _SCALE - 3,
        (x + 1) * _SCALE + 2,
        (y + 1) * _SCALE + 2,
      ),
      outline=_MARK,
      width=2,
    )
  return big


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one bitmap size only
    return ImageFont.load_default()


def _example_texts(
  class_names,
  *,
  label,
  clean_prob,
  adv_label,
  adv_prob,
  success,
  target,
  pixels,
) -> tuple:
  """The heading and the three panel captions of ``save_example``.

  A failed attack's middle panel is its best try, never called adversarial.
  """
  if target is None:
    heading = "fooled" if success else "not fooled"
  else:
    heading = (
      f"fooled: target {class_names[target]} reached"
      if success
      else f"target {class_names[target]} not reached"
    )
  if not success:
    heading += ": best failed try shown"
  middle = "adversarial" if success else "best try"
  return heading, (
    f"original: {class_names[label]} {clean_prob:.0%}",
    f"{middle}: {class_names[adv_label]} {adv_prob:.0%}",
    f"{pixels} pixel(s) changed",
  )


def save_example(
  path,
  original,
  perturbation,
  *,
  class_names,
  label,
  clean_prob,
  adv_label,
  adv_prob,
  success,
  target=None,
):
  """Writes one attack as a PNG strip.

  Args:
    path: the PNG to write.
    original: uint8 [H, W, 3], the clean image.
    perturbation: int [d, 5], the changed pixels as (x, y, r, g, b).
    class_names: K names.
    label: the true class; clean_prob its probability on ``original``.
    adv_label: the model's class on the perturbed image (the best try when
      the attack failed); adv_prob its probability.
    success: whether the attack succeeded.
    target: the target class of a targeted attack, else None.
  """
  adversarial = inject(original, perturbation)
  # Dim everything but the changed pixels, then box each of them.
  dimmed = (adversarial * 0.35 + 80).astype(np.uint8)
  for x, y, *_ in perturbation:
    dimmed[y, x] = adversarial[y, x]
  marked = _boxed(dimmed, perturbation)
  size = marked.size
  panels = [
    Image.fromarray(a).resize(size, Image.NEAREST)
    for a in (original, adversarial)
  ] + [marked]

  gap, top = 10, 46
  canvas = Image.new(
    "RGB", (3 * size[0] + 4 * gap, size[1] + top + gap), "white"
  )
  for i, panel in enumerate(panels):
    canvas.paste(panel, (gap + i * (size[0] + gap), top))
  draw = ImageDraw.Draw(canvas)
  font = _font(14)
  heading, captions = _example_texts(
    class_names,
    label=label,
    clean_prob=clean_prob,
    adv_label=adv_label,
    adv_prob=adv_prob,
    success=success,
    target=target,
    pixels=len(perturbation),
  )
  for i, text in enumerate(captions):
    draw.text(
      (gap + i * (size[0] + gap), top - 20), text, fill="black", font=font
    )
  draw.text((gap, 4), heading, fill="black" if success else _FAILED, font=font)
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  canvas.save(path)


def _figure(**kwargs) -> Figure:
  """A Figure on the Agg canvas, laid out by constrained layout (which keeps
  titles, labels and legends clear of the axes around them)."""
  fig = Figure(layout="constrained", **kwargs)
  FigureCanvasAgg(fig)
  return fig


def _grid_title(entry, class_names) -> str:
  """One grid cell's title: the classes before and after, or, for a failed
  attack, that it failed and what its best try reached."""
  true, adv = class_names[entry["label"]], class_names[entry["adv_label"]]
  reached = f"{adv} ({entry['adv_prob']:.0%})"
  if entry["success"]:
    return f"{true}\n→ {reached}"
  target = entry.get("target")
  if target is None:
    return f"{true}\nnot fooled; best try:\n{reached}"
  return f"{true} → {class_names[target]}\nnot reached; best try:\n{reached}"


def _grid_figure(entries, class_names, title) -> Figure:
  """The figure of ``adversarial_grid``."""
  columns = min(4, max(1, len(entries)))
  rows = max(1, -(-len(entries) // columns))
  titles = [_grid_title(entry, class_names) for entry in entries]
  lines = max([t.count("\n") + 1 for t in titles], default=1)
  # A 2.4-inch image under each title, the suptitle on top; constrained
  # layout keeps them apart, this only sizes the page to fit.
  fig = _figure(
    figsize=(
      2.4 * max(columns, 3),
      (2.35 + 0.2 * lines) * rows + 0.25 * (title.count("\n") + 2),
    )
  )
  axes = fig.subplots(rows, columns, squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for ax, entry, text in zip(axes.flat, entries, titles):
    ax.imshow(_boxed(entry["image"], entry["perturbation"]))
    ax.set_title(
      text, fontsize=10, color="black" if entry["success"] else _FAILED
    )
  if not entries:
    axes[0, 0].text(
      0.5,
      0.5,
      "no attacks",
      ha="center",
      va="center",
      transform=axes[0, 0].transAxes,
    )
  fig.suptitle(title, fontsize=11)
  return fig


def adversarial_grid(path, entries, class_names, title):
  """Adversarial images in a grid, like the paper's Figure 1.

  Args:
    path: the PNG to write.
    entries: dicts with ``image`` (uint8 [H, W, 3], the perturbed image),
      ``perturbation`` (int [d, 5]), ``label``, ``adv_label``, ``adv_prob``,
      ``success`` (a failed attack is titled as the best failed try, in red)
      and optionally ``target`` (None or absent: non-targeted).
    class_names: K names.
    title: the figure's title.
  """
  _grid_figure(entries, class_names, title).savefig(path, dpi=100)


def _row_counts(attempts, targeted):
  """Attacks per original class: int64 [K]. Non-targeted attempts repeat
  a row's image count in every column (see ``metrics.class_pairs``)."""
  return attempts.sum(axis=1) if targeted else attempts.max(axis=1)


def _heatmap_figure(
  successes, attempts, class_names, *, targeted, title
) -> Figure:
  """The figure of ``class_pair_heatmap``."""
  successes = np.asarray(successes, np.int64)
  attempts = np.asarray(attempts, np.int64)
  k = len(class_names)
  if successes.shape != (k, k) or attempts.shape != (k, k):
    raise ValueError(
      f"successes and attempts: expected shape ({k}, {k}) "
      f"for {k} class names, got {successes.shape} and "
      f"{attempts.shape}"
    )
  own = np.eye(k, dtype=bool)
  shown_rate = np.ma.masked_array(
    successes / np.maximum(attempts, 1), mask=(attempts == 0) | own
  )
  fig = _figure(figsize=(2.4 + 0.6 * k, 1.6 + 0.55 * k))
  ax = fig.subplots()
  ax.set_facecolor(_NO_ATTACKS)  # masked cells show the background
  shown = ax.imshow(shown_rate, vmin=0.0, vmax=1.0, cmap="viridis")
  for i in range(k):
    ax.add_patch(
      Rectangle(
        (i - 0.5, i - 0.5),
        1,
        1,
        facecolor="white",
        edgecolor="0.55",
        hatch="///",
        linewidth=0,
      )
    )
  for i, j in zip(*np.nonzero(~shown_rate.mask & (successes > 0))):
    rate = shown_rate[i, j]
    ax.text(
      j,
      i,
      f"{rate:.0%}",
      ha="center",
      va="center",
      fontsize=7,
      color="white" if rate < 0.6 else "black",
    )
  rows = _row_counts(attempts, targeted)
  ax.set_xticks(range(k), class_names, rotation=45, ha="right")
  ax.set_yticks(
    range(k), [f"{name} (n={n})" for name, n in zip(class_names, rows)]
  )
  ax.set_xlabel("target class" if targeted else "adversarial class")
  ax.set_ylabel(
    "original class (n: attacks)"
    if targeted
    else "original class (n: images attacked)"
  )
  fig.colorbar(
    shown,
    ax=ax,
    label="success rate" if targeted else "share of the row's images",
  )
  own_text = (
    "true class: never a target"
    if targeted
    else "true class: masked, a non-targeted attack cannot end there"
  )
  legend = [
    Patch(facecolor="white", edgecolor="0.55", hatch="///", label=own_text)
  ]
  if np.any((attempts == 0) & ~own):
    legend.insert(
      0, Patch(facecolor=_NO_ATTACKS, edgecolor="0.5", label="no attacks")
    )
  fig.legend(
    handles=legend, loc="outside lower center", fontsize=8, frameon=False
  )
  ax.set_title(title, fontsize=11)
  return fig


def class_pair_heatmap(
  path, successes, attempts, class_names, *, targeted, title
):
  """Success rate by (original class, reached or target class).

  Cells of pairs never attacked are grey and the diagonal (the true class)
  is hatched; a legend says so. Row labels give the attacks per row.

  Args:
    path: the PNG to write.
    successes, attempts: int [K, K] from ``metrics.class_pairs``.
    class_names: K names.
    targeted: whether columns are targets (else the classes reached).
    title: the figure's title.
  """
  _heatmap_figure(
    successes, attempts, class_names, targeted=targeted, title=title
  ).savefig(path, dpi=100)


def wilson_interval(successes, attempts, z=_Z95):
  """The Wilson score interval of a binomial proportion (95% by default).

  Args:
    successes: int [...] k; attempts: int [...] n, each at least 1.
    z: the normal quantile (1.96: 95%).

  Returns:
    (low, high): float64 [...] each, within [0, 1].
  """
  k = np.asarray(successes, np.float64)
  n = np.asarray(attempts, np.float64)
  if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
    raise ValueError(
      f"successes, attempts: expected 0 <= k <= n and n >= 1, "
      f"got k={k.tolist()}, n={n.tolist()}"
    )
  p = k / n
  scale = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / scale
  half = z / scale * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  # At k = 0 and k = n the bound is exactly 0 or 1; rounding can miss it.
  return (
    np.where(k == 0, 0.0, centre - half),
    np.where(k == n, 1.0, centre + half),
  )


def _pixels_figure(rows, title) -> Figure:
  """The figure of ``success_vs_pixels``."""
  rows = [r for r in rows if r["attacks"] > 0]
  pixels = np.array([r["pixels"] for r in rows])
  k = np.array([r["successes"] for r in rows], np.int64)
  n = np.array([r["attacks"] for r in rows], np.int64)
  rates = k / n
  fig = _figure(figsize=(4.8, 3.6))
  ax = fig.subplots()
  if rows:
    low, high = wilson_interval(k, n)
    ax.errorbar(
      pixels, rates, yerr=(rates - low, high - rates), marker="o", capsize=4
    )
  for x, y, ki, ni in zip(pixels, rates, k, n):
    ax.annotate(
      f"{y:.0%}\n{ki}/{ni}",
      (x, y),
      textcoords="offset points",
      xytext=(7, 0),
      ha="left",
      va="center",
      fontsize=8,
    )
  ax.set_xticks(pixels)
  ax.margins(x=0.2)
  ax.set_ylim(0, 1.05)
  ax.set_xlabel("pixels changed")
  ax.set_ylabel("success rate, 95% Wilson interval")
  ax.grid(alpha=0.3)
  ax.set_title(f"{title}\nlabels: rate, successes/attacks", fontsize=10)
  return fig


def success_vs_pixels(path, rows, title):
  """Success rate against pixels changed, each point with its successes
  out of its attacks (k/n) and a 95% Wilson interval.

  Args:
    path: the PNG to write.
    rows: dicts with ``pixels``, ``attacks`` and ``successes`` (as
      ``metrics.summarize`` gives them).
    title: the figure's title.
  """
  _pixels_figure(rows, title).savefig(path, dpi=100)


def _robust_figure(rows, title) -> Figure:
  """The figure of ``robust_accuracy``."""
  fig = _figure(figsize=(6.0, 4.0))
  ax = fig.subplots()
  for row in rows:
    accuracy = np.array(
      [np.nan if a is None else a for a in row["robust_accuracy"]]
    )
    k = np.arange(len(accuracy))
    label = f"{row['model']}, {row['defence']} (n={row['images']})"
    (line,) = ax.plot(k, accuracy, marker="o", markersize=4, label=label)
    if row["images"]:
      holding = np.round(accuracy * row["images"]).astype(np.int64)
      low, high = wilson_interval(holding, np.full_like(holding, row["images"]))
      ax.fill_between(k, low, high, color=line.get_color(), alpha=0.15)
  longest = max((len(r["robust_accuracy"]) for r in rows), default=1)
  ax.set_xticks(np.arange(longest))
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("pixels changed, at most k (0: clean accuracy)")
  ax.set_ylabel("robust accuracy, 95% Wilson band")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9, wrap=True)
  return fig


def robust_accuracy(path, rows, title):
  """Robust accuracy against k, one curve per model and defence.

  Args:
    path: the PNG to write.
    rows: dicts with ``model``, ``defence``, ``images`` and
      ``robust_accuracy`` (a list over k = 0..K, None where no images), as
      ``pixeljax eval``'s summary gives them.
    title: the figure's title.
  """
  _robust_figure(rows, title).savefig(path, dpi=100)


def targets_reached(path, histograms, title):
  """Images by the number of targeted attacks on them that succeeded.

  Args:
    path: the PNG to write.
    histograms: model name -> int [K] counts, entry c the images for which
      exactly c of their K - 1 targeted attacks succeeded.
    title: the figure's title.
  """
  fig = Figure(figsize=(6.0, 3.6))
  ax = fig.subplots()
  width = 0.8 / max(1, len(histograms))
  for i, (model, counts) in enumerate(histograms.items()):
    counts = np.asarray(counts, np.float64)
    share = counts / max(1.0, counts.sum())
    ax.bar(
      np.arange(len(counts)) + (i - (len(histograms) - 1) / 2) * width,
      share,
      width,
      label=f"{model} ({int(counts.sum())} images)",
    )
  if histograms:
    ax.set_xticks(range(len(next(iter(histograms.values())))))
  ax.set_xlabel("target classes reached")
  ax.set_ylabel("share of images")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _one_per_class_first(records) -> list:
  """``records`` reordered: the first of each original class, then the rest."""
  first, rest, seen = [], [], set()
  for r in records:
    (rest if r["label"] in seen else first).append(r)
    seen.add(r["label"])
  return first + rest


def grid_entries(records, images):
  """Up to 12 attacks for the grid: successes, one per original class
  first, then failed attacks in the same order to fill the grid."""
  position = {int(index): i for i, index in enumerate(images["index"])}
  chosen = (
    _one_per_class_first([r for r in records if r["success"]])
    + _one_per_class_first([r for r in records if not r["success"]])
  )[:_GRID_MAX]
  return [
    dict(
      image=inject(images["images"][position[r["image"]]], r["perturbation"]),
      perturbation=r["perturbation"],
      label=r["label"],
      adv_label=r["adv_label"],
      adv_prob=r["adv_prob"],
      success=bool(r["success"]),
      target=r["target"],
    )
    for r in chosen
  ]


def _pixel_rows(records) -> list:
  """Attacks and successes per pixel count, in increasing order (only the
  fields the figures need, so they do not depend on the timing fields)."""
  rows = []
  for pixels in sorted({r["pixels"] for r in records}):
    group = [r for r in records if r["pixels"] == pixels]
    rows.append(
      dict(
        pixels=pixels,
        attacks=len(group),
        successes=sum(bool(r["success"]) for r in group),
      )
    )
  return rows


def draw_run(directory) -> list:
  """Draws every figure of a run folder into its figures/ folder.

  Returns:
    The paths written (pathlib.Path), in drawing order.
  """
  store = runs.RunStore.existing(directory)
  settings = store.settings()
  records = store.records()
  images = store.images()
  class_names = [str(c) for c in images["class_names"]]
  targeted = settings["targeted"] or settings["target"] is not None
  out = store.directory / "figures"
  out.mkdir(exist_ok=True)
  mode = "targeted" if targeted else "non-targeted"
  model = settings["model"]["name"]
  written = []
  for row in _pixel_rows(records):
    pixels = row["pixels"]
    group = [r for r in records if r["pixels"] == pixels]
    entries = grid_entries(group, images)
    title = (
      f"{model}, {pixels}-pixel {mode} attack: {row['successes']} of "
      f"{row['attacks']} succeeded"
    )
    if not all(e["success"] for e in entries):
      title += "\nin red: failed attacks, their best try shown"
    written.append(out / f"grid_{pixels}px.png")
    adversarial_grid(written[-1], entries, class_names, title)
    successes, attempts = metrics.class_pairs(group, len(class_names))
    written.append(out / f"class_pairs_{pixels}px.png")
    class_pair_heatmap(
      written[-1],
      successes,
      attempts,
      class_names,
      targeted=targeted,
      title=f"{model}, {pixels}-pixel {mode}",
    )
  if records:
    written.append(out / "success_vs_pixels.png")
    success_vs_pixels(written[-1], _pixel_rows(records), f"{model}, {mode}")
  return written
