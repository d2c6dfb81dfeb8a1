"""Differential-evolution population operators, one image's population at a
time.

Pure functions without Python branches on traced values, meant to be
``vmap``-ed over images. A population is float32 [P, L]; fitness is float32
[P], lower is better.
"""

import jax
import jax.numpy as jnp


def _skip_excluded(value, excluded):
  """Maps ``value`` in [0, P - k) onto [0, P) minus the k sorted
  ``excluded``."""
  for index in range(excluded.shape[-1]):
    value = value + (value >= excluded[..., index])
  return value


def sample_donors(key, popsize: int):
  """Three distinct donors per member, none of them the member itself.

  Returns:
    int32 [P, 3]; row i holds r1, r2, r3, distinct and different from i, each
    uniform over what remains.
  """
  own = jnp.arange(popsize)
  draws = [
    jax.random.randint(k, (popsize,), 0, popsize - 1 - n)
    for n, k in enumerate(jax.random.split(key, 3))
  ]
  excluded = own[:, None]
  donors = []
  for draw in draws:
    donor = _skip_excluded(draw, jnp.sort(excluded, axis=-1))
    donors.append(donor)
    excluded = jnp.concatenate([excluded, donor[:, None]], axis=-1)
  return jnp.stack(donors, axis=-1).astype(jnp.int32)


def mutate_rand1(key, population, mutation):
  """DE/rand/1: ``x_r1 + F (x_r2 - x_r3)`` for every member; float32 [P, L]."""
  donors = sample_donors(key, population.shape[0])
  base, plus, minus = (population[donors[:, n]] for n in range(3))
  return base + mutation * (plus - minus)


def binomial_crossover(key, parent, mutant, crossover):
  """Takes each gene from the mutant with probability ``crossover``.

  One gene per member always comes from the mutant (j_rand), so no child is a
  copy of its parent. float32 [P, L] in, float32 [P, L] out.
  """
  key_mask, key_forced = jax.random.split(key)
  popsize, length = parent.shape
  take = jax.random.uniform(key_mask, (popsize, length)) < crossover
  forced = jax.random.randint(key_forced, (popsize,), 0, length)
  take = take | (jnp.arange(length)[None, :] == forced[:, None])
  return jnp.where(take, mutant, parent)


def select(population, fitness, children, child_fitness):
  """Greedy one-to-one selection: a child replaces its parent if strictly
  better.

  Returns:
    (population float32 [P, L], fitness float32 [P]).
  """
  better = child_fitness < fitness
  return (
    jnp.where(better[:, None], children, population),
    jnp.where(better, child_fitness, fitness),
  )
