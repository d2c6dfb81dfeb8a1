"""``batched_attack``: the paper's few-pixel DE as a search of the driver.

Round 0 scores the initial population (the paper's random one, or seeds put
in the population beforehand); rounds 1..maxiter are generations: DE/rand/1
mutation, optional binomial crossover, clipping, greedy selection. The
per-image population arithmetic is ``vmap``-ed; scoring and the round loop
stay at the top level (see ``driver`` and ``evaluate``).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixeljax.attack import checks
from pixeljax.attack import de
from pixeljax.attack import defaults
from pixeljax.attack import driver
from pixeljax.attack import incumbent as incumbent_lib
from pixeljax.attack import pixels as pixels_lib
from pixeljax.attack.result import AttackResult


class DEParams(NamedTuple):
  """The numeric settings of DE (traced: changing them does not recompile)."""

  maxiter: int
  mutation: float
  crossover: float  # 0.0 when crossover is off


class DEState(NamedTuple):
  """DE state, one row per image slot (N slots, P members, L genes).

  Attributes:
    incumbent: the shared ``Incumbent``.
    population: float32 [N, P, L].
    fitness: float32 [N, P]; +inf before the first round.
    rounds: int32 [N]; rounds run (the first scores the initial population).
  """

  incumbent: incumbent_lib.Incumbent
  population: jax.Array
  fitness: jax.Array
  rounds: jax.Array


class DE(NamedTuple):
  """The paper's DE (static settings; see ``search`` for the protocol).

  ``seeded``: round 0 scores the population it is given (``seeded_de``)
  instead of drawing the paper's random one.
  """

  pixels: int
  popsize: int
  use_crossover: bool
  seeded: bool = False

  @property
  def round_sizes(self) -> tuple:
    return (self.popsize,)

  @property
  def default_round(self) -> int:
    return self.popsize

  def init(self, problem, batch, params) -> DEState:
    del problem, params
    num_images, channels = batch.images.shape[0], batch.images.shape[-1]
    length = pixels_lib.candidate_length(self.pixels, channels)
    return DEState(
      incumbent=incumbent_lib.start(num_images, length, ~batch.valid),
      population=jnp.zeros((num_images, self.popsize, length), jnp.float32),
      fitness=jnp.full((num_images, self.popsize), jnp.inf, jnp.float32),
      rounds=jnp.zeros((num_images,), jnp.int32),
    )

  def _children(self, shape, image_key, rounds, population, params):
    """One image's candidates for this round: float32 [P, L]."""
    height, width, channels = shape
    key = jax.random.fold_in(image_key, rounds)
    key_init, key_mutate, key_cross = jax.random.split(key, 3)
    if self.seeded:
      start = population
    else:
      start = pixels_lib.sample_initial(
        key_init, self.popsize, self.pixels, height, width, channels
      )
    child = de.mutate_rand1(key_mutate, population, params.mutation)
    if self.use_crossover:
      child = de.binomial_crossover(
        key_cross, population, child, params.crossover
      )
    child = pixels_lib.clip_to_bounds(child, height, width, channels)
    return jnp.where(rounds == 0, start, child)

  def step(self, problem, batch, params, state: DEState) -> DEState:
    """Advances every unfinished image by one round (init or generation)."""
    active = ~state.incumbent.done
    children = jax.vmap(
      functools.partial(self._children, batch.images.shape[1:]),
      in_axes=(0, 0, 0, None),
    )(batch.keys, state.rounds, state.population, params)
    child_fitness, child_success = problem.score(batch, children, active)

    population, fitness = jax.vmap(de.select)(
      state.population, state.fitness, children, child_fitness
    )
    # Round 0 adopts the initial population whatever its fitness.
    first = state.rounds == 0
    population = jnp.where(first[:, None, None], children, population)
    fitness = jnp.where(first[:, None], child_fitness, fitness)

    incumbent, _ = incumbent_lib.update(
      state.incumbent, children, child_fitness, child_success, active
    )
    rounds = state.rounds + active
    incumbent = incumbent_lib.finish(
      incumbent, active, rounds > params.maxiter, problem.early_stop
    )
    keep = active[:, None]
    return DEState(
      incumbent=incumbent,
      population=jnp.where(keep[..., None], population, state.population),
      fitness=jnp.where(keep, fitness, state.fitness),
      rounds=rounds,
    )

  def generations(self, state: DEState):
    """DE generations run after the initial population: int32 [N]."""
    return jnp.maximum(state.rounds - 1, 0)


