"""Unit tests of the candidate encoding (pixeljax/attack/pixels.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax.attack import pixels


def test_length_and_bounds():
  assert pixels.candidate_length(3, 3) == 15
  lower, upper = pixels.bounds(2, 8, 6, 3)
  np.testing.assert_array_equal(lower, np.zeros(10))
  np.testing.assert_array_equal(upper, [6, 8, 255, 255, 255] * 2)
  clipped = pixels.clip_to_bounds(
    jnp.array([[-3.0, 9.0, 300.0, -1.0, 7.0]]), 8, 6, 3
  )
  np.testing.assert_array_equal(clipped, [[0.0, 8.0, 255.0, 0.0, 7.0]])


def test_initial_population_follows_the_paper():
  start = np.asarray(pixels.sample_initial(jax.random.key(0), 4000, 2, 8, 6, 3))
  assert start.shape == (4000, 10) and start.dtype == np.float32
  shaped = start.reshape(4000, 2, 5)
  x, y, colour = shaped[..., 0], shaped[..., 1], shaped[..., 2:]
  assert x.min() >= 0 and x.max() <= 6 and y.min() >= 0 and y.max() <= 8
  assert abs(x.mean() - 3) < 0.15 and abs(y.mean() - 4) < 0.2
  assert colour.min() == 0 and colour.max() == 255  # clipped N(128, 127)
  inside = colour[(colour > 0) & (colour < 255)]
  assert abs(np.median(inside) - 128) < 5
  # P(N(128, 127) < 0) = P(z < -1.008) ~ 0.157.
  assert 0.14 < np.mean(colour == 0) < 0.175


def test_decode_floors_coordinates_and_rounds_colours():
  candidate = jnp.array([[2.99, 0.2, 10.4, 10.5, 254.6]])
  decoded = pixels.decode(candidate, 4, 3, 3)
  assert decoded.dtype == jnp.int32 and decoded.shape == (1, 1, 5)
  # Round half to even: 10.5 -> 10.
  np.testing.assert_array_equal(decoded[0, 0], [2, 0, 10, 10, 255])
  # x = W (the upper bound) is the last column.
  edge = pixels.decode(jnp.array([[3.0, 4.0, 0.0, 0.0, 0.0]]), 4, 3, 3)
  np.testing.assert_array_equal(edge[0, 0, :2], [2, 3])


def test_colliding_pixels_take_the_last_colour():
  candidate = jnp.array(
    [1.2, 1.0, 10, 10, 10]  # (1, 1)
    + [0.0, 0.0, 20, 20, 20]  # (0, 0)
    + [1.7, 1.5, 30, 30, 30]  # (1, 1) again: the last one at (1, 1)
    + [0.3, 0.9, 40, 40, 40]  # (0, 0) again: the last one at (0, 0)
  )[None]
  decoded = np.asarray(pixels.decode(candidate, 4, 4, 3))[0]
  np.testing.assert_array_equal(
    decoded[:, :2], [[1, 1], [0, 0], [1, 1], [0, 0]]
  )
  np.testing.assert_array_equal(decoded[:, 2], [30, 40, 30, 40])


def test_three_way_collision_and_no_collision():
  three = jnp.array([0.5, 0.5, 1, 2, 3] + [0.1, 0.2, 4, 5, 6] * 2)[None]
  three = three.at[0, 12:].set(jnp.array([7.0, 8.0, 9.0]))
  decoded = np.asarray(pixels.decode(three, 2, 2, 3))[0]
  np.testing.assert_array_equal(decoded[:, 2:], [[7, 8, 9]] * 3)
  apart = jnp.array([0.0, 0.0, 1, 2, 3, 1.0, 1.0, 4, 5, 6])[None]
  decoded = np.asarray(pixels.decode(apart, 2, 2, 3))[0]
  np.testing.assert_array_equal(decoded[:, 2:], [[1, 2, 3], [4, 5, 6]])


def test_inject_writes_exactly_the_decoded_pixels():
  images = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
  perturbation = jnp.array(
    [[[3, 2, 255, 0, 7], [0, 0, 1, 2, 3]], [[1, 1, 9, 9, 9], [1, 1, 9, 9, 9]]],
    jnp.int32,
  )
  out = np.asarray(pixels.inject(jnp.asarray(images), perturbation))
  assert out.dtype == np.uint8
  expected = images.copy()
  expected[0, 2, 3] = (255, 0, 7)
  expected[0, 0, 0] = (1, 2, 3)
  expected[1, 1, 1] = (9, 9, 9)
  np.testing.assert_array_equal(out, expected)
  # Float images (raw 0..255 values) stay float.
  out = np.asarray(
    pixels.inject(jnp.asarray(images, jnp.float32), perturbation)
  )
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, expected.astype(np.float32))
