"""Scoring candidates with the model, in fixed-size chunks, active images only.

The candidates of all images are laid out as one flat list with the images
that still need work gathered to the front; a loop over chunks of
``batch_size`` candidates (then of one population, for the rest) builds each
chunk's perturbed images on the fly and runs the model on them. Peak memory
follows the chunk, not N x P x H x W x C,
and images that are done cost nothing: the loop stops after the last chunk
that holds an active image's candidate. With ``incremental`` each chunk
first computes the clean maps of the few images its candidates belong to,
then only the windows the candidates change (see incremental.py).
"""

import jax
import jax.numpy as jnp

from pixeljax.attack import canonical
from pixeljax.attack import criteria
from pixeljax.attack import incremental as incremental_lib
from pixeljax.attack import pixels as pixels_lib

# Clean images and final re-checks go through the model in chunks of this
# fixed size, whatever the batch, chunk or device count: an image's reported
# probabilities then come from the same computation in every run.
RECHECK_BATCH = 8


def probabilities(logits):
  """Softmax probabilities float32 [B, K] of logits [B, K]; NaN rows where
  any logit is NaN or inf.

  Finiteness is judged on the logits: under jit on CPU, the softmax of a NaN
  row can come out finite, so a check made after it may never fire.
  """
  logits = logits.astype(jnp.float32)
  finite = jnp.all(jnp.isfinite(logits), axis=-1, keepdims=True)
  probs = jax.nn.softmax(jnp.where(finite, logits, 0.0), axis=-1)
  return jnp.where(finite, probs, jnp.nan)


def score_candidates(
  predict,
  images,
  labels,
  targets,
  candidates,
  active,
  batch_size: int,
  incremental: bool = False,
):
  """Fitness and success of every candidate of every active image.

  Args:
    predict: the model, float32 [B, H, W, C] -> logits [B, K].
    images: uint8 [N, H, W, C] clean images.
    labels: int32 [N] true classes.
    targets: int32 [N] target classes, or None for a non-targeted attack.
    candidates: float32 [N, P, L] candidate vectors.
    active: bool [N]; candidates of inactive images are not evaluated.
    batch_size: candidates per model call (static).
    incremental: recompute only the windows the changed pixels touch, from
      each chunk's clean maps (static; see incremental.py).

  Returns:
    fitness float32 [N, P] (+inf where not evaluated) and success bool [N, P]
    (False where not evaluated).
  """
  num_images, popsize, _ = candidates.shape
  _, height, width, channels = images.shape
  if incremental:
    evaluator = incremental_lib.evaluator(
      predict, images.shape[1:], candidates.shape[-1] // (2 + channels)
    )
  # The model runs in loop bodies, where XLA CPU leaves non-canonical
  # convolutions (OIHW, NCHW) on a 25x slower path: see canonical.py.
  predict = canonical.for_loops(predict)
  # Stable sort: active images first, in their original order.
  order = jnp.argsort(~active, stable=True)
  total = jnp.sum(active) * popsize
  flat_candidates = candidates.reshape(num_images * popsize, -1)

  def score_span(start, size, carry):
    """Scores candidates [start, start + size) of the active-first list."""
    fitness_out, success_out = carry
    position = start + jnp.arange(size)
    valid = position < total
    position = jnp.minimum(position, total - 1)
    image = order[position // popsize]
    flat = image * popsize + position % popsize
    perturbation = pixels_lib.decode(
      flat_candidates[flat], height, width, channels
    )
    if incremental:
      logits = _incremental_logits(
        evaluator, images, order, start, size, popsize, position, perturbation
      )
    else:
      perturbed = pixels_lib.inject(images[image], perturbation)
      logits = predict(perturbed.astype(jnp.float32))
    probs = probabilities(logits)
    chunk_targets = None if targets is None else targets[image]
    fitness = criteria.fitness(probs, labels[image], chunk_targets)
    success = criteria.is_success(
      jnp.argmax(probs, axis=-1), labels[image], chunk_targets
    ) & jnp.isfinite(fitness)
    # Padding at the end of the last chunk writes out of range: dropped.
    flat = jnp.where(valid, flat, num_images * popsize)
    return (
      fitness_out.at[flat].set(fitness, mode="drop"),
      success_out.at[flat].set(success, mode="drop"),
    )

  def score_chunks(start, size, count, carry):
    return jax.lax.fori_loop(
      0,
      count,
      lambda c, carry: score_span(start + c * size, size, carry),
      carry,
    )

  carry = (
    jnp.full((num_images * popsize,), jnp.inf, jnp.float32),
    jnp.zeros((num_images * popsize,), bool),
  )
  # Full chunks, then what is left in chunks of one population: when
  # batch_size is a multiple of popsize no model call holds padding, however
  # few images are still active.
  tail = min(popsize, batch_size)
  if tail == batch_size:
    carry = score_chunks(0, batch_size, -(-total // batch_size), carry)
  else:
    full = total // batch_size
    carry = score_chunks(0, batch_size, full, carry)
    start = full * batch_size
    carry = score_chunks(start, tail, -(-(total - start) // tail), carry)
  fitness, success = carry
  return (
    fitness.reshape(num_images, popsize),
    success.reshape(num_images, popsize),
  )


def _incremental_logits(
  evaluator, images, order, start, size, popsize, position, perturbation
):
  """Logits of one chunk's candidates at ``position`` int32 [size] (in
  [start, start + size) of the active-first list), from the clean maps of
  the images they belong to: at most (size - 1) // popsize + 2 consecutive
  entries of ``order``, from entry start // popsize on."""
  count = (size - 1) // popsize + 2
  first = start // popsize
  entries = jnp.minimum(first + jnp.arange(count), len(order) - 1)
  maps = evaluator.clean_maps(images[order[entries]])
  return evaluator.logits(maps, position // popsize - first, perturbation)


def in_chunks(forward, images, size: int):
  """``forward`` on ``images`` [N, ...], ``size`` of them at a time.

  A ``lax.map`` over chunks of ``size``, the last one padded with zero
  images whose outputs are dropped: every call of ``forward`` sees exactly
  ``size`` images. ``forward`` maps [size, ...] to [size, K]; returns its
  outputs [N, K] in order.
  """
  count = images.shape[0]
  padded = -(-count // size) * size
  images = jnp.pad(images, [(0, padded - count)] + [(0, 0)] * (images.ndim - 1))
  chunks = images.reshape(padded // size, size, *images.shape[1:])
  return jax.lax.map(forward, chunks).reshape(padded, -1)[:count]


def logits_in_chunks(predict, images, batch_size: int):
  """Logits float32 [N, K] of [N, H, W, C] images, ``batch_size`` at a time."""
  predict = canonical.for_loops(predict)  # runs in lax.map: see canonical.py
  return in_chunks(
    lambda chunk: predict(chunk.astype(jnp.float32)).astype(jnp.float32),
    images,
    batch_size,
  )


def recheck_logits(predict, images):
  """Logits float32 [N, K] of [N, H, W, C] images, in ``RECHECK_BATCH``
  chunks: the same values whatever else is in the batch."""
  return logits_in_chunks(predict, images, RECHECK_BATCH)
