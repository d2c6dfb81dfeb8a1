"""Pictures of attack results: per-image panels and the run's figures.

* ``save_example``: one attack as a PNG strip (original | adversarial |
  changed pixels marked) with labels and confidences, drawn with Pillow
  (milliseconds per image, so every attack of a long run gets one).
* ``adversarial_grid``: successful adversarial images with their original
  and new labels, like Figure 1 of Su et al. (2019).
* ``class_pair_heatmap``: success by original class and reached (or target)
  class.
* ``success_vs_pixels``: success rate against the number of pixels changed.
* ``targets_reached``: how many target classes each image could be turned
  into, per model, like Figure 3 of Su et al. (2019).
* ``draw_run``: all figures of a run folder, from its saved results.

Figures use matplotlib's object API with the Agg canvas: no display needed.
"""

import pathlib

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from pixeljax import metrics
from pixeljax import runs

_SCALE = 8  # screen pixels per image pixel in the per-image strips
_GRID_MAX = 12
_MARK = (0, 255, 0)


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
  big = Image.fromarray(image).resize((width * _SCALE, height * _SCALE),
                                      Image.NEAREST)
  draw = ImageDraw.Draw(big)
  for x, y, *_ in perturbation:
    draw.rectangle((x * _SCALE - 3, y * _SCALE - 3, (x + 1) * _SCALE + 2,
                    (y + 1) * _SCALE + 2), outline=_MARK, width=2)
  return big


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one bitmap size only
    return ImageFont.load_default()


