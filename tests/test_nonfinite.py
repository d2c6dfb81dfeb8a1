"""A model that gives NaN or inf on some inputs never yields a success.

The models here are finite on the clean images and return NaN (or inf) once
any channel of any pixel is 0: the paper's initial colours, N(128, 127)
clipped, hit 0 often, so every search meets such inputs at once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pixeljax
from tests import toy_models

IMAGES = (
  np.random.default_rng(0).integers(40, 220, (6, 8, 8, 3)).astype(np.uint8)
)
BASE = toy_models.small_cnn(channels=3, num_classes=4, seed=1)
LABELS = np.asarray(BASE(jnp.asarray(IMAGES, jnp.float32))).argmax(-1)


def _broken_where_dark(value):
  """``BASE``, but every logit is ``value`` once a channel of a pixel is 0."""

  def predict(images):
    dark = jnp.any(images == 0, axis=(1, 2, 3))
    return jnp.where(dark[:, None], value, BASE(images))

  return predict


def _robust_but_broken_where_dark(images):
  """Always class 0 by a wide margin, except NaN where a channel is 0."""
  dark = jnp.any(images == 0, axis=(1, 2, 3))
  logits = jnp.broadcast_to(
    jnp.array([12.0, 0.0, 0.0, 0.0]), (images.shape[0], 4)
  )
  return jnp.where(dark[:, None], jnp.nan, logits)


SEARCHES = {
  "batched_attack": functools.partial(
    pixeljax.batched_attack,
    key=jax.random.key(0),
    pixels=2,
    popsize=16,
    maxiter=6,
  ),
  "stream_attack": lambda *a, **k: _streamed(*a, **k),
  "corner_attack": pixeljax.corner_attack,
  "corner_search": functools.partial(
    pixeljax.corner_search,
    key=jax.random.key(0),
    pixels=2,
    max_queries=200 * 8 * 8 + 128,
  ),
  "sparse_rs": functools.partial(
    pixeljax.corner_search,
    key=jax.random.key(0),
    pixels=2,
    scan=False,
    max_queries=512,
  ),
  "seeded_attack": functools.partial(
    pixeljax.seeded_attack,
    key=jax.random.key(0),
    pixels=2,
    popsize=16,
    maxiter=6,
  ),
}


def _streamed(predict, images, labels, **kwargs):
  parts = list(
    pixeljax.stream_attack(
      predict,
      images,
      labels,
      key=jax.random.key(0),
      slots=4,
      refill_every=2,
      pixels=2,
      popsize=16,
      maxiter=6,
      **kwargs,
    )
  )
  order = np.argsort(np.concatenate([indices for indices, _ in parts]))
  return pixeljax.AttackResult(
    *[
      np.concatenate([getattr(r, f) for _, r in parts])[order]
      for f in pixeljax.AttackResult._fields
    ]
  )


def _check_honest(predict, labels, result):
  """Successes hold on the returned images, with finite outputs; every
  probability lies in [0, 1]."""
  logits = np.asarray(predict(jnp.asarray(result.adv_images, jnp.float32)))
  finite = np.all(np.isfinite(logits), axis=-1)
  assert np.all(finite[result.success])
  np.testing.assert_array_equal(
    result.success, finite & (logits.argmax(-1) != labels)
  )
  for field in ("adv_prob", "true_prob", "target_prob"):
    values = getattr(result, field)
    assert np.all((values >= 0) & (values <= 1)), (field, values)


@pytest.mark.parametrize("search", SEARCHES)
def test_nan_outputs_are_never_successes(search):
  labels = np.zeros(len(IMAGES), np.int64)
  result = SEARCHES[search](_robust_but_broken_where_dark, IMAGES, labels)
  assert not result.success.any()
  _check_honest(_robust_but_broken_where_dark, labels, result)
  # Every candidate the search could score was NaN or class 0: the best it
  # can return is a class-0 image with finite outputs.
  np.testing.assert_array_equal(result.adv_label, 0)


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("search", ["batched_attack", "corner_search"])
def test_successes_hold_beside_broken_outputs(search, value):
  predict = _broken_where_dark(value)
  result = SEARCHES[search](predict, IMAGES, LABELS)
  _check_honest(predict, LABELS, result)


def test_an_image_broken_on_every_candidate_comes_back_unchanged():
  def predict(images):  # NaN on anything but the clean images
    clean = jnp.any(
      jnp.all(images[:, None] == IMAGES[None], axis=(2, 3, 4)), axis=1
    )
    return jnp.where(clean[:, None], BASE(images), jnp.nan)

  result = SEARCHES["batched_attack"](predict, IMAGES, LABELS)
  assert not result.success.any()
  np.testing.assert_array_equal(result.adv_images, IMAGES)
  np.testing.assert_array_equal(result.adv_label, LABELS)
  _check_honest(predict, LABELS, result)
