"""Behaviour of the DE seeded by the one-pixel corner scan."""

import jax
import numpy as np
import pytest

from pixeljax.attack.seeded_de import seeded_attack
from tests import corner_models
from tests import toy_models


def test_seeded_de_starts_from_the_best_corners():
  """Seed member 0 is the two best pixels at their best corners: it
  succeeds, so the run costs the scan and one population."""
  predict = corner_models.two_white_pixels()
  images = np.full((2, 8, 8, 3), 120, np.uint8)
  labels = np.zeros(2, np.int64)
  result = seeded_attack(
    predict,
    images,
    labels,
    key=jax.random.key(2),
    pixels=2,
    popsize=12,
    maxiter=5,
  )
  assert result.success.all()
  np.testing.assert_array_equal(result.queries, [512 + 12] * 2)
  np.testing.assert_array_equal(result.generations, [0, 0])
  corner_models.assert_honest(predict, images, labels, result, pixels=2)


@pytest.mark.parametrize(
  "overrides,words",
  [
    (dict(popsize=200), "popsize must be at least 4 and at most 128"),
    (dict(pixels=2, top_pixels=1), "top_pixels must be at least 2"),
    (dict(mutation=0.0), "mutation must be in"),
  ],
)
def test_seeded_attack_names_bad_arguments(overrides, words):
  predict = toy_models.small_cnn(channels=3, num_classes=4)
  images = np.full((2, 4, 4, 3), 100, np.uint8)
  with pytest.raises(ValueError, match=words):
    seeded_attack(
      predict,
      images,
      np.array([0, 1]),
      key=jax.random.key(0),
      maxiter=1,
      **overrides,
    )
