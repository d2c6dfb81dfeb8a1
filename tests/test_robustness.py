"""L0 robustness: known answers on hand-made models, and the promises of
every result (a success fools the model on the returned image)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pixeljax
from pixeljax import defences
from pixeljax.attack import robustness
from tests.corner_models import two_white_pixels

RED_AT = (5, 2)  # (x, y)
SETTINGS = dict(queries_per_k=64, proposals=16)


def red_pixel(images):
  """Two classes; class 1 only when the pixel at RED_AT is pure red."""
  x, y = RED_AT
  pixel = images[:, y, x, :]
  red = (pixel[:, 0] > 200) & (pixel[:, 1] < 50) & (pixel[:, 2] < 50)
  switch = jnp.where(red, 1.0, -1.0)
  return jnp.stack([-switch, switch], axis=-1)


def unfoolable(images):
  return jnp.tile(jnp.array([[3.0, 0.0]]), (images.shape[0], 1))


def grey_images(count, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(60, 200, (count, size, size, 3), dtype=np.uint8)


def check_fooling(predict, images, result):
  """Each fooled image differs from the clean one in min_pixels pixels, and
  the model gets it wrong."""
  changed = np.any(result.adv_images != images, axis=-1).sum(axis=(1, 2))
  fooled = result.min_pixels > 0
  np.testing.assert_array_equal(changed[fooled], result.min_pixels[fooled])
  np.testing.assert_array_equal(changed[result.min_pixels == 0], 0)
  predicted = np.asarray(
    predict(jnp.asarray(result.adv_images, jnp.float32))
  ).argmax(-1)
  np.testing.assert_array_equal(predicted, result.adv_label)


def test_a_model_fooled_only_by_one_red_pixel_needs_one():
  images = grey_images(4)
  labels = np.array([0, 0, 0, 1])  # the last one is misclassified
  result = pixeljax.l0_robustness(
    red_pixel, images, labels, key=jax.random.key(0), max_pixels=3, **SETTINGS
  )
  np.testing.assert_array_equal(result.min_pixels, [1, 1, 1, 0])
  np.testing.assert_allclose(result.robust_accuracy, [0.75, 0, 0, 0])
  x, y = RED_AT
  np.testing.assert_array_equal(result.adv_images[:3, y, x], [[255, 0, 0]] * 3)
  np.testing.assert_array_equal(result.adv_label, [1, 1, 1, 0])
  np.testing.assert_array_equal(result.adv_images[3], images[3])
  assert result.queries[3] == 0 and np.all(result.queries[:3] > 0)
  np.testing.assert_array_equal(result.budget, [8 * 8 * 8, 64, 64])
  check_fooling(red_pixel, images, result)


def test_a_model_that_cannot_be_fooled_holds_everywhere():
  images = grey_images(3)
  result = pixeljax.l0_robustness(
    unfoolable,
    images,
    np.zeros(3, int),
    key=jax.random.key(0),
    max_pixels=4,
    **SETTINGS,
  )
  np.testing.assert_array_equal(result.min_pixels, [-1, -1, -1])
  np.testing.assert_array_equal(result.robust_accuracy, np.ones(5))
  # Every search ran to its end: the whole budget was spent.
  np.testing.assert_array_equal(result.queries, result.budget.sum())


def test_a_median_filter_in_front_of_the_red_pixel_holds_at_two():
  images = grey_images(3)
  defended = defences.median_filter(red_pixel, 3)
  result = pixeljax.l0_robustness(
    defended,
    images,
    np.zeros(3, int),
    key=jax.random.key(0),
    max_pixels=2,
    **SETTINGS,
  )
  np.testing.assert_array_equal(result.min_pixels, [-1, -1, -1])
  np.testing.assert_array_equal(result.robust_accuracy, [1, 1, 1])


def test_two_pixels_are_found_after_one_fails():
  images = np.full((2, 8, 8, 3), 40, np.uint8)
  predict = two_white_pixels()
  result = pixeljax.l0_robustness(
    predict, images, np.zeros(2, int), key=jax.random.key(1), max_pixels=4
  )
  np.testing.assert_array_equal(result.min_pixels, [2, 2])
  np.testing.assert_allclose(result.robust_accuracy, [1, 1, 0, 0, 0])
  check_fooling(predict, images, result)


def grey_near(images):
  """Two classes; class 1 only when a mid-grey pixel sits near RED_AT.

  Smooth in the position and the colour, so DE can climb to it; every
  corner colour (0 or 255 per channel) scores almost nothing.
  """
  x, y = RED_AT
  rows, cols = np.mgrid[:8, :8]
  near = jnp.asarray(np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / 8.0))
  greyness = jnp.exp(-jnp.sum(((images - 128.0) / 60.0) ** 2, axis=-1))
  score = jnp.sum(near * greyness, axis=(1, 2))
  return jnp.stack([jnp.zeros_like(score), 20.0 * (score - 0.5)], axis=-1)


def test_de_reaches_colours_the_corner_searches_cannot():
  rng = np.random.default_rng(3)
  images = (rng.integers(0, 2, (2, 8, 8, 3)) * 255).astype(np.uint8)
  labels = np.zeros(2, int)
  options = dict(key=jax.random.key(0), max_pixels=2, **SETTINGS)
  corners_only = pixeljax.l0_robustness(grey_near, images, labels, **options)
  np.testing.assert_array_equal(corners_only.min_pixels, [-1, -1])
  result = pixeljax.l0_robustness(
    grey_near, images, labels, de_popsize=40, de_maxiter=30, **options
  )
  np.testing.assert_array_equal(result.min_pixels, [1, 1])
  np.testing.assert_array_equal(result.budget, corners_only.budget + 40 * 31)
  assert np.all(result.queries > corners_only.queries)
  check_fooling(grey_near, images, result)


def test_streaming_gives_the_same_results():
  images = grey_images(5, seed=1)
  labels = np.array([0, 1, 0, 0, 1])
  whole = pixeljax.l0_robustness(
    red_pixel, images, labels, key=jax.random.key(2), max_pixels=2, **SETTINGS
  )
  seen = np.zeros(5, bool)
  for indices, part in pixeljax.stream_l0_robustness(
    red_pixel,
    images,
    labels,
    key=jax.random.key(2),
    slots=2,
    max_pixels=2,
    **SETTINGS,
  ):
    seen[indices] = True
    for field in ("min_pixels", "adv_images", "queries", "perturbation"):
      np.testing.assert_array_equal(
        getattr(part, field), getattr(whole, field)[indices]
      )
  assert seen.all()


def test_robust_accuracy_counts_images_not_fooled_with_k_or_fewer():
  np.testing.assert_allclose(
    robustness.robust_accuracy([0, 1, 3, -1], 3), [0.75, 0.5, 0.5, 0.25]
  )
  assert np.isnan(robustness.robust_accuracy([], 2)).all()


@pytest.mark.parametrize(
  "options,match",
  [
    (dict(max_pixels=0), "max_pixels"),
    (dict(queries_per_k=8, proposals=16), "queries_per_k"),
    (dict(max_pixels=5, top_pixels=4), "top_pixels"),
  ],
)
def test_bad_options_are_named(options, match):
  with pytest.raises(ValueError, match=match):
    pixeljax.l0_robustness(
      red_pixel, grey_images(1), [0], key=jax.random.key(0), **options
    )
