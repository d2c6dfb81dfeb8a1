"""Behaviour of the corner searches: known answers in predicted numbers of
evaluations, exhaustiveness, targeted runs, the d-pixel promise and early
stop."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pixeljax
from pixeljax.attack.corner import corner_attack
from pixeljax.attack.corner_search import corner_search
from pixeljax.attack.evaluate import RECHECK_BATCH
from tests import corner_models
from tests import toy_models


def test_known_answer_after_the_predicted_evaluations_and_early_stop():
  """The answer (5, 2) with corner (255, 0, 0) has scan index
  (2 * 8 + 5) * 8 + 4 = 172: with blocks of 8 it costs ceil(173 / 8) * 8 =
  176 evaluations. Images 2 and 3 are already misclassified and stop after
  their first block; the model sees nothing of them afterwards."""
  switch = toy_models.one_pixel_switch(x=5, y=2, colour=(250, 10, 30))
  predict, seen = toy_models.counting(switch)

  images = np.full((4, 8, 8, 3), 120, np.uint8)
  labels = np.array([0, 0, 1, 1])
  result = corner_attack(predict, images, labels, block=8, batch_size=8)
  assert result.success.all()
  np.testing.assert_array_equal(result.queries, [176, 176, 8, 8])
  np.testing.assert_array_equal(result.generations, [22, 22, 1, 1])
  np.testing.assert_array_equal(
    result.perturbation[:, 0], [[5, 2, 255, 0, 0]] * 2 + [[0, 0, 0, 0, 0]] * 2
  )
  np.testing.assert_array_equal(
    result.clean_success, [False, False, True, True]
  )
  # One call per block of active candidates, plus the clean images (scored
  # once, before the scan) and the final re-check, each in chunks of
  # RECHECK_BATCH: nothing for finished images.
  assert sum(seen) == result.queries.sum() + 2 * RECHECK_BATCH
  corner_models.assert_honest(switch, images, labels, result, pixels=1)


def test_targeted_without_early_stop_scans_all_and_keeps_the_best():
  predict = toy_models.colour_votes(num_classes=3)
  images = np.full((2, 6, 6, 3), 60, np.uint8)
  images[..., 0] = 100  # class 0 wins on the clean images
  labels, targets = np.zeros(2, np.int64), np.array([1, 2])
  result = corner_attack(
    predict, images, labels, targets=targets, early_stop=False
  )
  np.testing.assert_array_equal(result.queries, [6 * 6 * 8] * 2)
  assert result.success.all()
  np.testing.assert_array_equal(result.adv_label, targets)
  # The pure target colour is the most confident; the first pixel on ties.
  np.testing.assert_array_equal(
    result.perturbation[:, 0], [[0, 0, 0, 255, 0], [0, 0, 0, 0, 255]]
  )
  corner_models.assert_honest(
    predict, images, labels, result, pixels=1, targets=targets
  )


def test_exhaustive_finds_every_corner_success_de_finds():
  """Failures are checked against all H x W x 8 corner images, and every
  one-pixel DE success whose colour is a cube corner is a corner success."""
  predict = toy_models.small_cnn(channels=3, seed=1)
  images = np.random.default_rng(5).integers(0, 256, (24, 8, 8, 3))
  images = images.astype(np.uint8)
  labels = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
  corner = corner_attack(predict, images, labels)
  corner_models.assert_honest(predict, images, labels, corner, pixels=1)
  assert 0 < corner.success.sum() < len(images)

  # Scan index order: position y * 8 + x, then corner (r, g, b) in binary.
  position = np.repeat(np.arange(64), 8)
  colours = np.tile(list(itertools.product((0, 255), repeat=3)), (64, 1))
  for image, label in zip(images[~corner.success], labels[~corner.success]):
    batch = np.repeat(image[None], len(position), axis=0)
    batch[np.arange(len(position)), position // 8, position % 8] = colours
    predicted = np.asarray(predict(jnp.asarray(batch, jnp.float32)))
    assert np.all(predicted.argmax(-1) == label)

  de = pixeljax.batched_attack(
    predict, images, labels, key=jax.random.key(0), popsize=40, maxiter=20
  )
  at_corner = de.success & np.all(
    np.isin(de.perturbation[:, 0, 2:], (0, 255)), axis=-1
  )
  assert at_corner.any()  # else the check below would mean nothing
  assert np.all(corner.success[at_corner])


def test_few_pixel_search_finds_the_pair_and_keeps_its_promises():
  """The scan ranks the two pixels first, so the first combination round
  (which scores the two best pixels at their best corners) succeeds."""
  predict = corner_models.two_white_pixels()
  images = np.full((3, 8, 8, 3), 120, np.uint8)
  labels = np.zeros(3, np.int64)
  one = corner_attack(predict, images, labels)
  assert not one.success.any()
  # It still reports its best: one of the two pixels (the first scanned) white.
  np.testing.assert_array_equal(
    one.perturbation[:, 0], [[4, 3, 255, 255, 255]] * 3
  )
  result = corner_search(
    predict,
    images,
    labels,
    key=jax.random.key(0),
    pixels=2,
    max_queries=2000,
    proposals=16,
  )
  assert result.success.all()
  np.testing.assert_array_equal(result.queries, [8 * 8 * 8 + 16] * 3)
  assert sorted(map(tuple, result.perturbation[0])) == [
    (1, 6, 255, 255, 255),
    (4, 3, 255, 255, 255),
  ]
  corner_models.assert_honest(predict, images, labels, result, pixels=2)


@pytest.mark.parametrize("scan,rounds", [(True, 5), (False, 21)])
def test_few_pixel_search_respects_d_and_its_budget(scan, rounds):
  """Without early stop the budget is spent whole: the scan's 512, then
  rounds of 32 (all 672 in rounds without a scan)."""
  predict = toy_models.small_cnn(channels=3, seed=2)
  images = np.random.default_rng(6).integers(0, 256, (8, 8, 8, 3))
  images = images.astype(np.uint8)
  labels = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
  result = corner_search(
    predict,
    images,
    labels,
    key=jax.random.key(1),
    pixels=3,
    max_queries=512 + 5 * 32,
    proposals=32,
    early_stop=False,
    scan=scan,
  )
  np.testing.assert_array_equal(result.queries, [512 + 5 * 32] * 8)
  np.testing.assert_array_equal(result.generations, [rounds] * 8)
  corner_models.assert_honest(predict, images, labels, result, pixels=3)


def test_bad_arguments_are_refused_by_name():
  predict = toy_models.small_cnn(channels=3)
  images = np.zeros((2, 8, 8, 3), np.uint8)
  labels = np.zeros(2, np.int64)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="block"):
    corner_attack(predict, images, labels, block=8 * 8 * 8 + 1)
  with pytest.raises(ValueError, match="targets"):
    corner_attack(predict, images, labels, targets=labels)
  with pytest.raises(ValueError, match="max_queries"):
    corner_search(predict, images, labels, key=key, max_queries=100)
  with pytest.raises(ValueError, match="top_pixels"):
    corner_search(predict, images, labels, key=key, scan=False, top_pixels=9)
  with pytest.raises(TypeError, match="early_stop"):
    corner_search(predict, images, labels, key=key, early_stop=1)


def test_an_image_gets_the_same_result_whatever_shares_its_batch():
  predict = toy_models.small_cnn(channels=3, seed=3)
  images = np.random.default_rng(7).integers(0, 256, (6, 8, 8, 3))
  images = images.astype(np.uint8)
  labels = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
  kwargs = dict(
    key=jax.random.key(4), pixels=2, max_queries=160, proposals=16, scan=False
  )
  batch = corner_search(predict, images, labels, **kwargs)
  alone = corner_search(
    predict, images[3:4], labels[3:4], image_ids=[3], batch_size=5, **kwargs
  )
  for field in ("success", "adv_images", "perturbation", "queries"):
    np.testing.assert_array_equal(
      getattr(alone, field), getattr(batch, field)[3:4], err_msg=field
    )
