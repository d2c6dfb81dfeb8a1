"""``batched_attack``: the paper's few-pixel DE on many images in one jit.

The whole attack (initial population, mutation, crossover, pixel injection,
the model's forward pass, selection and the final re-check) is one
``jax.jit``-compiled function. A ``lax.while_loop`` runs rounds over all
images until every image is done; per-image population arithmetic is
``vmap``-ed, while the loop over model chunks stays at the top level so that
finished images are skipped rather than masked (see ``evaluate``).
Round 0 scores the initial population; rounds 1..maxiter are generations.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax.attack import checks
from pixeljax.attack import criteria
from pixeljax.attack import de
from pixeljax.attack import evaluate
from pixeljax.attack import pixels as pixels_lib
from pixeljax.attack import sharding
from pixeljax.attack import verify
from pixeljax.attack.result import AttackResult

# Candidate images per model call when batch_size is None: about 16 MiB of
# float32 input per chunk, a power of two, at most 1024.
_DEFAULT_CHUNK_BYTES = 2**24


class DEState(NamedTuple):
  """Search state, one row per image slot (N slots, P members, L genes).

  Attributes:
    population: float32 [N, P, L].
    fitness: float32 [N, P]; +inf before the first round.
    rounds: int32 [N]; rounds run (the first is the initial population).
    done: bool [N].
    queries: int32 [N]; candidates evaluated.
    best: float32 [N, L]; the preferred candidate seen so far: a success
      before a failure, then the lower fitness.
    best_fitness: float32 [N].
    best_success: bool [N].
  """

  population: jax.Array
  fitness: jax.Array
  rounds: jax.Array
  done: jax.Array
  queries: jax.Array
  best: jax.Array
  best_fitness: jax.Array
  best_success: jax.Array


class DEConfig(NamedTuple):
  """Static settings of a DE run (hashable: part of the compiled function)."""

  predict: object
  pixels: int
  popsize: int
  early_stop: bool
  use_crossover: bool
  batch_size: int
  targeted: bool

  def goal(self, targets):
    """The targets the criteria take: None for a non-targeted attack."""
    return targets if self.targeted else None


def default_batch_size(image_shape, popsize: int, num_images: int) -> int:
  """Candidates per model call when the caller gives none.

  About 16 MiB of float32 input per chunk, at most 1024 candidates, and a
  multiple or a divisor of ``popsize``, so that chunks hold whole populations
  (or split them evenly) and little of the last chunk of a round is padding.
  """
  per_image = 4 * int(np.prod(image_shape))
  cap = max(1, min(_DEFAULT_CHUNK_BYTES // per_image, 1024))
  if cap >= popsize:
    return min(cap // popsize, num_images) * popsize
  return max(d for d in range(1, cap + 1) if popsize % d == 0)


def initial_state(
  num_images: int, popsize: int, length: int, done=None
) -> DEState:
  """A state whose every slot is about to score its initial population.

  ``done`` (bool [N]) marks slots that hold no image: they cost nothing.
  """
  return DEState(
    population=jnp.zeros((num_images, popsize, length), jnp.float32),
    fitness=jnp.full((num_images, popsize), jnp.inf, jnp.float32),
    rounds=jnp.zeros((num_images,), jnp.int32),
    done=(jnp.zeros((num_images,), bool) if done is None else done),
    queries=jnp.zeros((num_images,), jnp.int32),
    best=jnp.zeros((num_images, length), jnp.float32),
    best_fitness=jnp.full((num_images,), jnp.inf, jnp.float32),
    best_success=jnp.zeros((num_images,), bool),
  )


def _children(
  config, shape, image_key, rounds, population, mutation, crossover
):
  """One image's candidates for this round: float32 [P, L]."""
  height, width, channels = shape
  key = jax.random.fold_in(image_key, rounds)
  key_init, key_mutate, key_cross = jax.random.split(key, 3)
  start = pixels_lib.sample_initial(
    key_init, config.popsize, config.pixels, height, width, channels
  )
  child = de.mutate_rand1(key_mutate, population, mutation)
  if config.use_crossover:
    child = de.binomial_crossover(key_cross, population, child, crossover)
  child = pixels_lib.clip_to_bounds(child, height, width, channels)
  return jnp.where(rounds == 0, start, child)


