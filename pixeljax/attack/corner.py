"""Exhaustive one-pixel corner search: every pixel with every extreme colour.

A C-channel image has 2**C colour corners (each channel 0 or 255); trying
each of them at each of the H x W positions is ``H * W * 2**C`` model
evaluations, 8,192 for a 32x32 RGB image, a fifth of what the paper's DE may
spend. The candidates are enumerated in a fixed order: index
``k = (y * W + x) * 2**C + corner``, where bit ``C - 1 - j`` of ``corner``
says whether channel j is 255. A ``lax.while_loop`` at the top level scores
one block of consecutive indices per unfinished image and round (through
``evaluate.score_candidates``, so finished images cost nothing), and an image
stops at the end of the block holding its first success. An answer at index k
is therefore found after exactly ``ceil((k + 1) / block) * block``
evaluations.

``Scan`` is the search (see ``search`` for the protocol); ``AfterScan`` runs
it first and hands each image over to a second search as soon as its scan
ends: ``corner_search`` and ``seeded_de`` start from the scan's table of
every candidate's fitness.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pixeljax.attack import checks
from pixeljax.attack import defaults
from pixeljax.attack import driver
from pixeljax.attack import incumbent as incumbent_lib
from pixeljax.attack.result import AttackResult

# Default candidates per image and round: small enough that early stop wastes
# little (at most a block), large enough that the loop's overhead is slight.
_DEFAULT_BLOCK = 256


def scan_size(height: int, width: int, channels: int) -> int:
  """Number of one-pixel corner candidates: ``H * W * 2**C``."""
  return height * width * 2**channels


def default_block(height: int, width: int, channels: int) -> int:
  """The largest divisor of the scan size that is at most 256."""
  total = scan_size(height, width, channels)
  return max(
    b for b in range(1, min(total, _DEFAULT_BLOCK) + 1) if total % b == 0
  )


def corner_colours(corner, channels: int):
  """float32 [..., C] colours (0 or 255) of int [...] corner numbers."""
  shift = channels - 1 - jnp.arange(channels)
  return ((corner[..., None] >> shift) & 1).astype(jnp.float32) * 255.0


def candidates_at(index, height: int, width: int, channels: int):
  """float32 [..., 2 + C] candidate vectors of int [...] scan indices."""
  corners = 2**channels
  position = index // corners
  x = (position % width).astype(jnp.float32)
  y = (position // width).astype(jnp.float32)
  colour = corner_colours(index % corners, channels)
  return jnp.concatenate([x[..., None], y[..., None], colour], axis=-1)


class ScanState(NamedTuple):
  """Scan state, one row per image (N images, T candidates).

  Attributes:
    incumbent: the shared ``Incumbent`` (candidates of length 2 + C).
    rounds: int32 [N]; blocks scored.
    table: float32 [N, T] fitness of every scan index (+inf where not
      scored), or None when the scan does not keep it.
  """

  incumbent: incumbent_lib.Incumbent
  rounds: jax.Array
  table: jax.Array | None


class Scan(NamedTuple):
  """The corner scan (static settings; see ``search`` for the protocol).

  ``keep_table`` keeps every scored candidate's fitness (N x H x W x 2**C
  floats), for searches that rank pixels by it.
  """

  block: int
  keep_table: bool = False

  @property
  def round_sizes(self) -> tuple:
    return (self.block,)

  @property
  def default_round(self) -> int:
    return self.block

  def init(self, problem, batch, params) -> ScanState:
    del problem, params
    num_images, height, width, channels = batch.images.shape
    total = scan_size(height, width, channels)
    return ScanState(
      incumbent=incumbent_lib.start(num_images, 2 + channels, ~batch.valid),
      rounds=jnp.zeros((num_images,), jnp.int32),
      table=(
        jnp.full((num_images, total), jnp.inf, jnp.float32)
        if self.keep_table
        else None
      ),
    )

  def step(self, problem, batch, params, state: ScanState) -> ScanState:
    """Scores the next block of every unfinished image."""
    del params
    num_images, height, width, channels = batch.images.shape
    total = scan_size(height, width, channels)
    active = ~state.incumbent.done
    index = state.rounds[:, None] * self.block + jnp.arange(self.block)
    # A block that does not divide the scan repeats the last candidate.
    candidates = candidates_at(
      jnp.minimum(index, total - 1), height, width, channels
    )
    fitness, success = problem.score(batch, candidates, active)
    incumbent, _ = incumbent_lib.update(
      state.incumbent, candidates, fitness, success, active
    )
    rounds = state.rounds + active
    incumbent = incumbent_lib.finish(
      incumbent, active, rounds * self.block >= total, problem.early_stop
    )
    table = state.table
    if self.keep_table:
      # Inactive rows and past-the-end indices write out of range: dropped.
      rows = jnp.arange(num_images)
      index = jnp.where(active[:, None] & (index < total), index, total)
      table = table.at[rows[:, None], index].set(fitness, mode="drop")
    return ScanState(incumbent=incumbent, rounds=rounds, table=table)

  def generations(self, state: ScanState):
    """Blocks scored: int32 [N]."""
    return state.rounds


def tiled(incumbent: incumbent_lib.Incumbent, pixels: int):
  """The scan's one-pixel incumbent as a ``pixels``-pixel one (the pixel
  written ``pixels`` times)."""
  return incumbent._replace(
    candidate=jnp.tile(incumbent.candidate, (1, pixels))
  )


class ChainState(NamedTuple):
  """The state of an ``AfterScan``: the scan's and the second search's."""

  scan: ScanState
  then: object

  @property
  def incumbent(self) -> incumbent_lib.Incumbent:
    """The second search's incumbent where the scan is over, else the
    scan's."""
    handed_over = self.scan.incumbent.done
    then = self.then.incumbent
    pixels = then.candidate.shape[-1] // self.scan.incumbent.candidate.shape[-1]

    def pick(second, first):
      shape = (-1,) + (1,) * (second.ndim - 1)
      return jnp.where(handed_over.reshape(shape), second, first)

    return jax.tree.map(pick, then, tiled(self.scan.incumbent, pixels))


