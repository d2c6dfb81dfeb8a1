"""Input-transform defences: what each transform does to known images, and
that the wrappers keep the model contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixeljax import defences


def reference_median(image, size):
  """Per-channel median of [H, W, C] over size x size, edges repeated."""
  before, after = (size - 1) // 2, size // 2
  padded = np.pad(image, ((before, after), (before, after), (0, 0)), "edge")
  out = np.empty(image.shape, np.float64)
  for y in range(image.shape[0]):
    for x in range(image.shape[1]):
      window = padded[y : y + size, x : x + size].reshape(-1, image.shape[2])
      out[y, x] = np.median(window, axis=0)
  return out


@pytest.mark.parametrize("size", [2, 3, 5])
def test_median_matches_a_reference(size):
  image = np.random.default_rng(size).integers(0, 256, (7, 6, 3))
  got = np.asarray(defences.median(jnp.asarray(image[None], jnp.float32), size))
  np.testing.assert_allclose(got[0], reference_median(image, size))


def test_median_votes_out_two_changed_pixels_but_not_five():
  image = np.full((1, 6, 6, 3), 100.0, np.float32)
  two = image.copy()
  two[0, 2, 2] = two[0, 2, 3] = 255
  np.testing.assert_array_equal(defences.median(two, 3), image)
  five = image.copy()
  for y, x in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3)]:
    five[0, y, x] = 255
  assert np.asarray(defences.median(five, 3))[0, 2, 2, 0] == 255


def test_quantise_keeps_the_extremes_and_rounds_to_levels():
  values = jnp.array([0.0, 8.0, 9.0, 100.0, 255.0]).reshape(1, 1, 5, 1)
  got = np.asarray(defences.quantise(values, 4)).ravel()
  np.testing.assert_allclose(got, [0, 0, 17, 102, 255])
  assert np.array_equal(np.asarray(defences.quantise(values, 8)), values)


def test_blur_keeps_a_constant_image_and_spreads_one_pixel():
  image = np.full((1, 9, 9, 3), 50.0, np.float32)
  np.testing.assert_allclose(defences.blur(image, 1.0), image, rtol=1e-6)
  spike = np.zeros((1, 9, 9, 1), np.float32)
  spike[0, 4, 4] = 255
  blurred = np.asarray(defences.blur(spike, 1.0))
  assert blurred.sum() == pytest.approx(255, rel=1e-5)
  assert blurred[0, 4, 4] < 255 / 5 and blurred[0, 3, 4] > 0


def test_wrappers_keep_the_contract_under_jit():
  def predict(images):
    return images.reshape(images.shape[0], -1)[:, :4]

  images = jnp.asarray(
    np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3)), jnp.float32
  )
  for spec in ("none", "median", "bits:3", "blur:0.5"):
    defended = defences.from_spec(predict, spec)
    logits = jax.jit(defended)(images)
    assert logits.shape == (2, 4) and logits.dtype == jnp.float32
  assert defences.median_filter(predict).__name__ == "median3(predict)"


def test_specs_are_checked():
  assert defences.canonical_spec("median") == "median:3"
  assert defences.canonical_spec("blur:2") == "blur:2"
  assert defences.canonical_spec("none") == "none"
  with pytest.raises(ValueError, match="expected none or one of"):
    defences.canonical_spec("jpeg")
  with pytest.raises(ValueError, match="must be an int"):
    defences.canonical_spec("median:x")
  with pytest.raises(ValueError, match="size must be at least 1"):
    defences.median_filter(lambda x: x, 0)
  with pytest.raises(ValueError, match="sigma"):
    defences.gaussian_blur(lambda x: x, -1.0)
