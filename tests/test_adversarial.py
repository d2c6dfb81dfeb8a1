"""One-pixel adversarial examples for training: the pixel the gradient
ranks best, at its corner colour, unless a forward pass finds a worse one."""

import jax.numpy as jnp
import numpy as np

from pixeljax.adversarial import one_pixel_examples

WEIGHT = np.zeros((4, 4, 3), np.float32)
WEIGHT[1, 2] = (1.0, -1.0, 1.0)  # the best pixel to first order
WEIGHT[3, 0] = (0.5, 0.0, 0.0)  # the second best


def linear_loss(images):
  return jnp.sum(images * WEIGHT, axis=(1, 2, 3)) / 255.0


def test_the_gradient_picks_the_pixel_and_its_corner():
  images = jnp.full((2, 4, 4, 3), 100.0)
  adv = np.asarray(one_pixel_examples(linear_loss, images, candidates=1))
  changed = np.any(adv != 100.0, axis=-1)
  assert changed.sum(axis=(1, 2)).tolist() == [1, 1]
  np.testing.assert_array_equal(adv[:, 1, 2], [[255, 0, 255]] * 2)


def test_the_forward_pass_keeps_the_try_that_hurts_most():
  def penalised(images):
    # Below first order: the best-ranked pixel, once changed, lowers the loss.
    return linear_loss(images) - 10.0 * (images[:, 1, 2, 0] > 200)

  images = jnp.full((1, 4, 4, 3), 100.0)
  one = np.asarray(one_pixel_examples(penalised, images, candidates=1))
  two = np.asarray(one_pixel_examples(penalised, images, candidates=2))
  assert one[0, 1, 2, 0] == 255
  assert two[0, 1, 2, 0] == 100 and two[0, 3, 0, 0] == 255
