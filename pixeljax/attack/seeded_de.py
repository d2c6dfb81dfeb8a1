"""The paper's DE started from the corner scan's best candidates.

The one-pixel corner scan (``corner.scan``) runs first; an image it fools is
done. Otherwise DE starts from a population seeded by the scan instead of the
paper's random one: for d = 1 the ``popsize`` best corner candidates; for
d > 1, member 0 is the d best pixels at their best corners and every other
member d distinct pixels drawn from the ``top_pixels`` best with weight
``1 / (rank + 1)``, at their best corners. The generations are the engine's
own (``engine.run_rounds``): DE/rand/1, optional crossover, greedy selection.
Queries count the scan, the seeds and the generations.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixeljax.attack import checks
from pixeljax.attack import corner
from pixeljax.attack import corner_search
from pixeljax.attack import criteria
from pixeljax.attack import engine
from pixeljax.attack import evaluate
from pixeljax.attack import inputs as inputs_lib
from pixeljax.attack import verify
from pixeljax.attack.result import AttackResult


class SeededConfig(NamedTuple):
  """Static settings of a seeded DE run (hashable)."""

  scan: corner.ScanConfig
  de: engine.DEConfig
  top_pixels: int


def _seeds(config: SeededConfig, image_shape, key, table):
  """One image's seed population, float32 [P, d * (2 + C)].

  Args:
    table: float32 [H * W * 2**C] the image's scan fitness.
  """
  channels = image_shape[-1]
  popsize, d, k = config.de.popsize, config.de.pixels, config.top_pixels
  if d == 1:
    _, index = jax.lax.top_k(-table, popsize)
    return corner.candidates_at(index, *image_shape)
  ranked, best_corner = corner_search.rank_pixels(table[None], channels, k)
  logits = -jnp.log1p(jnp.arange(k))
  _, slots = jax.lax.top_k(logits + jax.random.gumbel(key, (popsize, k)), d)
  slots = slots.at[0].set(jnp.arange(d))
  position = ranked[0, slots]
  one = corner.candidates_at(
    position * 2**channels + best_corner[0, slots], *image_shape
  )
  return one.reshape(popsize, -1)


@functools.partial(jax.jit, static_argnames=("config",))
def _seeded_attack(
  config: SeededConfig,
  images,
  labels,
  targets,
  image_ids,
  key,
  maxiter,
  mutation,
  crossover,
):
  num_images = images.shape[0]
  found = corner.scan(config.scan, images, labels, targets)
  image_keys = engine.image_keys_for(key, image_ids)
  # Seeds take round 0's stream, which the paper's random start would use.
  seed_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(image_keys, 0)
  seeds = jax.vmap(functools.partial(_seeds, config, images.shape[1:]))(
    seed_keys, found.table
  )
  active = ~(found.best_success & config.scan.early_stop)
  fitness, success = evaluate.score_candidates(
    config.de.predict,
    images,
    labels,
    targets,
    seeds,
    active,
    config.de.batch_size,
  )
  top = corner.top_candidate(fitness, success)
  rows = jnp.arange(num_images)
  done = ~active | (maxiter == 0)
  if config.scan.early_stop:
    done = done | success[rows, top]
  state = engine.DEState(
    population=seeds,
    fitness=fitness,
    rounds=jnp.where(active, 1, 0).astype(jnp.int32),
    done=done,
    queries=active * config.de.popsize,
    best=seeds[rows, top],
    best_fitness=fitness[rows, top],
    best_success=success[rows, top],
  )
  state = engine.run_rounds(
    config.de,
    state,
    images,
    labels,
    targets,
    image_keys,
    maxiter,
    mutation,
    crossover,
  )
  # The scan's single pixel, written d times, is a d-pixel candidate.
  scan_best = jnp.tile(found.best, (1, config.de.pixels))
  use_de = active & criteria.prefer(
    state.best_success,
    state.best_fitness,
    found.best_success,
    found.best_fitness,
  )
  best = jnp.where(use_de[:, None], state.best, scan_best)
  fields = verify.finalize(config.de.predict, best, images, labels, targets)
  return (
    fields,
    found.queries + state.queries,
    jnp.maximum(state.rounds - 1, 0),
  )


def seeded_attack(
  predict,
  images,
  labels,
  *,
  key,
  pixels=1,
  targets=None,
  popsize=400,
  maxiter=100,
  mutation=0.5,
  crossover=None,
  top_pixels=None,
  early_stop=True,
  block=None,
  batch_size=None,
  image_ids=None,
) -> AttackResult:
  """The paper's DE, its population seeded by the one-pixel corner scan.

  Args:
    predict: pure jittable ``predict(images) -> logits``; images float32
      [B, H, W, C] holding raw pixel values 0..255, logits float [B, K].
    images: uint8 [N, H, W, C], or floats holding integers 0..255.
    labels: int [N] true classes.
    key: a JAX PRNG key; image i draws from ``fold_in(key, image_ids[i])``.
    pixels: d, the number of pixels changed per image.
    targets: int [N] target classes, or None for a non-targeted attack.
    popsize: DE population per image (at least 4; for d = 1 at most the
      scan's ``H * W * 2**C`` candidates).
    maxiter: at most this many generations after the seeds.
    mutation: the DE scale factor F.
    crossover: binomial crossover rate in [0, 1], or None for none.
    top_pixels: for d > 1, how many of the best pixels seeds draw from;
      default ``min(H * W, 128)``, at least ``pixels``.
    early_stop: stop each image as soon as it succeeds.
    block: scan candidates per image and round (see ``corner_attack``).
    batch_size: candidate images per model call; chosen when None.
    image_ids: int [N] ids seeding each image's stream; default 0..N-1.

  Returns:
    An ``AttackResult``; ``queries`` counts the scan, the seeds and the
    generations; ``generations`` those run after the seeds.
  """
  prepared = engine.prepare(
    predict,
    images,
    labels,
    key=key,
    targets=targets,
    pixels=pixels,
    popsize=popsize,
    maxiter=maxiter,
    mutation=mutation,
    crossover=crossover,
    early_stop=early_stop,
    batch_size=batch_size,
    image_ids=image_ids,
  )
  de_config = prepared.config
  height, width, channels = prepared.images.shape[1:]
  if de_config.pixels == 1:  # one-pixel seeds are distinct scan candidates
    checks.check_int(
      "popsize",
      de_config.popsize,
      minimum=4,
      maximum=corner.scan_size(height, width, channels),
    )
  if top_pixels is None:
    top_pixels = max(de_config.pixels, min(height * width, 128))
  top_pixels = checks.check_int(
    "top_pixels", top_pixels, minimum=de_config.pixels, maximum=height * width
  )
  block = corner.check_block(block, prepared.images.shape[1:])
  checked = inputs_lib.check_inputs(
    predict,
    prepared.images,
    prepared.labels,
    de_config.goal(prepared.targets),
    prepared.image_ids,
    de_config.batch_size,
    (block, de_config.popsize),
  )
  config = SeededConfig(
    scan=corner.ScanConfig(
      predict=predict,
      block=block,
      early_stop=de_config.early_stop,
      batch_size=de_config.batch_size,
      keep_table=True,
    ),
    de=de_config,
    top_pixels=top_pixels,
  )
  fields, queries, generations = _seeded_attack(
    config,
    checked.images,
    checked.labels,
    checked.targets,
    checked.image_ids,
    prepared.key,
    prepared.maxiter,
    prepared.mutation,
    prepared.crossover,
  )
  return verify.to_result(fields, queries, generations)
