"""The engine's success rate matches an independent NumPy DE at the same
budget."""

import jax
import numpy as np
import pytest

import pixeljax
from tests import reference_de
from tests import toy_models


@pytest.mark.parametrize("pixels", [1, 3])
def test_success_rate_matches_a_plain_numpy_de(pixels):
  predict, predict_numpy = toy_models.linear_model(8, 8, 3, 10, seed=pixels)
  rng = np.random.default_rng(pixels)
  count = 300
  images = rng.integers(0, 256, (count, 8, 8, 3)).astype(np.uint8)
  labels = predict_numpy(images.astype(np.float32)).argmax(-1)
  budget = dict(pixels=pixels, popsize=20, maxiter=10)
  engine = pixeljax.batched_attack(
    predict, images, labels, key=jax.random.key(0), **budget
  )
  reference = np.array(
    [
      reference_de.attack_one(
        predict_numpy,
        images[i],
        labels[i],
        np.random.default_rng(1000 + i),
        **budget,
      )
      for i in range(count)
    ]
  )
  # Both rates are binomial; the check is meaningful only away from 0 and 1.
  assert 0.15 < reference.mean() < 0.85
  pooled = (engine.success.mean() + reference.mean()) / 2
  standard_error = np.sqrt(2 * pooled * (1 - pooled) / count)
  assert abs(engine.success.mean() - reference.mean()) < 3.5 * standard_error
