"""The paper's DE started from the corner scan's best candidates.

The one-pixel corner scan (``corner.scan``) runs first; an image it fools is
done. Otherwise DE starts from a population seeded by the scan instead of the
paper's random one: for d = 1 the ``popsize`` best corner candidates; for
d > 1, member 0 is the d best pixels at their best corners and every other
member d distinct pixels drawn from the ``top_pixels`` best with weight
``1 / (rank + 1)``, at their best corners. The generations are the paper's DE's
own (``evolution.DE``): DE/rand/1, optional crossover, greedy selection.
Queries count the scan, the seeds and the generations.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixeljax.attack import checks
from pixeljax.attack import corner
from pixeljax.attack import corner_search
from pixeljax.attack import defaults
from pixeljax.attack import driver
from pixeljax.attack import evolution
from pixeljax.attack.result import AttackResult


class SeededDE(NamedTuple):
  """DE whose round 0 scores seeds from the scan (static settings).

  Used as the second search of ``corner.AfterScan``; ``de`` is the paper's
  DE with ``seeded=True``.
  """

  de: evolution.DE
  top_pixels: int

  @property
  def round_sizes(self) -> tuple:
    return self.de.round_sizes

  @property
  def default_round(self) -> int:
    return self.de.default_round

  def init(self, problem, batch, params):
    return self.de.init(problem, batch, params)

  def from_scan(self, problem, batch, params, scan_state):
    """The seed population, starting from the scan's incumbent."""
    # Seeds take round 0's stream, which the paper's random start would use.
    seed_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(batch.keys, 0)
    seeds = jax.vmap(functools.partial(_seeds, self, batch.images.shape[1:]))(
      seed_keys, scan_state.table
    )
    state = self.de.init(problem, batch, params)
    return state._replace(
      incumbent=corner.scan_start(
        scan_state, batch, self.de.pixels, problem.early_stop
      ),
      population=seeds,
    )

  def step(self, problem, batch, params, state):
    return self.de.step(problem, batch, params, state)

  def generations(self, state):
    return self.de.generations(state)


def _seeds(config: "SeededDE", image_shape, key, table):
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


def plan(
  image_shape,
  *,
  pixels=defaults.PIXELS,
  popsize=defaults.POPSIZE,
  maxiter=defaults.MAXITER,
  mutation=defaults.MUTATION,
  crossover=defaults.CROSSOVER,
  top_pixels=None,
  early_stop=defaults.EARLY_STOP,
  block=None,
  batch_size=None,
  incremental=None,
) -> driver.Plan:
  """The seeded DE on images of ``image_shape`` (H, W, C), checked."""
  height, width, channels = image_shape
  pixels, popsize, params, use_crossover = evolution.check_de_options(
    image_shape,
    pixels=pixels,
    popsize=popsize,
    maxiter=maxiter,
    mutation=mutation,
    crossover=crossover,
  )
  if pixels == 1:  # one-pixel seeds are distinct scan candidates
    checks.check_int(
      "popsize",
      popsize,
      minimum=4,
      maximum=corner.scan_size(height, width, channels),
    )
  if top_pixels is None:
    top_pixels = max(pixels, min(height * width, defaults.TOP_PIXELS_CAP))
  top_pixels = checks.check_int(
    "top_pixels", top_pixels, minimum=pixels, maximum=height * width
  )
  block = corner.check_block(block, image_shape)
  de = evolution.DE(
    pixels=pixels, popsize=popsize, use_crossover=use_crossover, seeded=True
  )
  return driver.Plan(
    search=corner.AfterScan(
      scan=corner.Scan(block=block, keep_table=True),
      then=SeededDE(de=de, top_pixels=top_pixels),
    ),
    params=params,
    early_stop=checks.check_bool("early_stop", early_stop),
    batch_size=driver.check_batch_size(batch_size),
    budget=corner.scan_queries(image_shape, block)
    + popsize * (params.maxiter + 1),
    pixels=pixels,
    incremental=driver.check_incremental(incremental),
  )


def seeded_attack(
  predict,
  images,
  labels,
  *,
  key,
  pixels=defaults.PIXELS,
  targets=None,
  popsize=defaults.POPSIZE,
  maxiter=defaults.MAXITER,
  mutation=defaults.MUTATION,
  crossover=defaults.CROSSOVER,
  top_pixels=None,
  early_stop=defaults.EARLY_STOP,
  block=None,
  batch_size=None,
  image_ids=None,
  mesh=None,
  incremental=None,
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
    batch_size: candidate images per model call on each device; chosen when
      None.
    image_ids: int [N] ids seeding each image's stream; default 0..N-1.
    mesh: a ``jax.sharding.Mesh`` to shard the images over; None for every
      device (see ``batched_attack``).
    incremental: evaluate candidates incrementally (True), in full (False),
      or where it pays (None); see ``batched_attack``.

  Returns:
    An ``AttackResult``; ``queries`` counts the scan, the seeds and the
    generations; ``generations`` those run after the seeds.
  """
  images = checks.check_images(images)
  return driver.attack(
    plan(
      images.shape[1:],
      pixels=pixels,
      popsize=popsize,
      maxiter=maxiter,
      mutation=mutation,
      crossover=crossover,
      top_pixels=top_pixels,
      early_stop=early_stop,
      block=block,
      batch_size=batch_size,
      incremental=incremental,
    ),
    predict,
    images,
    labels,
    key=key,
    targets=targets,
    image_ids=image_ids,
    mesh=mesh,
  )