def de_round(
  config: DEConfig,
  state: DEState,
  images,
  labels,
  targets,
  image_keys,
  maxiter,
  mutation,
  crossover,
) -> DEState:
  """Advances every unfinished image by one round (init or generation)."""
  shape = images.shape[1:]
  active = ~state.done
  children = jax.vmap(
    functools.partial(_children, config, shape), in_axes=(0, 0, 0, None, None)
  )(image_keys, state.rounds, state.population, mutation, crossover)
  child_fitness, child_success = evaluate.score_candidates(
    config.predict,
    images,
    labels,
    config.goal(targets),
    children,
    active,
    config.batch_size,
  )

  population, fitness = jax.vmap(de.select)(
    state.population, state.fitness, children, child_fitness
  )
  # Round 0 adopts the initial population whatever its fitness.
  first = state.rounds == 0
  population = jnp.where(first[:, None, None], children, population)
  fitness = jnp.where(first[:, None], child_fitness, fitness)

  # Each image's preferred child this round, against its incumbent.
  # Fitness lies in [0, 1] or is +inf, so "- 2 * success" ranks successes first.
  top = jnp.argmin(child_fitness - 2.0 * child_success, axis=-1)
  top_success = jnp.take_along_axis(child_success, top[:, None], 1)[:, 0]
  top_fitness = jnp.take_along_axis(child_fitness, top[:, None], 1)[:, 0]
  improve = active & criteria.prefer(
    top_success, top_fitness, state.best_success, state.best_fitness
  )
  rounds = state.rounds + active
  finished = rounds > maxiter
  best_success = jnp.where(improve, top_success, state.best_success)
  if config.early_stop:
    finished = finished | best_success
  keep = active[:, None]
  return DEState(
    population=jnp.where(keep[..., None], population, state.population),
    fitness=jnp.where(keep, fitness, state.fitness),
    rounds=rounds,
    done=state.done | (active & finished),
    queries=state.queries + active * config.popsize,
    best=jnp.where(
      improve[:, None], children[jnp.arange(len(top)), top], state.best
    ),
    best_fitness=jnp.where(improve, top_fitness, state.best_fitness),
    best_success=best_success,
  )


def run_rounds(
  config: DEConfig,
  state: DEState,
  images,
  labels,
  targets,
  image_keys,
  maxiter,
  mutation,
  crossover,
  max_rounds=None,
) -> DEState:
  """Runs rounds until every image is done (or ``max_rounds`` more rounds)."""
  limit = jnp.iinfo(jnp.int32).max if max_rounds is None else max_rounds

  def unfinished(carry):
    step, state = carry
    return jnp.any(~state.done) & (step < limit)

  def advance(carry):
    step, state = carry
    return step + 1, de_round(
      config,
      state,
      images,
      labels,
      targets,
      image_keys,
      maxiter,
      mutation,
      crossover,
    )

  _, state = jax.lax.while_loop(unfinished, advance, (0, state))
  return state


def finalize(config: DEConfig, state: DEState, images, labels, targets):
  """Decodes each image's chosen candidate and re-checks it on the model.

  Returns a dict of the ``AttackResult`` fields.
  """
  fields = verify.finalize(
    config.predict, state.best, images, labels, config.goal(targets)
  )
  return dict(
    fields, queries=state.queries, generations=jnp.maximum(state.rounds - 1, 0)
  )


def image_keys_for(key, image_ids):
  """Each image's key, ``fold_in(key, image_id)``: independent of its batch."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, image_ids)


def attack_shard(
  config: DEConfig,
  images,
  labels,
  targets,
  image_ids,
  valid,
  key,
  maxiter,
  mutation,
  crossover,
):
  """The whole attack on one device's images; ``valid`` False marks padding.

  Returns a dict of the ``AttackResult`` fields.
  """
  length = pixels_lib.candidate_length(config.pixels, images.shape[-1])
  state = initial_state(images.shape[0], config.popsize, length, done=~valid)
  state = run_rounds(
    config,
    state,
    images,
    labels,
    targets,
    image_keys_for(key, image_ids),
    maxiter,
    mutation,
    crossover,
  )
  return finalize(config, state, images, labels, targets)


def clean_logits_shard(predict, images):
  """Logits float32 [N, K] of one device's unperturbed uint8 images."""
  return evaluate.recheck_logits(predict, images)


