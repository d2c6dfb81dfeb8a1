"""Unit tests of the DE population operators (pixeljax/attack/de.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixeljax.attack import de


@pytest.mark.parametrize("popsize", [4, 5, 17, 400])
def test_donors_are_three_distinct_others(popsize):
  for seed in range(20):
    donors = np.asarray(de.sample_donors(jax.random.key(seed), popsize))
    assert donors.shape == (popsize, 3) and donors.dtype == np.int32
    assert donors.min() >= 0 and donors.max() < popsize
    own = np.arange(popsize)[:, None]
    assert np.all(donors != own)
    assert np.all(donors[:, 0] != donors[:, 1])
    assert np.all(donors[:, 0] != donors[:, 2])
    assert np.all(donors[:, 1] != donors[:, 2])


def test_donors_are_uniform_over_the_others():
  """Member 0 of a population of 6 picks (r1, r2, r3) from the 5 others: each
  of the 60 ordered triples equally likely. 60,000 draws: each count is
  about 1,000 with a standard deviation of about 31."""
  keys = jax.random.split(jax.random.key(0), 60_000)
  donors = np.asarray(jax.vmap(lambda k: de.sample_donors(k, 6)[0])(keys))
  triples, counts = np.unique(donors, axis=0, return_counts=True)
  assert len(triples) == 60
  assert counts.min() > 850 and counts.max() < 1150


def test_mutation_is_base_plus_scaled_difference():
  key = jax.random.key(3)
  population = jax.random.normal(jax.random.key(4), (9, 5))
  child = de.mutate_rand1(key, population, 0.5)
  donors = de.sample_donors(key, 9)  # the same draw
  expected = population[donors[:, 0]] + 0.5 * (
    population[donors[:, 1]] - population[donors[:, 2]]
  )
  np.testing.assert_allclose(child, expected, rtol=1e-6)


def test_crossover_always_takes_one_gene_from_the_mutant():
  parent = jnp.zeros((50, 7))
  mutant = jnp.ones((50, 7))
  for seed in range(5):
    child = np.asarray(
      de.binomial_crossover(jax.random.key(seed), parent, mutant, 0.0)
    )
    # At rate 0 exactly the forced gene (j_rand) comes from the mutant.
    np.testing.assert_array_equal(child.sum(axis=1), 1.0)
  full = de.binomial_crossover(jax.random.key(0), parent, mutant, 1.0)
  np.testing.assert_array_equal(full, mutant)


def test_crossover_rate_sets_the_share_of_mutant_genes():
  parent, mutant = jnp.zeros((2000, 10)), jnp.ones((2000, 10))
  child = de.binomial_crossover(jax.random.key(1), parent, mutant, 0.3)
  # 0.3 of the genes, plus the forced one where the draw left it: about
  # 0.3 + 0.7 / 10 = 0.37.
  assert 0.35 < float(child.mean()) < 0.39
  assert child.dtype == parent.dtype and child.shape == parent.shape


def test_selection_is_strict_greedy():
  population = jnp.array([[0.0], [1.0], [2.0]])
  fitness = jnp.array([0.5, 0.5, 0.5])
  children = jnp.array([[10.0], [11.0], [12.0]])
  child_fitness = jnp.array([0.4, 0.5, jnp.inf])
  kept, kept_fitness = de.select(population, fitness, children, child_fitness)
  np.testing.assert_array_equal(kept[:, 0], [10.0, 1.0, 2.0])  # tie: parent
  np.testing.assert_array_equal(kept_fitness, child_fitness.at[1:].set(0.5))
