"""The figures of a run: what their texts say, where they sit, what they
mask, and that `draw_run` redraws them from a run folder's saved results."""

import json

import numpy as np
from PIL import Image
import pytest

from pixeljax import plots
from pixeljax import runs

NAMES = ["airplane", "automobile", "bird", "cat"]


def record(image, label, *, pixels=1, target=None, success, adv_label):
  """A results.jsonl record, without the timing field (its name may
  change; the figures must not need it)."""
  return dict(
    image=image,
    label=label,
    target=target,
    pixels=pixels,
    success=success,
    adv_label=adv_label,
    adv_prob=0.625,
    true_prob=0.25,
    perturbation=[[1, 2, 255, 0, 0]] * pixels,
    queries=40,
    generations=1,
  )


def entry(label, adv_label, *, success, target=None):
  image = np.full((8, 8, 3), 40 * label, np.uint8)
  return dict(
    image=image,
    perturbation=[[1, 2, 255, 0, 0]],
    label=label,
    adv_label=adv_label,
    adv_prob=0.625,
    success=success,
    target=target,
  )


def texts(fig) -> list:
  """Every string drawn in ``fig``: titles, labels, ticks, legends, notes."""
  return [
    t.get_text()
    for t in fig.findobj(lambda a: hasattr(a, "get_text") and a.get_visible())
    if t.get_text()
  ]


def test_wilson_interval_known_values():
  # 8/10: (0.4902, 0.9433); 0/10 and 10/10 end exactly at 0 and 1.
  low, high = plots.wilson_interval([8, 0, 10], [10, 10, 10])
  np.testing.assert_allclose(low, [0.49016, 0.0, 0.72247], atol=1e-5)
  np.testing.assert_allclose(high, [0.94331, 0.27753, 1.0], atol=1e-5)
  with pytest.raises(ValueError, match="attempts"):
    plots.wilson_interval([1], [0])


def test_success_vs_pixels_shows_counts_and_wilson_bars():
  rows = [
    dict(pixels=1, attacks=10, successes=8),
    dict(pixels=3, attacks=10, successes=0),
  ]
  fig = plots._pixels_figure(rows, "m, non-targeted")
  ax = fig.axes[0]
  (_, _, (bars,)) = ax.containers[0].lines
  ends = np.array([(s[0][1], s[1][1]) for s in bars.get_segments()])
  np.testing.assert_allclose(
    ends, [[0.49016, 0.94331], [0.0, 0.27753]], atol=1e-5
  )
  assert "95% Wilson" in ax.get_ylabel()
  drawn = texts(fig)
  assert any("8/10" in t for t in drawn) and any("0/10" in t for t in drawn)