class Prepared(NamedTuple):
  """Checked inputs of an attack, ready for the compiled code."""

  config: DEConfig
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]
  targets: np.ndarray  # int32 [N]; the labels again when non-targeted
  image_ids: np.ndarray  # int32 [N]
  key: jax.Array
  maxiter: int
  mutation: float
  crossover: float  # 0.0 when crossover is off


def prepare(
  predict,
  images,
  labels,
  *,
  key,
  targets,
  pixels,
  popsize,
  maxiter,
  mutation,
  crossover,
  early_stop,
  batch_size,
  image_ids,
  images_per_device: int | None = None,
) -> Prepared:
  """Checks every argument (see ``batched_attack``) before anything compiles."""
  images = checks.check_images(images)
  num_images, height, width, _ = images.shape
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
  checks.check_int32_count(
    "popsize * images per device, the candidates of one round,",
    popsize * (images_per_device or num_images),
  )
  mutation = checks.check_float(
    "mutation", mutation, minimum=0.0, maximum=2.0, allow_minimum=False
  )
  if crossover is not None:
    crossover = checks.check_float(
      "crossover", crossover, minimum=0.0, maximum=1.0
    )
  early_stop = checks.check_bool("early_stop", early_stop)
  if batch_size is None:
    batch_size = default_batch_size(
      images.shape[1:], popsize, images_per_device or num_images
    )
  batch_size = checks.check_int("batch_size", batch_size, minimum=1)
  key = checks.check_key(key)
  num_classes = checks.check_predict(
    predict, images.shape[1:], checks.model_batch_sizes(batch_size, (popsize,))
  )
  labels = checks.check_classes("labels", labels, num_images, num_classes)
  if targets is not None:
    targets = checks.check_targets(targets, labels, num_classes)
  config = DEConfig(
    predict=predict,
    pixels=pixels,
    popsize=popsize,
    early_stop=early_stop,
    use_crossover=crossover is not None,
    batch_size=batch_size,
    targeted=targets is not None,
  )
  return Prepared(
    config=config,
    images=images,
    labels=labels,
    targets=labels if targets is None else targets,
    image_ids=checks.check_image_ids(image_ids, num_images),
    key=key,
    maxiter=maxiter,
    mutation=mutation,
    crossover=0.0 if crossover is None else crossover,
  )


def batched_attack(
  predict,
  images,
  labels,
  *,
  key,
  targets=None,
  pixels=1,
  popsize=400,
  maxiter=100,
  mutation=0.5,
  crossover=None,
  early_stop=True,
  batch_size=None,
  image_ids=None,
  mesh=None,
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

  Returns:
    An ``AttackResult`` of NumPy arrays, one entry per image. Images the
    model already gets wrong are attacked too: ``clean_success`` marks them,
    and ``success_rate`` leaves them out.
  """
  mesh = sharding.default_mesh() if mesh is None else sharding.check_mesh(mesh)
  count = len(images) if hasattr(images, "__len__") else None
  prepared = prepare(
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
    images_per_device=count and -(-count // mesh.size),
  )
  config = prepared.config
  count = len(prepared.images)
  placed, valid = sharding.place(
    mesh, prepared.images, prepared.labels, prepared.targets, prepared.image_ids
  )
  clean = sharding.gather(
    sharding.run_sharded(
      mesh, clean_logits_shard, (config.predict,), placed[:1], ()
    )
  )
  checks.check_finite_logits(clean[:count])
  fields = sharding.run_sharded(
    mesh,
    attack_shard,
    (config,),
    (*placed, valid),
    (prepared.key, prepared.maxiter, prepared.mutation, prepared.crossover),
  )
  fields = sharding.gather(fields)
  return AttackResult(**{name: value[:count] for name, value in fields.items()})
