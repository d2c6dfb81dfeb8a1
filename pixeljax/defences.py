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

import jax.numpy as jnp
import numpy as np

_COLOUR_MAX = 255.0


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer):
    raise TypeError(f"{name} must be an int, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be at least {minimum}, got {value}")
  return int(value)


def _neighbourhoods(images, size: int) -> list:
  """The size * size shifts of a size x size window over float32
  [B, H, W, C] images, each [B, H, W, C] (edge pixels repeated past the
  border)."""
  before, after = (size - 1) // 2, size // 2
  height, width = images.shape[1:3]
  padded = jnp.pad(
    images, ((0, 0), (before, after), (before, after), (0, 0)), mode="edge"
  )
  return [
    padded[:, dy : dy + height, dx : dx + width]
    for dy in range(size)
    for dx in range(size)
  ]


def _sorted(values: list) -> list:
  """The arrays of ``values`` sorted elementwise (odd-even transposition).

  Only minima and maxima: XLA fuses them into one pass over the images,
  many times faster on a CPU than ``jnp.sort`` over a stacked axis.
  """
  values = list(values)
  for turn in range(len(values)):
    for i in range(turn % 2, len(values) - 1, 2):
      low = jnp.minimum(values[i], values[i + 1])
      values[i + 1] = jnp.maximum(values[i], values[i + 1])
      values[i] = low
  return values


def median(images, size: int = 3):
  """The size x size median filter of float [B, H, W, C] images, per
  channel; borders repeat the edge pixels. Even sizes average the two middle
  values."""
  size = _check_int("size", size, 1)
  ordered = _sorted(_neighbourhoods(images.astype(jnp.float32), size))
  count = len(ordered)
  return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2


def quantise(images, bits: int = 4):
  """Colours of float [B, H, W, C] images (0..255) rounded to 2**bits
  evenly spaced levels from 0 to 255."""
  bits = _check_int("bits", bits, 1)
  step = _COLOUR_MAX / (2.0**bits - 1.0)  # 255 / levels: exact at 8 bits
  clipped = jnp.clip(images.astype(jnp.float32), 0.0, _COLOUR_MAX)
  return jnp.round(clipped / step) * step


def blur(images, sigma: float = 1.0):
  """A Gaussian blur of float [B, H, W, C] images with standard deviation
  ``sigma`` pixels, over a window of 2 * ceil(2 sigma) + 1 pixels; borders
  repeat the edge pixels."""
  if not isinstance(sigma, int | float | np.floating) or not sigma > 0:
    raise ValueError(f"sigma must be a number above 0, got {sigma!r}")
  radius = int(np.ceil(2 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps = jnp.asarray(taps / taps.sum(), jnp.float32)
  window = _neighbourhoods(images.astype(jnp.float32), 2 * radius + 1)
  weights = (taps[:, None] * taps[None, :]).reshape(-1)
  return sum(w * shifted for w, shifted in zip(weights, window))


def _wrap(predict, transform, name: str):
  if not callable(predict):
    raise TypeError(f"predict must be callable, got {predict!r}")

  def defended(images):
    return predict(transform(images))

  defended.__name__ = f"{name}({getattr(predict, '__name__', 'predict')})"
  return defended


def median_filter(predict, size: int = 3) -> Callable:
  """``predict`` behind a size x size median filter (see ``median``)."""
  size = _check_int("size", size, 1)
  return _wrap(predict, lambda x: median(x, size), f"median{size}")


def bit_depth(predict, bits: int = 4) -> Callable:
  """``predict`` behind a colour-depth reduction to ``bits`` bits per
  channel (see ``quantise``)."""
  bits = _check_int("bits", bits, 1)
  return _wrap(predict, lambda x: quantise(x, bits), f"bits{bits}")


def gaussian_blur(predict, sigma: float = 1.0) -> Callable:
  """``predict`` behind a Gaussian blur (see ``blur``)."""
  blur(jnp.zeros((1, 1, 1, 1)), sigma)  # checks sigma now, not when traced
  return _wrap(predict, lambda x: blur(x, sigma), f"blur{sigma:g}")


# name -> (wrapper, type of its one parameter, the parameter's default)
DEFENCES = {
  "median": (median_filter, int, 3),
  "bits": (bit_depth, int, 4),
  "blur": (gaussian_blur, float, 1.0),
}


def canonical_spec(spec: str) -> str:
  """``spec`` as "name:value" with the default value filled in ("none"
  stays "none"); ``ValueError`` naming what is known for anything else."""
  name, _, value = spec.partition(":")
  if name == "none" and not value:
    return "none"
  if name not in DEFENCES:
    raise ValueError(
      f"defence {spec!r}: expected none or one of "
      f"{', '.join(f'{n}[:{d}]' for n, (_, _, d) in DEFENCES.items())}"
    )
  _, kind, default = DEFENCES[name]
  try:
    parsed = kind(value) if value else default
  except ValueError:
    expected = "an int" if kind is int else "a number"
    raise ValueError(
      f"defence {spec!r}: {name}'s parameter must be {expected}, got {value!r}"
    ) from None
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
