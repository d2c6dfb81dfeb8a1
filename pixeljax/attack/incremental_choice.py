"""Whether an attack evaluates incrementally: the ``incremental`` argument.

True and False are kept. None decides per attack. Counted FLOPs settle the
cases where incremental evaluation cannot pay; an attack large enough to
afford it then times both ways of scoring one chunk of candidates on this
machine (``measured_speedup``) and takes the faster, because counted FLOPs
alone mislead: on the 2-core CPU of benchmarks/results/incremental_cpu.md
the measured speed-ups ran from 0.62x to 1.17x of the FLOP ratios. A small
attack, which the trial would cost more than it saves, decides from counted
FLOPs.

The decision is recorded in each result's ``incremental`` field. Both paths
give the same logits up to float rounding, so a timed decision can change a
result only where two candidates' scores tie to the last bit; pass True or
False to pin the path for bit-for-bit repeatable runs.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax import xla_options
from pixeljax.attack import evaluate
from pixeljax.attack import incremental as incremental_lib

# Incremental evaluation is chosen by default on these backends only: its
# speed has been measured on CPU alone so far.
AUTO_BACKENDS = ("cpu",)
# ... for attacks that may spend this many evaluations per image: the
# incremental program compiles about 2 s longer (SmallCNN, AllConv on CPU),
# which a small attack never earns back. Per image, not per call, so that
# the path an image takes does not depend on what shares its batch.
AUTO_MIN_BUDGET = 4096
# Below this FLOP ratio (full pass over incremental, per candidate) the
# incremental path is not tried: no measured row gained more than 1.17x its
# FLOP ratio, and the windows' gathers cost what FLOPs do not count.
AUTO_MIN_TRIAL_RATIO = 1.1
# An attack of at least this many evaluations (images x budget) times both
# paths: a trial compiles two scoring programs and runs each three times on
# one chunk (at most 1,024 candidates), a few percent of such an attack.
AUTO_MIN_TRIAL_EVALUATIONS = 200_000
# The trial turns the incremental path on when it scores a chunk at least
# this much faster, a margin over timing noise and its longer compile.
AUTO_MIN_SPEEDUP = 1.05
# Without a trial, the counted FLOP ratio that turns it on: most measured
# speed-ups fell below their FLOP ratios by at most a fifth.
AUTO_MIN_RATIO = 1.25
# Timed runs of each path in a trial (after one that compiles and warms).
_TRIAL_RUNS = 3


def check_mode(incremental):
  """``incremental`` as True, False or None (automatic); raises naming it."""
  if incremental is not None and not isinstance(incremental, (bool, np.bool_)):
    raise TypeError(
      "incremental: expected True, False or None (automatic), got "
      f"{incremental!r}"
    )
  return None if incremental is None else bool(incremental)


def resolve(
  incremental,
  predict,
  image_shape,
  pixels: int,
  budget: int,
  *,
  num_images: int = 1,
  batch_size: int = 1024,
  round_size: int = 400,
) -> bool:
  """Whether an attack evaluates incrementally.

  Args:
    incremental: True, False or None (automatic).
    predict: the model, float32 [B, H, W, C] -> logits [B, K].
    image_shape: (H, W, C).
    pixels: d, the most pixels one candidate changes.
    budget: the most evaluations one image can cost.
    num_images: images in the attack (with ``budget``, its size).
    batch_size: candidates per model call.
    round_size: candidates per image and round (the population).

  None turns it on where it pays: on a backend of ``AUTO_BACKENDS``, for a
  budget of at least ``AUTO_MIN_BUDGET``, for a model with ops that run on
  windows and at least ``AUTO_MIN_TRIAL_RATIO`` times fewer counted FLOPs;
  then, for an attack of at least ``AUTO_MIN_TRIAL_EVALUATIONS``, where
  ``measured_speedup`` is at least ``AUTO_MIN_SPEEDUP``, and for a smaller
  one where the FLOP ratio is at least ``AUTO_MIN_RATIO``. A model the
  interpreter cannot trace runs the full pass under None, and raises under
  True.
  """
  incremental = check_mode(incremental)
  if incremental is not None:
    if incremental:
      try:
        incremental_lib.evaluator(predict, tuple(image_shape), pixels)
      except Exception as e:
        raise ValueError(
          "incremental=True: predict cannot be evaluated incrementally, "
          "which traces it once on a single image (batch 1) and replays its "
          f"program on windows; that failed with {type(e).__name__}: {e}. "
          "Use incremental=None (full passes where it cannot) or False."
        ) from e
    return incremental
  if jax.default_backend() not in AUTO_BACKENDS or budget < AUTO_MIN_BUDGET:
    return False
  try:
    evaluator = incremental_lib.evaluator(predict, tuple(image_shape), pixels)
  except Exception:  # noqa: BLE001 - any model it cannot replay: full pass
    return False
  ratio = flop_ratio(evaluator)
  if evaluator.windowed_ops == 0 or ratio < AUTO_MIN_TRIAL_RATIO:
    return False
  if num_images * budget < AUTO_MIN_TRIAL_EVALUATIONS:
    return ratio >= AUTO_MIN_RATIO
  speedup = measured_speedup(
    predict, tuple(image_shape), pixels, batch_size, round_size
  )
  return speedup >= AUTO_MIN_SPEEDUP


def flop_ratio(evaluator) -> float:
  """Counted FLOPs of a full pass over those of an incremental candidate."""
  return evaluator.full_flops / max(evaluator.flops, 1)


@functools.lru_cache(maxsize=16)
def measured_speedup(
  predict, image_shape: tuple, pixels: int, batch_size: int, round_size: int
) -> float:
  """Seconds the full pass takes to score one chunk over the seconds the
  incremental path takes, on this machine, as an attack compiles them.

  The chunk: ``batch_size`` candidates of d = ``pixels`` (at most 1,024; a
  whole population of ``round_size`` if larger) on synthetic uint8 images
  of ``image_shape``; each path runs once to compile and warm, then
  ``_TRIAL_RUNS`` times, alternately, and the fastest run of each counts.
  Cached per process.
  """
  height, width, channels = image_shape
  chunk = max(1, min(batch_size, 1024))
  popsize = min(round_size, chunk)
  count = -(-chunk // popsize)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (count, *image_shape), np.uint8))
  labels = jnp.zeros((count,), jnp.int32)
  scale = np.array([width, height] + [256] * channels, np.float32)
  candidates = jnp.asarray(
    rng.random((count, popsize, pixels, 2 + channels), np.float32) * scale
  ).reshape(count, popsize, -1)
  active = jnp.ones((count,), bool)

  def program(incremental):
    score = functools.partial(
      evaluate.score_candidates,
      predict,
      batch_size=chunk,
      incremental=incremental,
    )
    options = dict(xla_options.attack_program_options(incremental))
    return jax.jit(score, compiler_options=options or None)

  programs = {on: program(on) for on in (False, True)}
  seconds = {False: [], True: []}
  for run in range(1 + _TRIAL_RUNS):
    for on, scored in programs.items():
      start = time.perf_counter()
      jax.block_until_ready(scored(images, labels, None, candidates, active))
      if run:  # the first run compiles
        seconds[on].append(time.perf_counter() - start)
  return min(seconds[False]) / min(seconds[True])
