"""Input-transform defences: what each transform does to known images, and
that the wrappers keep the model contract."""

import time

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


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_median_matches_a_reference(size):
  image = np.random.default_rng(size).integers(0, 256, (7, 6, 3))
  got = np.asarray(defences.median(jnp.asarray(image[None], jnp.float32), size))
  np.testing.assert_allclose(got[0], reference_median(image, size))


def test_median_at_the_cap_is_exact_and_quick():
  # The full sorting network of 81 values took minutes to compile.
  size = defences.MAX_MEDIAN_SIZE
  image = np.random.default_rng(0).random((size, size + 1, 2)) * 255
  start = time.perf_counter()
  got = defences.median(jnp.asarray(image[None], jnp.float32), size)
  assert time.perf_counter() - start < 20
  np.testing.assert_allclose(
    got[0], reference_median(image.astype(np.float32), size), rtol=1e-6
  )


def reference_blur(image, sigma):
  """The 2-D Gaussian blur of [H, W, C], edges repeated (see ``blur``)."""
  radius = int(np.ceil(2 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  kernel = np.outer(taps, taps) / taps.sum() ** 2
  padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), "edge")
  out = np.zeros(image.shape)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      shifted = padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
      out += kernel[dy, dx] * shifted
  return out


def test_blur_matches_a_reference():
  image = np.random.default_rng(1).integers(0, 256, (11, 12, 3))
  got = defences.blur(jnp.asarray(image[None], jnp.float32), 1.5)
  np.testing.assert_allclose(got[0], reference_blur(image, 1.5), rtol=1e-5)


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
  with pytest.raises(ValueError, match="size must be 1..9, got 0"):
    defences.median_filter(lambda x: x, 0)


def identity(images):
  return images.reshape(images.shape[0], -1)


@pytest.mark.parametrize(
  "wrapper, value, phrase",
  [
    (defences.bit_depth, 0, "bits must be 1..8, got 0"),
    (defences.bit_depth, 9, "bits must be 1..8, got 9"),
    (defences.bit_depth, 200, "bits must be 1..8, got 200"),
    (defences.median_filter, 0, "size must be 1..9, got 0"),
    (defences.median_filter, -1, "size must be 1..9, got -1"),
    (defences.median_filter, 10, "size must be 1..9, got 10"),
    (defences.median_filter, 999, "size must be 1..9, got 999"),
    (defences.gaussian_blur, 0.0, "sigma must be above 0 and at most 8"),
    (defences.gaussian_blur, -1, "got -1"),
    (defences.gaussian_blur, 8.5, "got 8.5"),
    (defences.gaussian_blur, 1e4, "got 10000.0"),
    (defences.gaussian_blur, float("inf"), "got inf"),
    (defences.gaussian_blur, float("nan"), "got nan"),
  ],
)
def test_values_out_of_range_are_refused_at_once(wrapper, value, phrase):
  with pytest.raises(ValueError, match=phrase):
    wrapper(identity, value)


def test_parameters_of_the_wrong_type_are_refused():
  with pytest.raises(TypeError, match="bits must be an int, got True"):
    defences.bit_depth(identity, True)
  with pytest.raises(TypeError, match="size must be an int, got 3.0"):
    defences.median_filter(identity, 3.0)
  with pytest.raises(TypeError, match="sigma must be a number, got '1'"):
    defences.gaussian_blur(identity, "1")


@pytest.mark.parametrize(
  "spec", ["bits:200", "bits:0", "median:999", "blur:1e4", "blur:nan"]
)
def test_specs_out_of_range_are_refused(spec):
  with pytest.raises(ValueError, match=f"defence '{spec}': "):
    defences.canonical_spec(spec)
  with pytest.raises(ValueError, match=f"defence '{spec}': "):
    defences.from_spec(identity, spec)


def test_every_accepted_bit_depth_keeps_colours_finite():
  colours = jnp.arange(256, dtype=jnp.float32).reshape(1, 1, 256, 1)
  for bits in range(1, defences.MAX_BITS + 1):
    got = np.asarray(defences.quantise(colours, bits))
    assert np.isfinite(got).all() and len(np.unique(got)) == 2**bits


@pytest.mark.parametrize("spec", ["median:5", "blur:1"])
def test_windows_larger_than_the_images_are_refused(spec):
  images = jnp.zeros((2, 4, 6, 3))
  with pytest.raises(ValueError, match="larger than the 4 x 6 images"):
    defences.check_fits(spec, images.shape[1:])
  with pytest.raises(ValueError, match="larger than the 4 x 6 images"):
    jax.jit(defences.from_spec(identity, spec))(images)
  defences.check_fits(spec, (5, 6, 3))  # fits
