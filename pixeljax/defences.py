"""Input-transform defences against sparse changes, as ``predict`` wrappers.

Each function takes a model ``predict(images) -> logits`` (float32
[B, H, W, C] holding 0..255) and returns another with the same contract that
transforms the images first. Black-box searches query the wrapped model, so
an attack or an ``l0_robustness`` evaluation through a wrapper is adaptive by
construction: it optimises against the defence and the model together.

- ``median_filter``: each pixel becomes the median of its size x size
  neighbourhood, per channel. A pixel changed alone is an outlier among
  its neighbours and is voted out; the spatial smoothing of feature
  squeezing (Xu, Evans and Qi, NDSS 2018).
- ``bit_depth``: colours quantised to 2**bits levels per channel (feature
  squeezing's colour-depth reduction): small colour changes vanish, but
  an extreme colour survives.
- ``gaussian_blur``: a Gaussian low-pass filter, spreading a changed pixel's
  energy over its neighbours.

``from_spec("median:3")`` builds one from the command line's notation.
"""

from collections.abc import Callable
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_COLOUR_MAX = 255.0
# Colour levels cannot be finer than a uint8 pixel's; past ~140 bits the
# level spacing even underflows to 0 in float32 (NaN images).
MAX_BITS = 8
# The median's pruned Batcher network of size**2 values: 702 comparators at
# size 9 (the odd-even transposition sort it replaced had 3240 and took
# minutes to compile). On 256 CIFAR images (2-core CPU) size 9 compiles in
# 0.7 s and runs in 0.13 s; size 11 1.4 s and 0.4 s; size 15 15 s and 8 s.
MAX_MEDIAN_SIZE = 9
# A 33-pixel window (2 * ceil(2 sigma) + 1) is wider than a CIFAR image;
# blurred that much, any image has lost what told its class.
MAX_SIGMA = 8.0


def _check_int(name: str, value, minimum: int, maximum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer):
    raise TypeError(f"{name} must be an int, got {value!r}")
  if not minimum <= value <= maximum:
    raise ValueError(f"{name} must be {minimum}..{maximum}, got {value}")
  return int(value)


def _check_sigma(sigma) -> float:
  if isinstance(sigma, bool) or not isinstance(
    sigma, int | float | np.integer | np.floating
  ):
    raise TypeError(f"sigma must be a number, got {sigma!r}")
  if not 0 < sigma <= MAX_SIGMA:  # NaN fails too
    raise ValueError(
      f"sigma must be above 0 and at most {MAX_SIGMA:g}, got {sigma}"
    )
  return float(sigma)


def _check_window(images, size: int, what: str):
  """Refuses a size x size window larger than the [B, H, W, C] images."""
  height, width = images.shape[1:3]
  if size > min(height, width):
    raise ValueError(f"{what} is larger than the {height} x {width} images")


