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

Queries count both phases. ``LocalSearch`` is step 3 as a search of the
driver (see ``search``); with a scan it runs after ``corner.AfterScan``.
With ``first_pixels`` below ``pixels`` it grows: an image that its rounds
at m pixels do not fool starts again at m + 1 (``pixeljax.l0_robustness``).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixeljax.attack import checks
from pixeljax.attack import corner
from pixeljax.attack import criteria
from pixeljax.attack import defaults
from pixeljax.attack import driver
from pixeljax.attack import incumbent as incumbent_lib
from pixeljax.attack.result import AttackResult

# Chance that a swapped-in pixel takes a random corner rather than its best:
# the best corner alone need not be the best in combination.
_RANDOM_CORNER = 0.2


class LocalParams(NamedTuple):
  """The local search's rounds per image and pixel count (traced)."""

  rounds: int


class LocalState(NamedTuple):
  """Local-search state, one row per image (d pixels, K ranked pixels).

  Attributes:
    incumbent: the shared ``Incumbent``: the best candidate of the scan and
      of this search.
    steps: int32 [N]; rounds run.
    used: int32 [N]; pixels in use, m <= d: slots from m on repeat slot 0.
    stage_start: int32 [N]; the round at which m pixels began.
    ranked: int32 [N, K] pixel positions ``y * W + x``, best first (in a
      random order without a scan).
    best_corner: int32 [N, K] each ranked pixel's best corner.
    slots: int32 [N, d] this search's own incumbent's pixels, as ranks into
      ``ranked``; proposals change it.
    corners: int32 [N, d] its corners.
    fitness: float32 [N]; its fitness (+inf before it is scored).
    success: bool [N].
  """

  incumbent: incumbent_lib.Incumbent
  steps: jax.Array
  used: jax.Array
  stage_start: jax.Array
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
  config: "LocalSearch", channels: int, key, used, slots, corners, best_corner
):
  """One image's proposals: (slots, corners), each int32 [P, d].

  Each proposal swaps s of the incumbent's m = ``used`` pixels (s uniform in
  1..m) for distinct ranked pixels outside the incumbent; slots from m on
  stay as they are.
  """
  num, d, k = config.proposals, config.pixels, config.top_pixels
  key_m, key_which, key_new, key_flip, key_corner = jax.random.split(key, 5)
  in_use = jnp.arange(d) < used
  swaps = jax.random.randint(key_m, (num, 1), 1, used + 1)
  # Unused slots draw 2, above every uniform: they sort last, never swapped.
  draw = jnp.where(in_use, jax.random.uniform(key_which, (num, d)), 2.0)
  order = jnp.argsort(draw, axis=-1)
  swap = jnp.argsort(order, axis=-1) < swaps  # s random slots per proposal
  kept = jnp.any(
    (jnp.arange(k)[None, None, :] == slots[None, :, None])
    & (~swap & in_use)[:, :, None],
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


def _candidates(ranked, used, slots, corners, image_shape):
  """float32 [..., d * (2 + C)] candidates of ranks and corners [..., d];
  slots from ``used`` on repeat slot 0 (the same pixel written again)."""
  channels = image_shape[-1]
  in_use = jnp.arange(slots.shape[-1]) < used
  slots = jnp.where(in_use, slots, slots[..., :1])
  corners = jnp.where(in_use, corners, corners[..., :1])
  position = jnp.take_along_axis(ranked, slots.reshape(-1), axis=0).reshape(
    slots.shape
  )
  one = corner.candidates_at(position * 2**channels + corners, *image_shape)
  return one.reshape(*slots.shape[:-1], -1)


class LocalSearch(NamedTuple):
  """Step 3: d-pixel combinations of ranked pixels (static settings).

  ``use_scan``: the pixels come ranked by a scan (``from_scan``) and are
  drawn with weight ``1 / (rank + 1)``; otherwise ``init`` orders them at
  random and draws them with equal weight. ``first_pixels`` (None: d): the
  pixels each image starts with; one that ``params.rounds`` rounds leave
  unfooled goes on with one pixel more, up to d, starting again from the
  best-ranked pixels.
  """

  pixels: int
  top_pixels: int
  proposals: int
  use_scan: bool
  first_pixels: int | None = None

  @property
  def round_sizes(self) -> tuple:
    return (self.proposals,)

  @property
  def default_round(self) -> int:
    return self.proposals

  def _start(self, incumbent, ranked, best_corner, params):
    num_images = ranked.shape[0]
    d = self.pixels
    first = d if self.first_pixels is None else self.first_pixels
    return LocalState(
      incumbent=incumbent._replace(done=incumbent.done | (params.rounds == 0)),
      steps=jnp.zeros((num_images,), jnp.int32),
      used=jnp.full((num_images,), first, jnp.int32),
      stage_start=jnp.zeros((num_images,), jnp.int32),
      ranked=ranked,
      best_corner=best_corner,
      slots=jnp.broadcast_to(jnp.arange(d), (num_images, d)),
      corners=best_corner[:, :d],
      fitness=jnp.full((num_images,), jnp.inf, jnp.float32),
      success=jnp.zeros((num_images,), bool),
    )

  def init(self, problem, batch, params) -> LocalState:
    """Without a scan: pixels in a random order, every corner at random.

    With one, ``from_scan`` gives the ranking: until then, zeros.
    """
    del problem
    num_images, height, width, channels = batch.images.shape
    if self.use_scan:
      ranked = best_corner = jnp.zeros((num_images, self.top_pixels), jnp.int32)
    else:
      ranked, best_corner = jax.vmap(
        functools.partial(_random_order, height * width, channels)
      )(batch.keys)
    length = self.pixels * (2 + channels)
    return self._start(
      incumbent_lib.start(num_images, length, ~batch.valid),
      ranked,
      best_corner,
      params,
    )

  def from_scan(self, problem, batch, params, scan_state) -> LocalState:
    """Pixels ranked by the scan's table, starting from its incumbent."""
    ranked, best_corner = rank_pixels(
      scan_state.table, batch.images.shape[-1], self.top_pixels
    )
    return self._start(
      corner.scan_start(scan_state, batch, self.pixels, problem.early_stop),
      ranked,
      best_corner,
      params,
    )

  def step(self, problem, batch, params, state: LocalState) -> LocalState:
    """Scores every unfinished image's proposals and keeps improvements;
    moves an unfooled image whose rounds at m pixels are over to m + 1."""
    image_shape = batch.images.shape[1:]
    active = ~state.incumbent.done
    keys = jax.vmap(jax.random.fold_in)(batch.keys, state.steps)
    slots, corners = jax.vmap(
      functools.partial(_propose, self, image_shape[-1])
    )(keys, state.used, state.slots, state.corners, state.best_corner)
    # The first round at m pixels also scores the m best pixels themselves.
    first = state.steps == state.stage_start
    slots = slots.at[:, 0].set(
      jnp.where(first[:, None], state.slots, slots[:, 0])
    )
    corners = corners.at[:, 0].set(
      jnp.where(first[:, None], state.corners, corners[:, 0])
    )
    candidates = jax.vmap(
      functools.partial(_candidates, image_shape=image_shape)
    )(state.ranked, state.used, slots, corners)
    fitness, success = problem.score(batch, candidates, active)
    incumbent, top = incumbent_lib.update(
      state.incumbent, candidates, fitness, success, active
    )
    rows = jnp.arange(top.shape[0])
    improve = active & criteria.prefer(
      success[rows, top], fitness[rows, top], state.success, state.fitness
    )
    steps = state.steps + active
    stage_over = steps - state.stage_start >= params.rounds
    last_stage = (state.used >= self.pixels) | incumbent.success
    incumbent = incumbent_lib.finish(
      incumbent, active, stage_over & last_stage, problem.early_stop
    )
    state = state._replace(
      incumbent=incumbent,
      steps=steps,
      slots=jnp.where(improve[:, None], slots[rows, top], state.slots),
      corners=jnp.where(improve[:, None], corners[rows, top], state.corners),
      fitness=jnp.where(improve, fitness[rows, top], state.fitness),
      success=jnp.where(improve, success[rows, top], state.success),
    )
    grow = active & stage_over & ~last_stage
    return self._grow(state, grow) if self.first_pixels is not None else state

  def _grow(self, state: LocalState, grow) -> LocalState:
    """One pixel more where ``grow`` (bool [N]), from the best-ranked."""
    fresh = state._replace(
      used=state.used + 1,
      stage_start=state.steps,
      slots=jnp.broadcast_to(jnp.arange(self.pixels), state.slots.shape),
      corners=state.best_corner[:, : self.pixels],
      fitness=jnp.full_like(state.fitness, jnp.inf),
      success=jnp.zeros_like(state.success),
    )

    def pick(new, old):
      return jnp.where(grow.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

    return jax.tree.map(pick, fresh, state)

  def generations(self, state: LocalState):
    """Combination rounds run: int32 [N]."""
    return state.steps


def plan(
  image_shape,
  *,
  pixels=defaults.SEARCH_PIXELS,
  max_queries=defaults.MAX_QUERIES,
  scan=True,
  top_pixels=None,
  proposals=defaults.PROPOSALS,
  early_stop=defaults.EARLY_STOP,
  block=None,
  batch_size=None,
  incremental=None,
) -> driver.Plan:
  """The corner search on images of ``image_shape`` (H, W, C), checked."""
  height, width, _ = image_shape
  pixels = checks.check_int("pixels", pixels, minimum=1, maximum=height * width)
  if not isinstance(scan, bool):
    raise TypeError(f"scan must be a bool, got {scan!r}")
  proposals = checks.check_int("proposals", proposals, minimum=1)
  block = corner.check_block(block, image_shape)
  scan_queries = corner.scan_queries(image_shape, block) if scan else 0
  max_queries = checks.check_int(
    "max_queries",
    max_queries,
    minimum=scan_queries if scan else proposals,
    maximum=checks.INT32_MAX,
  )
  if not scan and top_pixels is not None:
    raise ValueError(
      "top_pixels ranks pixels by the scan: leave it None "
      f"with scan=False, got {top_pixels!r}"
    )
  if top_pixels is None:
    top_pixels = (
      max(pixels, min(height * width, defaults.TOP_PIXELS_CAP))
      if scan
      else height * width
    )
  top_pixels = checks.check_int(
    "top_pixels", top_pixels, minimum=pixels, maximum=height * width
  )
  rounds = (max_queries - scan_queries) // proposals
  search = LocalSearch(
    pixels=pixels, top_pixels=top_pixels, proposals=proposals, use_scan=scan
  )
  if scan:
    search = corner.AfterScan(
      scan=corner.Scan(block=block, keep_table=True), then=search
    )
  return driver.Plan(
    search=search,
    params=LocalParams(rounds=rounds),
    early_stop=checks.check_bool("early_stop", early_stop),
    batch_size=driver.check_batch_size(batch_size),
    budget=scan_queries + rounds * proposals,
    pixels=pixels,
    incremental=driver.check_incremental(incremental),
  )


def corner_search(
  predict,
  images,
  labels,
  *,
  key,
  pixels=defaults.SEARCH_PIXELS,
  targets=None,
  max_queries=defaults.MAX_QUERIES,
  scan=True,
  top_pixels=None,
  proposals=defaults.PROPOSALS,
  early_stop=defaults.EARLY_STOP,
  block=None,
  batch_size=None,
  image_ids=None,
  mesh=None,
  incremental=None,
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
    batch_size: candidate images per model call on each device; chosen when
      None.
    image_ids: int [N] ids seeding each image's stream; default 0..N-1.
    mesh: a ``jax.sharding.Mesh`` to shard the images over; None for every
      device (see ``batched_attack``).
    incremental: evaluate candidates incrementally (True), in full (False),
      or where it pays (None); see ``batched_attack``.

  Returns:
    An ``AttackResult``; ``perturbation`` is int32 [N, d, 2 + C] (a pixel may
    repeat when fewer than d were needed), ``queries`` counts the scan and
    the combination search, ``generations`` the combination rounds run.
  """
  images = checks.check_images(images)
  return driver.attack(
    plan(
      images.shape[1:],
      pixels=pixels,
      max_queries=max_queries,
      scan=scan,
      top_pixels=top_pixels,
      proposals=proposals,
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
