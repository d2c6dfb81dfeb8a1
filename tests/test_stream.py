"""Continuous batching gives every image exactly its batched result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pixeljax
from tests import toy_models

PREDICT = toy_models.small_cnn(channels=3, seed=4)
IMAGES = np.random.default_rng(4).integers(0, 256, (11, 16, 16, 3))
LABELS = np.asarray(PREDICT(jnp.asarray(IMAGES, jnp.float32))).argmax(-1)
SETTINGS = dict(key=jax.random.key(7), popsize=24, maxiter=8, pixels=2)


def _collect(stream):
  """Concatenates a stream's parts into one result in image order."""
  parts = list(stream)
  indices = np.concatenate([part[0] for part in parts])
  order = np.argsort(indices)
  merged = pixeljax.AttackResult(
    *[
      np.concatenate([getattr(part[1], field) for part in parts])[order]
      for field in pixeljax.AttackResult._fields
    ]
  )
  return np.sort(indices), merged, len(parts)


def _assert_same(expected, actual):
  for field in pixeljax.AttackResult._fields:
    np.testing.assert_array_equal(
      getattr(actual, field), getattr(expected, field), err_msg=field
    )


@pytest.mark.parametrize("slots,refill_every", [(3, 2), (4, 1), (16, 3)])
def test_streamed_equals_batched(slots, refill_every):
  batched = pixeljax.batched_attack(PREDICT, IMAGES, LABELS, **SETTINGS)
  assert 0 < batched.success.sum() < len(IMAGES)  # a mix of easy and hard
  indices, streamed, parts = _collect(
    pixeljax.stream_attack(
      PREDICT,
      IMAGES,
      LABELS,
      slots=slots,
      refill_every=refill_every,
      **SETTINGS,
    )
  )
  np.testing.assert_array_equal(indices, np.arange(len(IMAGES)))
  assert parts > 1  # results came out as images finished, not at the end
  _assert_same(batched, streamed)


def test_a_single_image_stream():
  alone = pixeljax.batched_attack(
    PREDICT, IMAGES[3:4], LABELS[3:4], image_ids=[3], **SETTINGS
  )
  indices, streamed, _ = _collect(
    pixeljax.stream_attack(
      PREDICT, IMAGES[3:4], LABELS[3:4], image_ids=[3], slots=5, **SETTINGS
    )
  )
  np.testing.assert_array_equal(indices, [0])
  _assert_same(alone, streamed)


def test_stream_checks_its_own_arguments():
  with pytest.raises(ValueError, match="slots must be at least 1"):
    next(pixeljax.stream_attack(PREDICT, IMAGES, LABELS, slots=0, **SETTINGS))
  with pytest.raises(ValueError, match="refill_every must be at least 1"):
    next(
      pixeljax.stream_attack(
        PREDICT, IMAGES, LABELS, refill_every=0, **SETTINGS
      )
    )


def test_progress_is_reported_at_every_round_trip():
  batched = pixeljax.batched_attack(PREDICT, IMAGES, LABELS, **SETTINGS)
  spent = []
  indices, streamed, parts = _collect(
    pixeljax.stream_attack(
      PREDICT,
      IMAGES,
      LABELS,
      slots=3,
      refill_every=2,
      progress=spent.append,
      **SETTINGS,
    )
  )
  _assert_same(batched, streamed)
  # Also when nothing finished: between hand-backs, the count still moves.
  assert len(spent) > parts
  assert spent == sorted(spent) and len(set(spent)) == len(spent)
  assert spent[-1] == batched.queries.sum()
  with pytest.raises(TypeError, match="progress must be callable"):
    next(
      pixeljax.stream_attack(PREDICT, IMAGES, LABELS, progress=3, **SETTINGS)
    )
