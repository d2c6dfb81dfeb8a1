"""Helpers for the corner-search tests: a hand-made model with a known
two-pixel answer, and the promises every attack result must keep."""

import jax.numpy as jnp
import numpy as np


def assert_honest(predict, images, labels, result, pixels, targets=None):
  """At most d pixels changed, the perturbation says what the image holds,
  and every reported success fools the model on the returned image."""
  n, channels = len(images), images.shape[-1]
  assert result.adv_images.dtype == np.uint8
  assert result.perturbation.shape == (n, pixels, 2 + channels)
  changed = np.any(images != result.adv_images, axis=-1).sum(axis=(1, 2))
  assert np.all(changed <= pixels)
  for i in range(n):
    for x, y, *colour in result.perturbation[i]:
      np.testing.assert_array_equal(result.adv_images[i, y, x], colour)
  predicted = np.asarray(
    predict(jnp.asarray(result.adv_images, jnp.float32))
  ).argmax(-1)
  np.testing.assert_array_equal(predicted, result.adv_label)
  expected = predicted != labels if targets is None else predicted == targets
  np.testing.assert_array_equal(result.success, expected)


def two_white_pixels(first=(1, 6), second=(4, 3)):
  """Two classes; class 1 wins only when both pixels (x, y) are near white.

  One white pixel lowers the true-class probability but does not flip it,
  so the one-pixel scan ranks exactly these two pixels first.
  """

  def predict(images):
    bright = sum(
      images[:, y, x, :].mean(-1) / 255.0 for x, y in (first, second)
    )
    switch = 4.0 * bright - 6.0
    return jnp.stack([jnp.zeros_like(switch), switch], axis=-1)

  return predict
