"""Unit tests of the attack criteria (pixeljax/attack/criteria.py)."""

import jax.numpy as jnp
import numpy as np

from pixeljax.attack import criteria

PROBS = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [jnp.nan, 0.5, 0.5]])


def test_fitness_non_targeted_is_the_true_class_probability():
  fitness = criteria.fitness(PROBS, jnp.array([0, 2, 1]))
  np.testing.assert_allclose(fitness, [0.7, 0.6, 0.5])


def test_fitness_targeted_is_one_minus_the_target_probability():
  fitness = criteria.fitness(PROBS, jnp.array([0, 2, 1]), jnp.array([1, 1, 2]))
  np.testing.assert_allclose(fitness, [0.8, 0.7, 0.5])


def test_nan_fitness_is_infinite():
  labels = jnp.array([0, 0, 0])
  for targets in (None, jnp.array([1, 1, 0])):
    fitness = criteria.fitness(PROBS, labels, targets)
    assert np.isinf(fitness[2]) and fitness[2] > 0
    assert np.isfinite(fitness[:2]).all()


def test_success_non_targeted_and_targeted():
  predicted = jnp.array([2, 2, 1, 0])
  labels = jnp.array([0, 1, 1, 0])
  np.testing.assert_array_equal(
    criteria.is_success(predicted, labels), [True, True, False, False]
  )
  # Targeted: only the target counts; another wrong class (row 0) fails.
  np.testing.assert_array_equal(
    criteria.is_success(predicted, labels, jnp.array([1, 2, 2, 1])),
    [False, True, False, False],
  )


def test_prefer_success_first_then_lower_fitness():
  prefer = criteria.prefer
  # A success beats a failure whatever the fitness, and not the reverse.
  assert prefer(jnp.array(True), 0.9, jnp.array(False), 0.1)
  assert not prefer(jnp.array(False), 0.1, jnp.array(True), 0.9)
  # Among equals, the lower fitness wins; a tie is not preferred.
  assert prefer(jnp.array(False), 0.2, jnp.array(False), 0.3)
  assert prefer(jnp.array(True), 0.2, jnp.array(True), 0.3)
  assert not prefer(jnp.array(False), 0.3, jnp.array(False), 0.3)
  assert not prefer(jnp.array(False), jnp.inf, jnp.array(False), jnp.inf)
