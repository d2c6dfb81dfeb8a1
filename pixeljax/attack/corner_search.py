"""Few-pixel corner search: rank pixels by the one-pixel scan, then combine.

In the manner of CornerSearch (Croce and Hein 2019), for d > 1 pixels:

1. The one-pixel corner scan (``corner.scan``) scores every pixel with every
   corner colour; an image fooled by one pixel is done (at most d changed).
2. Each pixel's score is its best corner's fitness; the ``top_pixels`` best
   pixels are ranked, and rank r is drawn with weight ``1 / (r + 1)``.
3. A local search over d-pixel combinations of ranked pixels: the incumbent
   starts as the d best pixels with their best corners; each round every
   unfinished image scores ``proposals`` candidates, each the incumbent with
   m of its pixels (m uniform in 1..d) swapped for new ranked pixels not
   already in it, mostly at their best corner, and keeps the best if it beats
   the incumbent (success first, then fitness).

With ``scan=False`` step 1 is skipped, in the manner of Sparse-RS (Croce et
al. 2022): the pixels are all H x W in a random order, drawn with equal
weight, and every corner is drawn at random; the search spends nothing up
front.

Queries count both phases. The whole search is one jit with top-level while
loops over rounds, scoring only unfinished images' candidates.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixeljax.attack import checks
from pixeljax.attack import corner
from pixeljax.attack import criteria
from pixeljax.attack import engine
from pixeljax.attack import evaluate
from pixeljax.attack import inputs as inputs_lib
from pixeljax.attack import verify
from pixeljax.attack.result import AttackResult

# Chance that a swapped-in pixel takes a random corner rather than its best:
# the best corner alone need not be the best in combination.
_RANDOM_CORNER = 0.2


class SearchConfig(NamedTuple):
  """Static settings of a corner search (hashable)."""

  scan: corner.ScanConfig
  use_scan: bool
  pixels: int
  top_pixels: int
  proposals: int
  rounds: int


class SearchState(NamedTuple):
  """Local-search state, one row per image (d pixels, K ranked pixels).

  Attributes:
    step: int32 scalar; rounds run.
    done: bool [N].
    queries: int32 [N]; evaluations of this phase.
    ranked: int32 [N, K] pixel positions ``y * W + x``, best first (in a
      random order without a scan).
    best_corner: int32 [N, K] each ranked pixel's best corner.
    slots: int32 [N, d] the incumbent's pixels, as ranks into ``ranked``.
    corners: int32 [N, d] the incumbent's corners.
    fitness: float32 [N]; the incumbent's (+inf before it is scored).
    success: bool [N].
  """

  step: jax.Array
  done: jax.Array
  queries: jax.Array
  ranked: jax.Array
  best_corner: jax.Array
  slots: jax.Array
  corners: jax.Array
  fitness: jax.Array
  success: jax.Array


def rank_pixels(table, channels: int, top_pixels: int):
  """The best pixels of a scan table and their best corners.

  Args:
    table: float32 [N, H * W * 2**C] fitness per scan index.
    channels: C.
    top_pixels: K.

  Returns:
    (ranked int32 [N, K] positions best first, best_corner int32 [N, K]).
  """
  per_pixel = table.reshape(table.shape[0], -1, 2**channels)
  score = jnp.min(per_pixel, axis=-1)
  _, ranked = jax.lax.top_k(-score, top_pixels)
  best = jnp.argmin(per_pixel, axis=-1)
  return ranked, jnp.take_along_axis(best, ranked, axis=1).astype(jnp.int32)


def _propose(
  config: SearchConfig, channels: int, key, slots, corners, best_corner
):
  """One image's proposals: (slots, corners), each int32 [P, d].

  Each proposal swaps m of the incumbent's d pixels (m uniform in 1..d) for
  distinct ranked pixels outside the incumbent.
  """
  num, d, k = config.proposals, config.pixels, config.top_pixels
  key_m, key_which, key_new, key_flip, key_corner = jax.random.split(key, 5)
  swaps = jax.random.randint(key_m, (num, 1), 1, d + 1)
  order = jnp.argsort(jax.random.uniform(key_which, (num, d)), axis=-1)
  swap = jnp.argsort(order, axis=-1) < swaps  # m random slots per proposal
  kept = jnp.any(
    (jnp.arange(k)[None, None, :] == slots[None, :, None]) & ~swap[:, :, None],
    axis=1,
  )  # [P, K]
  weight = -jnp.log1p(jnp.arange(k)) if config.use_scan else jnp.zeros(k)
  logits = jnp.where(kept, -jnp.inf, weight)
  gumbel = jax.random.gumbel(key_new, (num, k))
  _, fresh = jax.lax.top_k(logits + gumbel, d)  # distinct, rank-weighted
  # The j-th swapped slot takes the j-th fresh pixel.
  fresh = jnp.take_along_axis(fresh, jnp.cumsum(swap, axis=-1) - 1, axis=1)
  fresh_corner = jax.random.randint(key_corner, (num, d), 0, 2**channels)
  if config.use_scan:  # mostly the pixel's best corner
    fresh_corner = jnp.where(
      jax.random.uniform(key_flip, (num, d)) < _RANDOM_CORNER,
      fresh_corner,
      best_corner[fresh],
    )
  return (
    jnp.where(swap, fresh, slots[None]),
    jnp.where(swap, fresh_corner, corners[None]),
  )


def _random_order(num_pixels: int, channels: int, image_key):
  """One image's pixels in random order (int32 [H * W]) and random corners.

  Draws from ``fold_in(image_key, 2**32 - 1)``, a stream that the rounds
  (``fold_in(image_key, step)``, steps from 0 up) never reach.
  """
  key_order, key_corner = jax.random.split(
    jax.random.fold_in(image_key, 2**32 - 1)
  )
  return (
    jax.random.permutation(key_order, num_pixels).astype(jnp.int32),
    jax.random.randint(key_corner, (num_pixels,), 0, 2**channels),
  )


def _candidates(ranked, slots, corners, image_shape):
  """float32 [..., d * (2 + C)] candidates of ranks and corners [..., d]."""
  channels = image_shape[-1]
  position = jnp.take_along_axis(ranked, slots.reshape(-1), axis=0).reshape(
    slots.shape
  )
  one = corner.candidates_at(position * 2**channels + corners, *image_shape)
  return one.reshape(*slots.shape[:-1], -1)


def search_round(
  config: SearchConfig, state: SearchState, images, labels, targets, image_keys
) -> SearchState:
  """Scores every unfinished image's proposals and keeps improvements."""
  channels = images.shape[-1]
  active = ~state.done
  keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(image_keys, state.step)
  slots, corners = jax.vmap(functools.partial(_propose, config, channels))(
    keys, state.slots, state.corners, state.best_corner
  )
  # The first round also scores the incumbent itself (the d best pixels).
  first = state.step == 0
  slots = slots.at[:, 0].set(jnp.where(first, state.slots, slots[:, 0]))
  corners = corners.at[:, 0].set(jnp.where(first, state.corners, corners[:, 0]))
  candidates = jax.vmap(
    functools.partial(_candidates, image_shape=images.shape[1:])
  )(state.ranked, slots, corners)
  fitness, success = evaluate.score_candidates(
    config.scan.predict,
    images,
    labels,
    targets,
    candidates,
    active,
    config.scan.batch_size,
  )
  top = corner.top_candidate(fitness, success)
  rows = jnp.arange(images.shape[0])
  improve = active & criteria.prefer(
    success[rows, top], fitness[rows, top], state.success, state.fitness
  )
  new_success = jnp.where(improve, success[rows, top], state.success)
  finished = state.step + 1 >= config.rounds
  if config.scan.early_stop:
    finished = finished | new_success
  return state._replace(
    step=state.step + 1,
    done=state.done | (active & finished),
    queries=state.queries + active * config.proposals,
    slots=jnp.where(improve[:, None], slots[rows, top], state.slots),
    corners=jnp.where(improve[:, None], corners[rows, top], state.corners),
    fitness=jnp.where(improve, fitness[rows, top], state.fitness),
    success=new_success,
  )


