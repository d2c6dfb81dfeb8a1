"""Behaviour of batched_attack: it finds known answers, keeps its promises
about images, queries and reproducibility, and compiles once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pixeljax
from pixeljax.attack.evaluate import RECHECK_BATCH
from tests import toy_models


def _pixels_changed(original, adversarial):
  """Number of pixel positions that differ, per image: int [N]."""
  return np.any(original != adversarial, axis=-1).sum(axis=(1, 2))


def _rechecked(count):
  """Images the model sees to score ``count`` clean or final images."""
  return -(-count // RECHECK_BATCH) * RECHECK_BATCH


def _check_promises(predict, images, labels, result, pixels, targets=None):
  """Properties every result must have, whatever the attack found."""
  n = len(images)
  assert result.adv_images.dtype == np.uint8
  assert result.adv_images.shape == images.shape
  assert result.perturbation.shape == (n, pixels, 2 + images.shape[-1])
  assert np.all(_pixels_changed(images, result.adv_images) <= pixels)
  # The perturbation says exactly what the returned image holds.
  for i in range(n):
    for x, y, *colour in result.perturbation[i]:
      np.testing.assert_array_equal(result.adv_images[i, y, x], colour)
  # Every success really fools the model on the returned image.
  logits = np.asarray(predict(jnp.asarray(result.adv_images, jnp.float32)))
  predicted = logits.argmax(-1)
  np.testing.assert_array_equal(predicted, result.adv_label)
  expected = predicted != labels if targets is None else predicted == targets
  np.testing.assert_array_equal(result.success, expected)
  # The reported probabilities are the model's, on the returned image.
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  rows = np.arange(n)
  np.testing.assert_allclose(result.adv_prob, probs[rows, predicted], atol=1e-5)
  np.testing.assert_allclose(result.true_prob, probs[rows, labels], atol=1e-5)
  if targets is None:
    wrong = probs.copy()
    wrong[rows, labels] = -1.0
    np.testing.assert_allclose(result.target_prob, wrong.max(-1), atol=1e-5)
  else:
    np.testing.assert_allclose(
      result.target_prob, probs[rows, targets], atol=1e-5
    )
  clean = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
  np.testing.assert_array_equal(result.clean_label, clean)
  np.testing.assert_array_equal(
    result.clean_success,
    clean != labels if targets is None else clean == targets,
  )


def test_finds_the_one_pixel_that_flips_a_hand_made_model():
  predict = toy_models.one_pixel_switch(x=5, y=2, colour=(250, 10, 30))
  images = np.full((3, 8, 8, 3), 120, np.uint8)
  labels = np.zeros(3, np.int64)
  result = pixeljax.batched_attack(
    predict, images, labels, key=jax.random.key(0), popsize=100, maxiter=60
  )
  assert result.success.all()
  np.testing.assert_array_equal(result.perturbation[:, 0, :2], [[5, 2]] * 3)
  colour = result.perturbation[:, 0, 2:]
  assert np.all(np.linalg.norm(colour - [250, 10, 30], axis=-1) < 40)
  _check_promises(predict, images, labels, result, pixels=1)
  assert np.all(result.queries == 100 * (result.generations + 1))


def test_targeted_attack_reaches_its_target():
  predict = toy_models.colour_votes(num_classes=3)
  images = np.full((4, 6, 6, 3), 60, np.uint8)
  images[..., 0] = 100  # class 0 wins on the clean images
  labels = np.zeros(4, np.int64)
  targets = np.array([1, 2, 1, 2])
  result = pixeljax.batched_attack(
    predict,
    images,
    labels,
    targets=targets,
    key=jax.random.key(1),
    popsize=40,
    maxiter=50,
  )
  assert result.success.all()
  np.testing.assert_array_equal(result.adv_label, targets)
  _check_promises(predict, images, labels, result, pixels=1, targets=targets)


@pytest.mark.parametrize(
  "shape,pixels",
  [((32, 32, 3), 1), ((32, 32, 3), 3), ((28, 28, 1), 5), ((12, 9, 2), 7)],
)
def test_any_image_shape_and_pixel_count(shape, pixels):
  predict = toy_models.small_cnn(channels=shape[-1])
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, *shape)).astype(np.uint8)
  labels = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
  result = pixeljax.batched_attack(
    predict,
    images,
    labels,
    key=jax.random.key(2),
    pixels=pixels,
    popsize=16,
    maxiter=5,
  )
  _check_promises(predict, images, labels, result, pixels=pixels)
  assert np.all(result.queries == 16 * (result.generations + 1))
  assert np.all(result.generations <= 5)


def test_imagenet_sized_images():
  predict = toy_models.small_cnn(channels=3)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
  labels = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
  result = pixeljax.batched_attack(
    predict,
    images,
    labels,
    key=jax.random.key(3),
    pixels=3,
    popsize=8,
    maxiter=2,
    batch_size=8,
  )
  _check_promises(predict, images, labels, result, pixels=3)


def test_without_early_stop_every_generation_runs():
  predict = toy_models.small_cnn(channels=3)
  images = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3))
  labels = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
  result = pixeljax.batched_attack(
    predict,
    images.astype(np.float32),
    labels,
    key=jax.random.key(4),
    popsize=10,
    maxiter=4,
    early_stop=False,
  )
  np.testing.assert_array_equal(result.generations, [4, 4, 4])
  np.testing.assert_array_equal(result.queries, [50, 50, 50])


def test_finished_images_cost_no_model_evaluations():
  """Counts the candidate images the model really sees, through a host
  callback: images that succeed early stop being evaluated."""
  predict, seen = toy_models.counting(
    toy_models.one_pixel_switch(x=1, y=1, colour=(255, 0, 0))
  )

  images = np.full((8, 4, 4, 3), 90, np.uint8)
  images[:4, 1, 1] = (245, 5, 5)  # already nearly fooled: found at once
  popsize, maxiter, batch_size = 20, 30, 20
  result = pixeljax.batched_attack(
    predict,
    images,
    np.zeros(8, np.int64),
    key=jax.random.key(5),
    popsize=popsize,
    maxiter=maxiter,
    batch_size=batch_size,
  )
  seen.clear()
  result = pixeljax.batched_attack(
    predict,
    images,
    np.zeros(8, np.int64),
    key=jax.random.key(5),
    popsize=popsize,
    maxiter=maxiter,
    batch_size=batch_size,
  )
  # One model call per chunk of active candidates, plus the clean images
  # (scored once, before the attack) and the final re-check: nothing for
  # finished images.
  assert sum(seen) == result.queries.sum() + 2 * _rechecked(len(images))
  assert sum(seen) < len(images) * popsize * (maxiter + 1) / 2
  assert result.queries[:4].max() < result.queries[4:].max()


def test_second_call_with_the_same_shapes_does_not_compile():
  traces = []
  base = toy_models.small_cnn(channels=3)

  def predict(images):
    traces.append(images.shape)  # Python runs only while tracing
    return base(images)

  images = np.random.default_rng(3).integers(0, 256, (4, 8, 8, 3))
  labels = np.zeros(4, np.int64)
  kwargs = dict(popsize=8, maxiter=3)
  pixeljax.batched_attack(
    predict, images, labels, key=jax.random.key(0), **kwargs
  )
  traced = len(traces)
  assert traced > 0
  pixeljax.batched_attack(
    predict, images[::-1], labels, key=jax.random.key(1), mutation=0.7, **kwargs
  )
  assert len(traces) == traced


def test_same_key_same_result_whatever_the_batch():
  predict = toy_models.small_cnn(channels=3, seed=4)
  images = np.random.default_rng(4).integers(0, 256, (32, 16, 16, 3))
  labels = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
  kwargs = dict(key=jax.random.key(7), popsize=24, maxiter=8, pixels=2)
  batch = pixeljax.batched_attack(predict, images, labels, **kwargs)
  again = pixeljax.batched_attack(predict, images, labels, **kwargs)
  rechunked = pixeljax.batched_attack(
    predict, images, labels, batch_size=37, **kwargs
  )
  alone = pixeljax.batched_attack(
    predict, images[9:10], labels[9:10], image_ids=[9], **kwargs
  )
  assert 0 < batch.success.sum() < 32  # a mix, so the check means something
  for other, rows in [
    (again, slice(None)),
    (rechunked, slice(None)),
    (alone, slice(9, 10)),
  ]:
    for (
      field
    ) in pixeljax.AttackResult._fields:  # probabilities too: bit for bit
      np.testing.assert_array_equal(
        getattr(other, field), getattr(batch, field)[rows], err_msg=field
      )


def test_no_model_call_is_padding_when_chunks_hold_whole_populations():
  """batch_size = 2 x popsize with images finishing one by one: the last
  active image's population is not padded up to a full chunk."""
  predict, seen = toy_models.counting(
    toy_models.one_pixel_switch(x=1, y=1, colour=(255, 0, 0))
  )

  images = np.full((5, 4, 4, 3), 90, np.uint8)
  images[:2, 1, 1] = (245, 5, 5)  # found at once; the other 3 run on
  kwargs = dict(key=jax.random.key(5), popsize=10, maxiter=6, batch_size=20)
  result = pixeljax.batched_attack(
    predict, images, np.zeros(5, np.int64), **kwargs
  )
  assert len(set(result.queries.tolist())) > 1  # odd counts of active images
  seen.clear()
  result = pixeljax.batched_attack(
    predict, images, np.zeros(5, np.int64), **kwargs
  )
  assert sum(seen) == result.queries.sum() + 2 * _rechecked(len(images))
