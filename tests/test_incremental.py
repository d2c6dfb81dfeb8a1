"""Incremental evaluation gives the full pass's logits and the same attacks."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pixeljax
from pixeljax.attack import incremental
from pixeljax.attack import incremental_choice
from pixeljax.attack import pixels as pixels_lib
from pixeljax.attack import sharding
from pixeljax.models import create_model
from pixeljax.models import make_predict

TOLERANCE = 1e-5  # relative to the largest logit


def _perturbations(rng, count, pixels, height, width, channels):
  """Decoded d-pixel candidates int32 [count, d, 2 + C]: random ones, and
  ones on the corners and edges, side by side and on one position."""
  xy = rng.integers(0, [width, height], (count, pixels, 2))
  xy[0] = 0
  xy[1] = [width - 1, height - 1]
  xy[2, :, 0] = width - 1
  xy[3, :, 1] = 0
  if pixels > 1:
    xy[4, 1] = np.minimum(xy[4, 0] + 1, [width - 1, height - 1])
    xy[5, 1:] = xy[5, 0]  # one position, written d times
  colour = rng.integers(0, 256, (count, pixels, channels))
  vectors = np.concatenate([xy + 0.5, colour], axis=-1).reshape(count, -1)
  return pixels_lib.decode(
    jnp.asarray(vectors, jnp.float32), height, width, channels
  )


def _check_exact(predict, image_shape, pixels, count=8):
  """Incremental logits of ``count`` candidates over 3 images against the
  full pass; returns the evaluator."""
  rng = np.random.default_rng(pixels)
  images = rng.integers(0, 256, (3, *image_shape), dtype=np.uint8)
  perturbation = _perturbations(rng, count, pixels, *image_shape)
  owner = jnp.asarray(rng.integers(0, 3, count), jnp.int32)
  evaluator = incremental.Evaluator(predict, image_shape, pixels)
  got = jax.jit(
    lambda i, o, p: evaluator.logits(evaluator.clean_maps(i), o, p)
  )(images, owner, perturbation)
  perturbed = pixels_lib.inject(jnp.asarray(images)[owner], perturbation)
  want = predict(perturbed.astype(jnp.float32))
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * scale)
  return evaluator


@functools.cache
def _victim(name):
  return make_predict(create_model(name, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
  "name, pixels", [("allconv", 1), ("nin", 3), ("vgg16", 2)]
)
def test_victims_exact(name, pixels):
  evaluator = _check_exact(_victim(name), (32, 32, 3), pixels)
  assert evaluator.windowed_ops > 0
  assert evaluator.flops < evaluator.full_flops


def _torch_style_net(seed=0):
  """NCHW / OIHW like a converted PyTorch model: a strided conv, a
  residual block, 3x3 max-pool with padding, average pool, global mean and
  a dense head."""
  keys = jax.random.split(jax.random.key(seed), 4)
  stem = jax.random.normal(keys[0], (16, 3, 3, 3)) * 0.2
  inner = jax.random.normal(keys[1], (16, 16, 3, 3)) * 0.1
  bias = jax.random.normal(keys[2], (16,))
  dense = jax.random.normal(keys[3], (16, 5))

  def conv(x, kernel, stride):
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      (stride, stride),
      ((1, 1), (1, 1)),
      dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )

  def predict(images):
    x = jnp.transpose(images / 255.0, (0, 3, 1, 2))
    x = jax.nn.relu(conv(x, stem, 1) + bias[None, :, None, None])
    x = x + jax.nn.gelu(conv(x, inner, 1))  # a residual: goes whole
    x = jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), "SAME"
    )
    x = jax.lax.reduce_window(
      x, 0.0, jax.lax.add, (1, 1, 2, 2), (1, 1, 2, 2), "VALID"
    )
    return jnp.mean(x, axis=(2, 3)) @ dense

  return predict


@pytest.mark.parametrize("pixels", [1, 3])
def test_torch_style_net_exact(pixels):
  evaluator = _check_exact(_torch_style_net(), (20, 20, 3), pixels)
  assert evaluator.windowed_ops > 0


def test_spatial_constant_and_padding_fall_back_exactly():
  """A constant that varies over the map and an explicit pad are not
  windowed: the map goes whole there and the logits stay exact."""
  key = jax.random.key(1)
  position = jax.random.normal(key, (1, 16, 16, 3))
  kernel = jax.random.normal(jax.random.fold_in(key, 1), (3, 3, 3, 4))

  def predict(images):
    x = jax.nn.relu(images / 255.0 - 0.5)
    x = jnp.pad(x + position, ((0, 0), (2, 2), (2, 2), (0, 0)))
    x = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.max(x, axis=(1, 2))

  _check_exact(predict, (16, 16, 3), 2)


def test_dense_model_has_nothing_to_gain():
  weights = jax.random.normal(jax.random.key(0), (8 * 8 * 3, 4))

  def predict(images):
    return images.reshape(images.shape[0], -1) @ weights

  evaluator = _check_exact(predict, (8, 8, 3), 1)
  assert evaluator.windowed_ops == 0
  assert not incremental_choice.resolve(
    None, predict, (8, 8, 3), 1, 10**6, num_images=10**3
  )
  images = np.zeros((2, 8, 8, 3), np.uint8)
  result = pixeljax.corner_attack(
    predict, images, np.zeros(2, int), incremental=None
  )
  assert not result.incremental.any()


def _conv_net(seed=0):
  """Two 3x3 convolutions and a 2x2 max-pool."""
  keys = jax.random.split(jax.random.key(seed), 3)
  first = jax.random.normal(keys[0], (3, 3, 3, 12)) * 0.3
  second = jax.random.normal(keys[1], (3, 3, 12, 12)) * 0.2
  dense = jax.random.normal(keys[2], (12, 10))

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  def predict(images):
    x = jax.nn.relu(conv((images - 128.0) / 64.0, first))
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = jax.nn.relu(conv(x, second))
    return jnp.mean(x, axis=(1, 2)) @ dense

  return predict


def _same_attack(attack, **options):
  predict = _conv_net()
  images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8)
  labels = np.argmax(predict(images.astype(np.float32)), axis=-1)
  full = attack(predict, images, labels, incremental=False, **options)
  windowed = attack(predict, images, labels, incremental=True, **options)
  assert not full.incremental.any() and windowed.incremental.all()
  for field in pixeljax.AttackResult._fields:
    want, got = getattr(full, field), getattr(windowed, field)
    if field == "incremental":
      continue
    if np.issubdtype(np.asarray(want).dtype, np.floating):
      # The same search; its reported probabilities come from the final
      # full pass, compiled with other convolutions (attack_program_options).
      np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=field)
    else:
      np.testing.assert_array_equal(got, want, err_msg=field)
  return windowed


def test_same_corner_search_three_pixels():
  """The scan (d = 1), then rounds of 3-pixel candidates."""
  result = _same_attack(
    pixeljax.corner_search, key=jax.random.key(0), pixels=3, max_queries=2600
  )
  assert result.generations.max() > 0


def test_auto_decides_a_small_attack_from_counted_flops():
  predict = _conv_net()
  evaluator = incremental.evaluator(predict, (24, 24, 3), 1)
  assert incremental_choice.flop_ratio(evaluator) >= 2
  on_backend = jax.default_backend() in incremental_choice.AUTO_BACKENDS
  large = incremental_choice.AUTO_MIN_BUDGET
  small = large - 1
  resolve = functools.partial(incremental_choice.resolve, None, predict)
  assert resolve((24, 24, 3), 1, large) == on_backend
  assert not resolve((24, 24, 3), 1, small)
  assert incremental_choice.resolve(True, predict, (24, 24, 3), 1, small)
  assert not incremental_choice.resolve(False, predict, (24, 24, 3), 1, large)


@pytest.mark.parametrize("speedup", [0.9, 1.5])
def test_auto_times_both_paths_for_a_large_attack(monkeypatch, speedup):
  if jax.default_backend() not in incremental_choice.AUTO_BACKENDS:
    pytest.skip("automatic incremental evaluation is off on this backend")
  predict = _conv_net()
  trials = []

  def measured(*args):
    trials.append(args)
    return speedup

  monkeypatch.setattr(incremental_choice, "measured_speedup", measured)
  images = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), np.uint8)
  labels = np.asarray(jnp.argmax(predict(images.astype(np.float32)), -1))
  # 6 images x 8 x (5000 + 1) evaluations: enough to pay for a trial.
  result = pixeljax.batched_attack(
    predict,
    images,
    labels,
    key=jax.random.key(0),
    popsize=8,
    maxiter=5000,
    batch_size=16,
    early_stop=True,
  )
  assert trials == [(predict, (24, 24, 3), 1, 16, 8)]
  assert (result.incremental == (speedup >= 1.05)).all()


def test_the_trial_times_the_attacks_scoring():
  predict = _conv_net()
  speedup = incremental_choice.measured_speedup(predict, (24, 24, 3), 2, 64, 32)
  assert np.isfinite(speedup) and speedup > 0
  # Cached: an attack that asks again does not time again.
  assert (
    incremental_choice.measured_speedup(predict, (24, 24, 3), 2, 64, 32)
    == speedup
  )


def test_a_model_it_cannot_trace_at_batch_one_is_explained():
  net = _conv_net()

  def pairs_only(images):
    if images.shape[0] == 1:
      raise ValueError("this model wants pairs")
    return net(images)

  images = np.full((2, 24, 24, 3), 90, np.uint8)
  labels = np.asarray(jnp.argmax(net(images.astype(np.float32)), -1))
  options = dict(key=jax.random.key(0), popsize=8, maxiter=0)
  with pytest.raises(ValueError, match="batch 1.*this model wants pairs"):
    pixeljax.batched_attack(
      pairs_only, images, labels, incremental=True, **options
    )
  assert not incremental_choice.resolve(
    None, pairs_only, (24, 24, 3), 1, 10**6, num_images=10**3
  )
  full = pixeljax.batched_attack(pairs_only, images, labels, **options)
  assert full.success.shape == (2,)


def test_incremental_option_checked():
  images = np.zeros((1, 8, 8, 3), np.uint8)
  with pytest.raises(TypeError, match="incremental"):
    pixeljax.corner_attack(
      _conv_net(), images, np.zeros(1, int), incremental="yes"
    )


@pytest.mark.parametrize("on", [False, True])
def test_incremental_programs_compile_without_ynnpack(monkeypatch, on):
  """YNNPACK runs small windows' convolutions slowly: an incremental
  program is compiled with XLA's own; a full-pass one keeps the process's
  setting."""
  options = []
  run_sharded = sharding.run_sharded

  def spy(mesh, function, static, sharded, replicated, program_options=()):
    options.append(program_options)
    return run_sharded(
      mesh, function, static, sharded, replicated, program_options
    )

  monkeypatch.setattr(sharding, "run_sharded", spy)
  predict = _conv_net()
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)
  pixeljax.batched_attack(
    predict,
    images,
    np.zeros(2, int),
    key=jax.random.key(0),
    popsize=8,
    maxiter=1,
    incremental=on,
  )
  no_ynnpack = (("xla_cpu_experimental_ynn_fusion_type", ""),)
  assert set(options) == ({(), no_ynnpack} if on else {()})