@functools.partial(jax.jit, static_argnames=("config",))
def _corner_search(
  config: SearchConfig, images, labels, targets, image_ids, key
):
  num_images, height, width, channels = images.shape
  image_keys = engine.image_keys_for(key, image_ids)
  if config.use_scan:
    found = corner.scan(config.scan, images, labels, targets)
    ranked, best_corner = rank_pixels(found.table, channels, config.top_pixels)
  else:
    found = corner.initial_scan_state(
      config.scan._replace(keep_table=False), images.shape[1:], num_images
    )
    ranked, best_corner = jax.vmap(
      functools.partial(_random_order, height * width, channels)
    )(image_keys)
  d = config.pixels
  state = SearchState(
    step=jnp.zeros((), jnp.int32),
    done=(found.best_success & config.scan.early_stop) | (config.rounds == 0),
    queries=jnp.zeros((num_images,), jnp.int32),
    ranked=ranked,
    best_corner=best_corner,
    slots=jnp.broadcast_to(jnp.arange(d), (num_images, d)),
    corners=best_corner[:, :d],
    fitness=jnp.full((num_images,), jnp.inf, jnp.float32),
    success=jnp.zeros((num_images,), bool),
  )
  state = jax.lax.while_loop(
    lambda state: jnp.any(~state.done),
    lambda state: search_round(
      config, state, images, labels, targets, image_keys
    ),
    state,
  )
  # The scan's single pixel, written d times, is a d-pixel candidate.
  scan_best = jnp.tile(found.best, (1, d))
  search_best = jax.vmap(
    functools.partial(_candidates, image_shape=images.shape[1:])
  )(state.ranked, state.slots, state.corners)
  use_search = criteria.prefer(
    state.success, state.fitness, found.best_success, found.best_fitness
  )
  best = jnp.where(use_search[:, None], search_best, scan_best)
  fields = verify.finalize(config.scan.predict, best, images, labels, targets)
  return (
    fields,
    found.queries + state.queries,
    state.queries // config.proposals,
  )