def save_example(path, original, perturbation, *, class_names, label,
                 clean_prob, adv_label, adv_prob, success, target=None):
  """Writes one attack as a PNG strip.

  Args:
    path: the PNG to write.
    original: uint8 [H, W, 3], the clean image.
    perturbation: int [d, 5], the changed pixels as (x, y, r, g, b).
    class_names: K names.
    label: the true class; clean_prob its probability on ``original``.
    adv_label: the model's class on the adversarial image; adv_prob its
      probability.
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
  panels = [Image.fromarray(a).resize(size, Image.NEAREST)
            for a in (original, adversarial)] + [marked]

  gap, top = 10, 46
  canvas = Image.new("RGB", (3 * size[0] + 4 * gap, size[1] + top + gap),
                     "white")
  for i, panel in enumerate(panels):
    canvas.paste(panel, (gap + i * (size[0] + gap), top))
  draw = ImageDraw.Draw(canvas)
  font = _font(14)
  aim = "" if target is None else f" (target {class_names[target]})"
  verdict = "fooled" if success else "not fooled"
  captions = (
      f"original: {class_names[label]} {clean_prob:.0%}",
      f"adversarial: {class_names[adv_label]} {adv_prob:.0%}",
      f"{len(perturbation)} pixel(s) changed",
  )
  for i, text in enumerate(captions):
    draw.text((gap + i * (size[0] + gap), top - 20), text, fill="black",
              font=font)
  draw.text((gap, 4), f"{verdict}{aim}", fill="black", font=font)
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  canvas.save(path)


def adversarial_grid(path, entries, class_names, title):
  """Successful adversarial images in a grid, like the paper's Figure 1.

  Args:
    path: the PNG to write.
    entries: up to 12 dicts with ``image`` (uint8 [H, W, 3], adversarial),
      ``perturbation`` (int [d, 5]), ``label``, ``adv_label``, ``adv_prob``.
    class_names: K names.
    title: the figure's title.
  """
  columns = min(4, max(1, len(entries)))
  rows = max(1, -(-len(entries) // columns))
  fig = Figure(figsize=(2.4 * max(columns, 3), 2.6 * rows + 0.5))
  axes = fig.subplots(rows, columns, squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for ax, entry in zip(axes.flat, entries):
    ax.imshow(_boxed(entry["image"], entry["perturbation"]))
    ax.set_title(f"{class_names[entry['label']]}\n"
                 f"→ {class_names[entry['adv_label']]} "
                 f"({entry['adv_prob']:.0%})", fontsize=10)
  if not entries:
    axes[0, 0].text(0.5, 0.5, "no successful attacks", ha="center",
                    va="center", transform=axes[0, 0].transAxes)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def class_pair_heatmap(path, successes, attempts, class_names, *, targeted,
                       title):
  """Success rate by (original class, reached or target class).

  Args:
    path: the PNG to write.
    successes, attempts: int [K, K] from ``metrics.class_pairs``.
    class_names: K names.
    targeted: whether columns are targets (else the classes reached).
    title: the figure's title.
  """
  with np.errstate(invalid="ignore", divide="ignore"):
    rate = np.where(attempts > 0, successes / np.maximum(attempts, 1), np.nan)
  k = len(class_names)
  fig = Figure(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k))
  ax = fig.subplots()
  ax.set_facecolor("0.9")  # pairs never attacked: NaN, left grey
  shown = ax.imshow(rate, vmin=0.0, vmax=1.0, cmap="viridis")
  for i in range(k):
    for j in range(k):
      if successes[i, j]:
        ax.text(j, i, f"{rate[i, j]:.0%}", ha="center", va="center",
                fontsize=7, color="white" if rate[i, j] < 0.6 else "black")
  ax.set_xticks(range(k), class_names, rotation=45, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("target class" if targeted else "adversarial class")
  ax.set_ylabel("original class")
  fig.colorbar(shown, ax=ax,
               label="success rate" if targeted else "share of class")
  ax.set_title(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def success_vs_pixels(path, rows, title):
  """Success rate against pixels changed, from ``metrics.summarize`` rows."""
  fig = Figure(figsize=(4.5, 3.4))
  ax = fig.subplots()
  pixels = [r["pixels"] for r in rows]
  rates = [r["success_rate"] for r in rows]
  ax.plot(pixels, rates, marker="o")
  for x, y in zip(pixels, rates):
    ax.annotate(f"{y:.0%}", (x, y), textcoords="offset points",
                xytext=(0, 6), ha="center", fontsize=9)
  ax.set_xticks(pixels)
  ax.set_ylim(0, 1.05)
  ax.set_xlabel("pixels changed")
  ax.set_ylabel("success rate")
  ax.grid(alpha=0.3)
  ax.set_title(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


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
    ax.bar(np.arange(len(counts)) + (i - (len(histograms) - 1) / 2) * width,
           share, width, label=f"{model} ({int(counts.sum())} images)")
  if histograms:
    ax.set_xticks(range(len(next(iter(histograms.values())))))
  ax.set_xlabel("target classes reached")
  ax.set_ylabel("share of images")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _grid_entries(records, images):
  """Up to 12 successes for the grid, one per original class first."""
  position = {int(index): i for i, index in enumerate(images["index"])}
  successes = [r for r in records if r["success"]]
  first, rest, seen = [], [], set()
  for r in successes:
    (rest if r["label"] in seen else first).append(r)
    seen.add(r["label"])
  chosen = (first + rest)[:_GRID_MAX]
  return [dict(image=inject(images["images"][position[r["image"]]],
                            r["perturbation"]),
               perturbation=r["perturbation"], label=r["label"],
               adv_label=r["adv_label"], adv_prob=r["adv_prob"])
          for r in chosen]


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
  for pixels in sorted({r["pixels"] for r in records}):
    group = [r for r in records if r["pixels"] == pixels]
    written.append(out / f"grid_{pixels}px.png")
    adversarial_grid(written[-1], _grid_entries(group, images), class_names,
                     f"{model}, {pixels}-pixel {mode} attack: successes")
    successes, attempts = metrics.class_pairs(group, len(class_names))
    written.append(out / f"class_pairs_{pixels}px.png")
    class_pair_heatmap(written[-1], successes, attempts, class_names,
                       targeted=targeted,
                       title=f"{model}, {pixels}-pixel {mode}")
  if records:
    written.append(out / "success_vs_pixels.png")
    success_vs_pixels(written[-1], metrics.summarize(records),
                      f"{model}, {mode}")
  return written