def _shifts(images, size: int, axis: int) -> list:
  """The ``size`` shifts of a size-pixel window along ``axis`` of
  ``images``, each of their shape (edge pixels repeated past the border)."""
  pad = [(0, 0)] * images.ndim
  pad[axis] = ((size - 1) // 2, size // 2)
  padded = jnp.pad(images, pad, mode="edge")
  length = images.shape[axis]
  return [
    jax.lax.slice_in_dim(padded, d, d + length, axis=axis) for d in range(size)
  ]


def _neighbourhoods(images, size: int) -> list:
  """The size * size shifts of a size x size window over float32
  [B, H, W, C] images, each [B, H, W, C] (edge pixels repeated past the
  border)."""
  return [
    shifted
    for rows in _shifts(images, size, 1)
    for shifted in _shifts(rows, size, 2)
  ]


@functools.cache
def _batcher(count: int) -> tuple:
  """Comparators (i, j), i < j, of Batcher's odd-even merge sort of
  ``count`` values: the power of two's network, less the comparators past
  ``count`` (missing values act as +inf, which no comparator moves)."""
  pairs, p = [], 1
  while p < count:
    k = p
    while k:
      for j in range(k % p, count - k, 2 * k):
        for i in range(min(k, count - j - k)):
          if (i + j) // (2 * p) == (i + j + k) // (2 * p):
            pairs.append((i + j, i + j + k))
      k //= 2
    p *= 2
  return tuple(pairs)


@functools.cache
def _median_network(count: int) -> tuple:
  """(i, j, keep_min, keep_max) of the comparators of ``_batcher(count)``
  that the middle two outputs depend on, and which of their outputs."""
  needed, kept = {(count - 1) // 2, count // 2}, []
  for i, j in reversed(_batcher(count)):
    if i in needed or j in needed:
      kept.append((i, j, i in needed, j in needed))
      needed |= {i, j}
  return tuple(reversed(kept))


def median(images, size: int = 3):
  """The size x size median filter of float [B, H, W, C] images, per
  channel; borders repeat the edge pixels. Even sizes average the two middle
  values. ``size`` is 1..MAX_MEDIAN_SIZE (9) and at most H and W.

  A pruned sorting network of elementwise minima and maxima: XLA fuses them
  into passes over the images, many times faster on a CPU than ``jnp.sort``
  over a stacked axis, with no [..., size * size] stack in memory.
  """
  size = _check_int("size", size, 1, MAX_MEDIAN_SIZE)
  _check_window(images, size, f"the median's {size} x {size} window")
  values = _neighbourhoods(images.astype(jnp.float32), size)
  for i, j, keep_min, keep_max in _median_network(len(values)):
    low, high = values[i], values[j]
    if keep_min:
      values[i] = jnp.minimum(low, high)
    if keep_max:
      values[j] = jnp.maximum(low, high)
  count = len(values)
  return (values[(count - 1) // 2] + values[count // 2]) / 2


def quantise(images, bits: int = 4):
  """Colours of float [B, H, W, C] images (0..255) rounded to 2**bits
  evenly spaced levels from 0 to 255; ``bits`` is 1..MAX_BITS (8: the
  identity on integer colours)."""
  bits = _check_int("bits", bits, 1, MAX_BITS)
  step = _COLOUR_MAX / (2.0**bits - 1.0)  # 255 / levels: exact at 8 bits
  clipped = jnp.clip(images.astype(jnp.float32), 0.0, _COLOUR_MAX)
  return jnp.round(clipped / step) * step


def blur(images, sigma: float = 1.0):
  """A Gaussian blur of float [B, H, W, C] images with standard deviation
  ``sigma`` pixels (above 0, at most MAX_SIGMA = 8), over a window of
  2 * ceil(2 sigma) + 1 pixels, at most H and W; borders repeat the edge
  pixels. Separable: a pass along the rows, then one along the columns."""
  sigma = _check_sigma(sigma)
  radius = math.ceil(2 * sigma)
  window = 2 * radius + 1
  _check_window(images, window, f"blur {sigma:g}'s {window}-pixel window")
  images = images.astype(jnp.float32)
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps = (taps / taps.sum()).astype(np.float32)
  rows = sum(w * s for w, s in zip(taps, _shifts(images, window, 1)))
  return sum(w * s for w, s in zip(taps, _shifts(rows, window, 2)))


def _wrap(predict, transform, name: str):
  if not callable(predict):
    raise TypeError(f"predict must be callable, got {predict!r}")

  def defended(images):
    return predict(transform(images))

  defended.__name__ = f"{name}({getattr(predict, '__name__', 'predict')})"
  return defended


def median_filter(predict, size: int = 3) -> Callable:
  """``predict`` behind a size x size median filter (see ``median``)."""
  size = _check_int("size", size, 1, MAX_MEDIAN_SIZE)
  return _wrap(predict, lambda x: median(x, size), f"median{size}")


def bit_depth(predict, bits: int = 4) -> Callable:
  """``predict`` behind a colour-depth reduction to ``bits`` bits per
  channel (see ``quantise``)."""
  bits = _check_int("bits", bits, 1, MAX_BITS)
  return _wrap(predict, lambda x: quantise(x, bits), f"bits{bits}")


def gaussian_blur(predict, sigma: float = 1.0) -> Callable:
  """``predict`` behind a Gaussian blur (see ``blur``)."""
  sigma = _check_sigma(sigma)
  return _wrap(predict, lambda x: blur(x, sigma), f"blur{sigma:g}")


# name -> (wrapper, type of its one parameter, the parameter's default)
DEFENCES = {
  "median": (median_filter, int, 3),
  "bits": (bit_depth, int, 4),
  "blur": (gaussian_blur, float, 1.0),
}


def canonical_spec(spec: str) -> str:
  """``spec`` as "name:value" with the default value filled in ("none"
  stays "none"); ``ValueError`` naming what is known for anything else,
  a value out of the defence's range included."""
  name, _, value = spec.partition(":")
  if name == "none" and not value:
    return "none"
  if name not in DEFENCES:
    raise ValueError(
      f"defence {spec!r}: expected none or one of "
      f"{', '.join(f'{n}[:{d}]' for n, (_, _, d) in DEFENCES.items())}"
    )
  wrapper, kind, default = DEFENCES[name]
  try:
    parsed = kind(value) if value else default
  except ValueError:
    expected = "an int" if kind is int else "a number"
    raise ValueError(
      f"defence {spec!r}: {name}'s parameter must be {expected}, got {value!r}"
    ) from None
  try:
    wrapper(lambda x: x, parsed)  # the wrapper's own range checks
  except ValueError as e:
    raise ValueError(f"defence {spec!r}: {e}") from None
  return f"{name}:{parsed:g}" if kind is float else f"{name}:{parsed}"


def from_spec(predict, spec: str) -> Callable:
  """``predict`` behind the defence ``spec`` names: "none", "median[:size]",
  "bits[:bits]" or "blur[:sigma]" (e.g. "median:3")."""
  spec = canonical_spec(spec)
  if spec == "none":
    return predict
  name, _, value = spec.partition(":")
  wrapper, kind, _ = DEFENCES[name]
  return wrapper(predict, kind(value))


def check_fits(spec: str, image_shape) -> None:
  """Raises ``ValueError`` if the defence ``spec`` cannot filter images of
  ``image_shape`` (H, W, C): a window larger than the images. Traces only;
  nothing runs."""
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  jax.eval_shape(from_spec(lambda x: x, spec), images)