def corner_search(
  predict,
  images,
  labels,
  *,
  key,
  pixels=3,
  targets=None,
  max_queries=10_000,
  scan=True,
  top_pixels=None,
  proposals=64,
  early_stop=True,
  block=None,
  batch_size=None,
  image_ids=None,
) -> AttackResult:
  """Few-pixel attack: a one-pixel corner scan, then combinations of its best.

  Args:
    predict: pure jittable ``predict(images) -> logits``; images float32
      [B, H, W, C] holding raw pixel values 0..255, logits float [B, K].
    images: uint8 [N, H, W, C], or floats holding integers 0..255.
    labels: int [N] true classes.
    key: a JAX PRNG key; image i draws from ``fold_in(key, image_ids[i])``.
    pixels: d, the most pixels changed per image.
    targets: int [N] target classes, or None for a non-targeted attack.
    max_queries: evaluations per image, scan included; at least the scan's
      ``H * W * 2**C`` (or ``proposals`` without a scan). What is left after
      the scan is spent in rounds of ``proposals``.
    scan: rank pixels by the one-pixel corner scan first; False draws every
      pixel with equal weight and every corner at random (Sparse-RS style).
    top_pixels: how many of the best-ranked pixels combinations draw from;
      default ``min(H * W, 128)``, at least ``pixels``; only with a scan.
    proposals: candidates per image and round of the combination search.
    early_stop: stop each image once it succeeds.
    block: scan candidates per image and round (see ``corner_attack``).
    batch_size: candidate images per model call; chosen when None.
    image_ids: int [N] ids seeding each image's stream; default 0..N-1.

  Returns:
    An ``AttackResult``; ``perturbation`` is int32 [N, d, 2 + C] (a pixel may
    repeat when fewer than d were needed), ``queries`` counts the scan and
    the combination search, ``generations`` the combination rounds run.
  """
  images = checks.check_images(images)
  num_images, height, width, channels = images.shape
  pixels = checks.check_int("pixels", pixels, minimum=1, maximum=height * width)
  if not isinstance(scan, bool):
    raise TypeError(f"scan must be a bool, got {scan!r}")
  proposals = checks.check_int("proposals", proposals, minimum=1)
  block = corner.check_block(block, images.shape[1:])
  total = corner.scan_size(height, width, channels)
  scan_queries = -(-total // block) * block if scan else 0
  max_queries = checks.check_int(
    "max_queries", max_queries, minimum=scan_queries if scan else proposals
  )
  if not scan and top_pixels is not None:
    raise ValueError(
      "top_pixels ranks pixels by the scan: leave it None "
      f"with scan=False, got {top_pixels!r}"
    )
  if top_pixels is None:
    top_pixels = (
      max(pixels, min(height * width, 128)) if scan else height * width
    )
  top_pixels = checks.check_int(
    "top_pixels", top_pixels, minimum=pixels, maximum=height * width
  )
  early_stop = checks.check_bool("early_stop", early_stop)
  if batch_size is None:
    batch_size = engine.default_batch_size(
      images.shape[1:], block if scan else proposals, num_images
    )
  batch_size = checks.check_int("batch_size", batch_size, minimum=1)
  key = checks.check_key(key)
  checked = inputs_lib.check_inputs(
    predict,
    images,
    labels,
    targets,
    image_ids,
    batch_size,
    (block, proposals) if scan else (proposals,),
  )
  config = SearchConfig(
    scan=corner.ScanConfig(
      predict=predict,
      block=block,
      early_stop=early_stop,
      batch_size=batch_size,
      keep_table=scan,
    ),
    use_scan=scan,
    pixels=pixels,
    top_pixels=top_pixels,
    proposals=proposals,
    rounds=max(0, (max_queries - scan_queries) // proposals),
  )
  fields, queries, rounds = _corner_search(
    config,
    checked.images,
    checked.labels,
    checked.targets,
    checked.image_ids,
    key,
  )
  return verify.to_result(fields, queries, rounds)
