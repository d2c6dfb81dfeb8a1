"""The incumbent every search shares: each image's preferred candidate so far.

Whatever a search proposes, its rounds end the same way: the round's
preferred candidate of each image replaces the incumbent when it is
preferred (a success before a failure, then a lower fitness), the queries
grow by the round's candidates, and an image is done when its search is
exhausted or, with early stop, when it has succeeded.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixeljax.attack import criteria


class Incumbent(NamedTuple):
  """One row per image (N images, candidates of length L).

  Attributes:
    candidate: float32 [N, L]; the preferred candidate seen so far.
    fitness: float32 [N]; its fitness (+inf before any).
    success: bool [N]; whether it succeeded.
    queries: int32 [N]; candidates evaluated.
    done: bool [N]; the image needs no more rounds.
  """

  candidate: jax.Array
  fitness: jax.Array
  success: jax.Array
  queries: jax.Array
  done: jax.Array


def start(num_images: int, length: int, done) -> Incumbent:
  """No candidate yet; ``done`` (bool [N]) marks slots that need no search."""
  return Incumbent(
    candidate=jnp.zeros((num_images, length), jnp.float32),
    fitness=jnp.full((num_images,), jnp.inf, jnp.float32),
    success=jnp.zeros((num_images,), bool),
    queries=jnp.zeros((num_images,), jnp.int32),
    done=done,
  )


def top_candidate(fitness, success):
  """Index int32 [N] of each row's preferred candidate; the first on ties.

  Fitness lies in [0, 1] or is +inf, so ``fitness - 2 * success`` ranks
  successes first.
  """
  return jnp.argmin(fitness - 2.0 * success, axis=-1)


def update(incumbent: Incumbent, candidates, fitness, success, active):
  """Takes each active image's preferred candidate of a round if it is better.

  Args:
    incumbent: the state before the round.
    candidates: float32 [N, P, L] the round's candidates.
    fitness: float32 [N, P] their fitness (+inf where not evaluated).
    success: bool [N, P].
    active: bool [N]; the images that took part in the round.

  Returns:
    The incumbent after the round (``done`` unchanged), and the round's
    preferred candidate index int32 [N].
  """
  top = top_candidate(fitness, success)
  rows = jnp.arange(top.shape[0])
  top_fitness, top_success = fitness[rows, top], success[rows, top]
  improve = active & criteria.prefer(
    top_success, top_fitness, incumbent.success, incumbent.fitness
  )
  return incumbent._replace(
    candidate=jnp.where(
      improve[:, None], candidates[rows, top], incumbent.candidate
    ),
    fitness=jnp.where(improve, top_fitness, incumbent.fitness),
    success=jnp.where(improve, top_success, incumbent.success),
    queries=incumbent.queries + active * candidates.shape[1],
  ), top


def finish(incumbent: Incumbent, active, exhausted, early_stop: bool):
  """Marks done the active images whose search is ``exhausted`` (bool [N]),
  and with ``early_stop`` those that have succeeded."""
  finished = exhausted | incumbent.success if early_stop else exhausted
  return incumbent._replace(done=incumbent.done | (active & finished))