def check_de_options(
  image_shape, *, pixels, popsize, maxiter, mutation, crossover
):
  """The DE settings, checked: (pixels, popsize, DEParams, use_crossover)."""
  height, width, _ = image_shape
  pixels = checks.check_int("pixels", pixels, minimum=1, maximum=height * width)
  popsize = checks.check_int(
    "popsize", popsize, minimum=4, maximum=checks.INT32_MAX
  )
  maxiter = checks.check_int(
    "maxiter", maxiter, minimum=0, maximum=checks.INT32_MAX - 1
  )
  checks.check_int32_count(
    "popsize * (maxiter + 1), the evaluations of one image,",
    popsize * (maxiter + 1),
  )
  mutation = checks.check_float(
    "mutation", mutation, minimum=0.0, maximum=2.0, allow_minimum=False
  )
  if crossover is not None:
    crossover = checks.check_float(
      "crossover", crossover, minimum=0.0, maximum=1.0
    )
  params = DEParams(
    maxiter=maxiter,
    mutation=mutation,
    crossover=0.0 if crossover is None else crossover,
  )
  return pixels, popsize, params, crossover is not None


def plan(
  image_shape,
  *,
  pixels=defaults.PIXELS,
  popsize=defaults.POPSIZE,
  maxiter=defaults.MAXITER,
  mutation=defaults.MUTATION,
  crossover=defaults.CROSSOVER,
  early_stop=defaults.EARLY_STOP,
  batch_size=None,
  incremental=None,
) -> driver.Plan:
  """The paper's DE on images of ``image_shape`` (H, W, C), checked."""
  pixels, popsize, params, use_crossover = check_de_options(
    image_shape,
    pixels=pixels,
    popsize=popsize,
    maxiter=maxiter,
    mutation=mutation,
    crossover=crossover,
  )
  return driver.Plan(
    search=DE(pixels=pixels, popsize=popsize, use_crossover=use_crossover),
    params=params,
    early_stop=checks.check_bool("early_stop", early_stop),
    batch_size=driver.check_batch_size(batch_size),
    budget=popsize * (params.maxiter + 1),
    pixels=pixels,
    incremental=driver.check_incremental(incremental),
  )


def batched_attack(
  predict,
  images,
  labels,
  *,
  key,
  targets=None,
  pixels=defaults.PIXELS,
  popsize=defaults.POPSIZE,
  maxiter=defaults.MAXITER,
  mutation=defaults.MUTATION,
  crossover=defaults.CROSSOVER,
  early_stop=defaults.EARLY_STOP,
  batch_size=None,
  image_ids=None,
  mesh=None,
  incremental=None,
) -> AttackResult:
  """Attacks N images at once with the paper's few-pixel differential evolution.

  The image axis is sharded over ``mesh`` (by default every device JAX sees,
  on every host): each device runs the whole attack on its share, and an
  image's result does not depend on how many devices there are.

  Args:
    predict: pure jittable ``predict(images) -> logits``; images float32
      [B, H, W, C] holding raw pixel values 0..255, logits float [B, K].
      Compiled code is cached per ``predict`` object: pass the same function
      again to avoid recompiling.
    images: uint8 [N, H, W, C], or floats holding integers 0..255.
    labels: int [N] true classes.
    key: a JAX PRNG key.
    targets: int [N] target classes for a targeted attack; None for a
      non-targeted one.
    pixels: d, the number of pixels changed per image.
    popsize: DE population per image (at least 4).
    maxiter: at most this many generations after the initial population.
    mutation: the DE scale factor F.
    crossover: binomial crossover rate in [0, 1], or None for none (the paper).
    early_stop: stop each image as soon as it succeeds.
    batch_size: candidate images per model call on each device; chosen from
      the image size when None. Peak memory grows with it, results do not
      change with it.
    image_ids: int [N] ids that seed each image's random stream
      (``fold_in(key, id)``); defaults to 0..N-1. An image attacked with the
      same key and id gets the same result whatever else shares its batch.
    mesh: a ``jax.sharding.Mesh`` to shard the images over (all its axes);
      None for every device.
    incremental: score each candidate by recomputing only what its pixels
      change: the clean feature maps of the few images in a model call are
      computed once, and the traced ``predict`` is replayed per candidate on
      windows around the changed pixels through elementwise ops,
      convolutions and pooling, and in full from the first other op (a
      dense layer, global pooling). The logits equal the full pass's up to
      float rounding. True forces it, False turns it off, None (default)
      turns it on where it pays: on CPU, for attacks of at least 4,096
      evaluations per image, when it counts at least 1.25x fewer FLOPs per
      candidate at d pixels (see ``incremental_choice.resolve``).
      ``AttackResult.incremental`` says which path ran.

  Returns:
    An ``AttackResult`` of NumPy arrays, one entry per image. Images the
    model already gets wrong are attacked too: ``clean_success`` marks them,
    and ``success_rate`` leaves them out.
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
      early_stop=early_stop,
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