class AfterScan(NamedTuple):
  """The corner scan, then a second search from where each image's scan ends.

  ``then`` is a search with a ``from_scan(problem, batch, params,
  scan_state)`` method giving its state for every row from the scan's (the
  driver uses only the rows whose scan just ended); it starts from the
  scan's incumbent, so queries add up and the scan's best candidate stays
  the answer unless the second search finds a preferred one. ``params`` are
  the second search's.
  """

  scan: Scan
  then: object

  @property
  def round_sizes(self) -> tuple:
    return self.scan.round_sizes + self.then.round_sizes

  @property
  def default_round(self) -> int:
    return self.then.default_round

  def init(self, problem, batch, params) -> ChainState:
    nobody = batch._replace(valid=jnp.zeros_like(batch.valid))
    return ChainState(
      scan=self.scan.init(problem, batch, None),
      then=self.then.init(problem, nobody, params),
    )

  def step(self, problem, batch, params, state: ChainState) -> ChainState:
    """A scan round, a hand-over where a scan just ended, a second round."""
    scan_state = self.scan.step(problem, batch, None, state.scan)
    ended = scan_state.incumbent.done & ~state.scan.incumbent.done

    def hand_over():
      fresh = self.then.from_scan(problem, batch, params, scan_state)

      def pick(new, old):
        return jnp.where(ended.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

      return jax.tree.map(pick, fresh, state.then)

    then_state = jax.lax.cond(jnp.any(ended), hand_over, lambda: state.then)
    then_state = self.then.step(problem, batch, params, then_state)
    return ChainState(scan=scan_state, then=then_state)

  def generations(self, state: ChainState):
    """The second search's rounds: int32 [N]."""
    return self.then.generations(state.then)


def scan_start(scan_state: ScanState, batch, pixels: int, early_stop: bool):
  """A second search's incumbent from the scan's: the scan's best pixel
  (tiled to ``pixels``) and queries; done where the scan succeeded (with
  early stop) or the row holds no image."""
  incumbent = tiled(scan_state.incumbent, pixels)
  done = ~batch.valid
  if early_stop:
    done = done | incumbent.success
  return incumbent._replace(done=done)


def check_block(block, image_shape) -> int:
  """``block`` as an int, or the default for the image shape when None.

  Also checks that the scan's ``H * W * 2**C`` candidates can be indexed.
  """
  checks.check_int32_count(
    f"H * W * 2**C for images of shape {tuple(image_shape)}, the corner "
    "scan's candidates,",
    scan_size(*image_shape),
  )
  if block is None:
    return default_block(*image_shape)
  return checks.check_int(
    "block", block, minimum=1, maximum=scan_size(*image_shape)
  )


def scan_queries(image_shape, block: int) -> int:
  """Evaluations of a whole scan in blocks of ``block``."""
  return -(-scan_size(*image_shape) // block) * block


def plan(
  image_shape,
  *,
  early_stop=defaults.EARLY_STOP,
  block=None,
  batch_size=None,
  incremental=None,
) -> driver.Plan:
  """The corner scan on images of ``image_shape`` (H, W, C), checked."""
  block = check_block(block, image_shape)
  return driver.Plan(
    search=Scan(block=block),
    params=None,
    early_stop=checks.check_bool("early_stop", early_stop),
    batch_size=driver.check_batch_size(batch_size),
    budget=scan_queries(image_shape, block),
    pixels=1,
    incremental=driver.check_incremental(incremental),
    random=False,
  )


def corner_attack(
  predict,
  images,
  labels,
  *,
  targets=None,
  early_stop=defaults.EARLY_STOP,
  block=None,
  batch_size=None,
  mesh=None,
  incremental=None,
) -> AttackResult:
  """Tries every pixel with every corner colour of the RGB (or 2**C) cube.

  Deterministic: no key. Finds a one-pixel attack whenever one with an
  extreme colour exists, and reports the best candidate (lowest true-class
  probability, or highest target probability) when none does.

  Args:
    predict: pure jittable ``predict(images) -> logits``; images float32
      [B, H, W, C] holding raw pixel values 0..255, logits float [B, K].
    images: uint8 [N, H, W, C], or floats holding integers 0..255.
    labels: int [N] true classes.
    targets: int [N] target classes for a targeted attack; None for a
      non-targeted one.
    early_stop: stop each image at the end of the block holding its first
      success; otherwise scan everything and keep the most confident success.
    block: candidates scored per image and round; by default the largest
      divisor of ``H * W * 2**C`` up to 256. An image's first success at
      scan index k costs ``ceil((k + 1) / block) * block`` evaluations.
    batch_size: candidate images per model call on each device; chosen from
      the image size when None. Peak memory grows with it, results do not
      change with it.
    mesh: a ``jax.sharding.Mesh`` to shard the images over; None for every
      device (see ``batched_attack``).
    incremental: evaluate candidates incrementally (True), in full (False),
      or where it pays (None); see ``batched_attack``.

  Returns:
    An ``AttackResult`` of NumPy arrays; ``perturbation`` is int32
    [N, 1, 2 + C], ``queries`` the candidates scored and ``generations`` the
    blocks scored per image.
  """
  images = checks.check_images(images)
  return driver.attack(
    plan(
      images.shape[1:],
      early_stop=early_stop,
      block=block,
      batch_size=batch_size,
      incremental=incremental,
    ),
    predict,
    images,
    labels,
    key=None,
    targets=targets,
    image_ids=None,
    mesh=mesh,
  )
