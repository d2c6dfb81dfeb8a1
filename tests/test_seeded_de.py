"""Behaviour of the DE seeded by the one-pixel corner scan."""

import jax
import numpy as np

from pixeljax.attack.seeded_de import seeded_attack
from tests import corner_models


def test_seeded_de_starts_from_the_best_corners():
  """Seed member 0 is the two best pixels at their best corners: it
  succeeds, so the run costs the scan and one population."""
  predict = corner_models.two_white_pixels()
  images = np.full((2, 8, 8, 3), 120, np.uint8)
  labels = np.zeros(2, np.int64)
  result = seeded_attack(predict, images, labels, key=jax.random.key(2),
                         pixels=2, popsize=12, maxiter=5)
  assert result.success.all()
  np.testing.assert_array_equal(result.queries, [512 + 12] * 2)
  np.testing.assert_array_equal(result.generations, [0, 0])
  corner_models.assert_honest(predict, images, labels, result, pixels=2)