def test_heatmap_non_targeted_masks_the_diagonal_and_counts_rows():
  successes = np.array([[1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  # Non-targeted: every cell of a row holds that class's images attacked;
  # no image of class 3 was attacked.
  attempts = np.array([[4] * 4, [2] * 4, [1] * 4, [0] * 4])
  fig = plots._heatmap_figure(
    successes, attempts, NAMES, targeted=False, title="t"
  )
  ax = fig.axes[0]
  rate = ax.images[0].get_array()
  assert rate.mask.diagonal().all()  # even the (impossible) 1 at (0, 0)
  assert rate.mask[3].all() and not rate.mask[0, 1]
  assert rate[0, 1] == pytest.approx(0.5)
  assert [t.get_text() for t in ax.get_yticklabels()] == [
    "airplane (n=4)",
    "automobile (n=2)",
    "bird (n=1)",
    "cat (n=0)",
  ]
  cells = [t.get_text() for t in ax.texts]
  assert sorted(cells) == ["50%", "50%"]  # (0, 1) and (1, 2), not (0, 0)
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend[0] == "no attacks"
  assert "masked" in legend[1] and "non-targeted" in legend[1]
  hatched = [p for p in ax.patches if p.get_hatch()]
  assert sorted((p.get_x(), p.get_y()) for p in hatched) == [
    (i - 0.5, i - 0.5) for i in range(4)
  ]


def test_heatmap_targeted_counts_attacks_per_row():
  attempts = np.ones((4, 4), np.int64) - np.eye(4, dtype=np.int64)
  attempts[2] = 0
  successes = np.zeros((4, 4), np.int64)
  successes[0, 1] = 1
  fig = plots._heatmap_figure(
    successes, attempts, NAMES, targeted=True, title="t"
  )
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == [
    "airplane (n=3)",
    "automobile (n=3)",
    "bird (n=0)",
    "cat (n=3)",
  ]
  assert "n: attacks" in ax.get_ylabel()
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ["no attacks", "true class: never a target"]


def test_grid_titles_clear_the_images_for_any_number_of_rows():
  for count in (1, 4, 5, 9, 12, 20):
    entries = [
      entry(
        i % 4,
        (i + 1) % 4,
        success=i % 3 == 0,
        target=None if i % 2 else (i + 2) % 4,
      )
      for i in range(count)
    ]
    fig = plots._grid_figure(
      entries, NAMES, "model, 1-pixel attack\nsecond line"
    )
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    images = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    assert len(images) == count
    labels = [
      ax.title.get_window_extent(renderer) for ax in fig.axes if ax.images
    ] + [fig._suptitle.get_window_extent(renderer)]
    for i, text in enumerate(labels):
      for box in images:
        assert not text.overlaps(box), (count, i)
      for other in labels[i + 1 :]:
        assert not text.overlaps(other), (count, i)


def test_grid_labels_failed_attacks_as_best_tries():
  fig = plots._grid_figure(
    [
      entry(0, 1, success=True),
      entry(1, 1, success=False),
      entry(2, 3, success=False, target=0),
    ],
    NAMES,
    "t",
  )
  titles = [ax.get_title() for ax in fig.axes if ax.images]
  assert titles[0] == "airplane\n→ automobile (62%)"
  assert titles[1] == "automobile\nnot fooled; best try:\nautomobile (62%)"
  assert titles[2] == "bird → airplane\nnot reached; best try:\ncat (62%)"
  assert not any("adversarial" in t for t in texts(fig))


def test_example_texts_never_call_a_failure_adversarial():
  kwargs = dict(label=3, clean_prob=0.9, adv_prob=0.55, pixels=2)
  heading, captions = plots._example_texts(
    NAMES, adv_label=3, success=False, target=None, **kwargs
  )
  assert heading.startswith("not fooled")
  assert captions[1] == "best try: cat 55%"
  heading, captions = plots._example_texts(
    NAMES, adv_label=2, success=False, target=1, **kwargs
  )
  assert heading.startswith("target automobile not reached")
  assert not any("adversarial" in t for t in (heading, *captions))
  heading, captions = plots._example_texts(
    NAMES, adv_label=1, success=True, target=1, **kwargs
  )
  assert heading == "fooled: target automobile reached"
  assert captions[1] == "adversarial: automobile 55%"


def test_save_example_writes_the_strip(tmp_path):
  path = tmp_path / "deep" / "x.png"
  plots.save_example(
    path,
    np.zeros((8, 8, 3), np.uint8),
    [[1, 2, 9, 9, 9]],
    class_names=NAMES,
    label=0,
    clean_prob=0.9,
    adv_label=0,
    adv_prob=0.5,
    success=False,
  )
  with Image.open(path) as image:
    assert image.size == (3 * 64 + 40, 64 + 56)


def make_run(folder, *, targeted):
  """A run folder as `pixeljax attack` leaves it, 4 classes of 8x8 images,
  1 and 2 pixels, successes and failures."""
  folder.mkdir()
  index = np.array([10, 11, 12, 13, 14])
  labels = np.array([0, 1, 2, 0, 1])
  np.savez(
    folder / "images.npz",
    images=np.random.default_rng(0).integers(
      0, 256, (5, 8, 8, 3), dtype=np.uint8
    ),
    index=index,
    labels=labels,
    clean_prob=np.full(5, 0.8, np.float32),
    class_names=np.array(NAMES),
    looked=np.int64(5),
  )
  (folder / "run.json").write_text(
    json.dumps(dict(targeted=targeted, target=None, model=dict(name="toy")))
  )
  records = []
  for pixels in (1, 2):
    for n, (image, label) in enumerate(zip(index, labels)):
      aims = [t for t in range(4) if t != label] if targeted else [None]
      for target in aims:
        success = (n + pixels) % 3 == 0
        reached = target if target is not None else int(label + 1) % 4
        records.append(
          record(
            int(image),
            int(label),
            pixels=pixels,
            target=target,
            success=success,
            adv_label=reached if success else int(label),
          )
        )
  (folder / "results.jsonl").write_text(
    "".join(json.dumps(r) + "\n" for r in records)
  )


@pytest.mark.parametrize("targeted", [False, True])
def test_draw_run_redraws_every_figure(tmp_path, targeted):
  folder = tmp_path / "run"
  make_run(folder, targeted=targeted)
  written = plots.draw_run(folder)
  assert [p.name for p in written] == [
    "grid_1px.png",
    "class_pairs_1px.png",
    "grid_2px.png",
    "class_pairs_2px.png",
    "success_vs_pixels.png",
  ]
  for path in written:
    with Image.open(path) as image:
      assert image.format == "PNG"


def test_grid_entries_put_successes_first_then_failures(tmp_path):
  folder = tmp_path / "run"
  make_run(folder, targeted=False)
  store = runs.RunStore.existing(folder)
  group = [r for r in store.records() if r["pixels"] == 1]
  entries = plots.grid_entries(group, store.images())
  # Image 12 (class 2) succeeded; the failures follow, one per class first.
  assert [e["success"] for e in entries] == [True, False, False, False, False]
  assert [e["label"] for e in entries] == [2, 0, 1, 0, 1]
