"""Bad input to batched_attack gets a clear error before anything compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pixeljax
from tests import toy_models

IMAGES = np.full((2, 8, 8, 3), 100, np.uint8)
LABELS = np.array([0, 1])
PREDICT = toy_models.small_cnn(channels=3, num_classes=4)


def _attack(**overrides):
  kwargs = dict(
    predict=PREDICT,
    images=IMAGES,
    labels=LABELS,
    key=jax.random.key(0),
    popsize=8,
    maxiter=1,
  )
  kwargs.update(overrides)
  predict, images, labels = (
    kwargs.pop(k) for k in ("predict", "images", "labels")
  )
  return pixeljax.batched_attack(predict, images, labels, **kwargs)


@pytest.mark.parametrize(
  "overrides,error,words",
  [
    (dict(images=IMAGES[0]), ValueError, "images must be a non-empty array"),
    (dict(images=IMAGES[:0]), ValueError, "images must be a non-empty array"),
    (dict(images=IMAGES.tolist()), TypeError, "images must be an array"),
    (dict(images=IMAGES / 255.0), ValueError, "integers 0..255"),
    (dict(images=IMAGES * 3.0), ValueError, "integers 0..255"),
    (
      dict(labels=np.array([0, 1, 2])),
      ValueError,
      "labels must have shape (2,)",
    ),
    (dict(labels=np.array([0, 4])), ValueError, "labels must be in [0, 4)"),
    (dict(labels=np.array([0.0, 1.0])), TypeError, "labels must hold integer"),
    (dict(targets=np.array([0, 2])), ValueError, "targets must differ"),
    (dict(targets=np.array([1, 9])), ValueError, "targets must be in [0, 4)"),
    (dict(pixels=0), ValueError, "pixels must be at least 1"),
    (dict(pixels=65), ValueError, "at most 64"),
    (dict(pixels=1.5), TypeError, "pixels must be an int"),
    (dict(popsize=3), ValueError, "popsize must be at least 4"),
    (dict(maxiter=-1), ValueError, "maxiter must be at least 0"),
    (dict(mutation=0.0), ValueError, "mutation must be in (0.0, 2.0]"),
    (dict(mutation=float("nan")), ValueError, "mutation must be in"),
    (dict(crossover=1.5), ValueError, "crossover must be in [0.0, 1.0]"),
    (dict(batch_size=0), ValueError, "batch_size must be at least 1"),
    (dict(early_stop="yes"), TypeError, "early_stop must be a bool"),
    (dict(key=0), TypeError, "key must be a PRNG key"),
    (dict(key=None), TypeError, "key: this search draws at random"),
    (dict(image_ids=[0]), ValueError, "image_ids must be integers of shape"),
    (dict(predict="model"), TypeError, "predict must be callable"),
    (
      dict(predict=lambda x: x.mean(axis=(1, 2, 3))),
      ValueError,
      "predict must return float logits of shape",
    ),
    (dict(predict=lambda x: x[:, :1, 0, 0]), ValueError, "K >= 2"),
    (
      dict(predict=lambda x: x.reshape(-1)[:3]),
      ValueError,
      "predict must return",
    ),
  ],
)
def test_bad_input_is_named(overrides, error, words):
  with pytest.raises(error) as info:
    _attack(**overrides)
  assert words in str(info.value)


def test_every_random_search_wants_a_key():
  """None is only for the deterministic corner scan, never a hidden key."""
  for search in (pixeljax.corner_search, pixeljax.seeded_attack):
    with pytest.raises(TypeError, match="key: this search draws at random"):
      search(PREDICT, IMAGES, LABELS, key=None)


def test_nan_logits_are_refused():
  def predict(images):
    logits = PREDICT(images)
    return logits.at[1].set(jnp.nan)

  with pytest.raises(ValueError, match=r"NaN or inf logits .*\[1\]"):
    _attack(predict=predict)


@pytest.mark.parametrize(
  "overrides,words",
  [
    (dict(popsize=2**31), "popsize must be at least 4 and at most"),
    (dict(maxiter=2**31), "maxiter must be at least 0 and at most"),
    (dict(popsize=2**16, maxiter=2**16), "popsize * (maxiter + 1)"),
    (dict(popsize=2**30 + 1, maxiter=0), "candidates of one round"),
  ],
)
def test_counts_that_overflow_int32_are_refused_before_any_work(
  overrides, words
):
  traced = []

  def predict(images):
    traced.append(images.shape)
    return PREDICT(images)

  with pytest.raises(ValueError) as info:
    _attack(predict=predict, **overrides)
  assert words in str(info.value)
  assert not traced


def test_an_empty_mesh_is_refused():
  mesh = jax.sharding.Mesh(np.empty((0,), object), ("images",))
  with pytest.raises(ValueError, match="mesh must hold at least one device"):
    _attack(mesh=mesh)


def test_a_predict_that_takes_one_batch_size_only_is_named():
  def predict(images):  # hard-codes the batch of 16 it was written for
    return PREDICT(images.reshape(16, 8, 8, 3))

  with pytest.raises(ValueError, match="must take any batch size") as info:
    _attack(predict=predict, batch_size=16)
  assert "8, 16" in str(info.value)


def test_corner_scan_too_large_to_index_is_refused():
  images = np.full((1, 2, 2, 32), 100, np.uint8)

  def predict(images):
    return images.reshape(images.shape[0], -1)[:, :2]

  with pytest.raises(ValueError, match=r"H \* W \* 2\*\*C"):
    pixeljax.corner_attack(predict, images, np.zeros(1, np.int64))
