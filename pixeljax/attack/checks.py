"""Checks on ``batched_attack``'s arguments, run before anything compiles.

Each failure raises a ``ValueError`` or ``TypeError`` that names the argument,
what was expected and what came.
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax.attack import evaluate

# Counts inside the compiled searches (queries, rounds, candidate indices) are
# int32.
INT32_MAX = 2**31 - 1


def _describe(value) -> str:
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    return f"array of shape {tuple(value.shape)} and dtype {value.dtype}"
  return f"{type(value).__name__} {value!r}"


def check_int(name: str, value, *, minimum: int, maximum: int | None = None):
  """Returns ``value`` as int if it is an integer in [minimum, maximum]."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an int, got {_describe(value)}")
  if value < minimum or (maximum is not None and value > maximum):
    upper = "" if maximum is None else f" and at most {maximum}"
    raise ValueError(f"{name} must be at least {minimum}{upper}, got {value}")
  return int(value)


def check_int32_count(what: str, count: int):
  """Raises ``ValueError`` if ``count`` (of ``what``) overflows int32."""
  if count > INT32_MAX:
    raise ValueError(
      f"{what} comes to {count}, more than 2**31 - 1, the "
      "most the compiled search counts; use smaller values"
    )


def check_float(
  name: str,
  value,
  *,
  minimum: float,
  maximum: float,
  allow_minimum: bool = True,
) -> float:
  """Returns ``value`` as float if it is a finite number in range."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a float, got {_describe(value)}")
  low_ok = value >= minimum if allow_minimum else value > minimum
  if not (np.isfinite(value) and low_ok and value <= maximum):
    low = "[" if allow_minimum else "("
    raise ValueError(
      f"{name} must be in {low}{minimum}, {maximum}], got {value}"
    )
  return float(value)


def check_images(images) -> np.ndarray:
  """uint8 [N, H, W, C] from uint8 or integral float images in 0..255."""
  if not hasattr(images, "shape") or not hasattr(images, "dtype"):
    raise TypeError(
      f"images must be an array [N, H, W, C], got {_describe(images)}"
    )
  images = np.asarray(images)
  if images.ndim != 4 or 0 in images.shape:
    raise ValueError(
      f"images must be a non-empty array [N, H, W, C], got shape {images.shape}"
    )
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(
    images.dtype, np.integer
  ):
    raise TypeError(
      f"images must be uint8 or hold integers 0..255, got dtype {images.dtype}"
    )
  if not np.all(np.isfinite(images)):
    raise ValueError("images must hold integers 0..255, got NaN or inf")
  if (
    images.min() < 0
    or images.max() > 255
    or not np.array_equal(images, np.round(images))
  ):
    raise ValueError(
      f"images must hold integers 0..255 (the model contract takes raw "
      f"pixel values), got values in [{images.min()}, {images.max()}]"
      f"{'' if np.array_equal(images, np.round(images)) else ' with fractions'}"
    )
  return images.astype(np.uint8)


def check_classes(name: str, values, count: int, num_classes: int):
  """int32 [count] class indices in [0, num_classes)."""
  array = np.asarray(values)
  if not np.issubdtype(array.dtype, np.integer):
    raise TypeError(
      f"{name} must hold integer class indices, got {_describe(values)}"
    )
  if array.shape != (count,):
    raise ValueError(
      f"{name} must have shape ({count},), one per image, got {array.shape}"
    )
  bad = (array < 0) | (array >= num_classes)
  if np.any(bad):
    raise ValueError(
      f"{name} must be in [0, {num_classes}) (the model has "
      f"{num_classes} classes), got {array[bad][:5].tolist()}"
    )
  return array.astype(np.int32)


def check_image_ids(image_ids, count: int):
  """int32 [count] non-negative ids that seed each image's random stream."""
  if image_ids is None:
    return np.arange(count, dtype=np.int32)
  array = np.asarray(image_ids)
  if not np.issubdtype(array.dtype, np.integer) or array.shape != (count,):
    raise ValueError(
      f"image_ids must be integers of shape ({count},), got "
      f"{_describe(image_ids)}"
    )
  if np.any(array < 0) or np.any(array >= 2**31):
    raise ValueError(
      f"image_ids must be in [0, 2**31), got [{array.min()}, {array.max()}]"
    )
  return array.astype(np.int32)


def check_key(key):
  """A JAX PRNG key: a typed key or a raw uint32 [2] one."""
  if isinstance(key, jax.Array) and jnp.issubdtype(
    key.dtype, jax.dtypes.prng_key
  ):
    if key.shape != ():
      raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
    return key
  array = np.asarray(key) if key is not None else None
  if array is None or array.dtype != np.uint32 or array.shape != (2,):
    raise TypeError(
      "key must be a PRNG key (jax.random.key(seed) or "
      f"jax.random.PRNGKey(seed)), got {_describe(key)}"
    )
  return jnp.asarray(array)


def model_batch_sizes(batch_size: int, round_sizes) -> tuple:
  """Every batch size a search calls ``predict`` with, sorted.

  Scoring runs full chunks of ``batch_size`` and the rest of a round in
  chunks of ``min(r, batch_size)`` for each candidates-per-round ``r`` of
  ``round_sizes``; clean images and re-checks go in ``RECHECK_BATCH``.
  """
  sizes = {batch_size, evaluate.RECHECK_BATCH}
  sizes.update(min(r, batch_size) for r in round_sizes)
  return tuple(sorted(sizes))


def check_predict(predict, image_shape, batch_sizes) -> int:
  """Checks that ``predict`` maps float32 [B, H, W, C] to float [B, K].

  Checked at each B of ``batch_sizes`` (the sizes the search will use), with
  ``jax.eval_shape``, so nothing is compiled or run. Returns K.
  """
  if not callable(predict):
    raise TypeError(f"predict must be callable, got {_describe(predict)}")
  works_on = (
    f" (it must take any batch size: the search calls it on "
    f"batches of {', '.join(map(str, batch_sizes))})"
  )
  num_classes = None
  for batch_size in batch_sizes:
    probe = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
    try:
      out = jax.eval_shape(predict, probe)
    except Exception as error:  # any tracing failure is the model's
      raise ValueError(
        f"predict could not be traced on float32 images of shape "
        f"{probe.shape}{works_on}: {type(error).__name__}: {error}"
      ) from error
    if (
      not hasattr(out, "shape")
      or len(out.shape) != 2
      or out.shape[0] != batch_size
      or out.shape[1] < 2
      or not jnp.issubdtype(out.dtype, jnp.floating)
      or out.shape[1] != (num_classes or out.shape[1])
    ):
      expected = "K >= 2" if num_classes is None else f"K = {num_classes}"
      raise ValueError(
        f"predict must return float logits of shape [{batch_size}, K] with "
        f"{expected} for images of shape {probe.shape}{works_on}, got "
        f"{_describe(out)}"
      )
    num_classes = int(out.shape[1])
  return num_classes


def check_bool(name: str, value) -> bool:
  """Returns ``value`` if it is a bool (not merely truthy)."""
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be a bool, got {value!r}")
  return value


def check_targets(targets, labels, num_classes: int):
  """int32 [N] target classes, each different from its image's label."""
  targets = check_classes("targets", targets, len(labels), num_classes)
  same = np.flatnonzero(targets == labels)
  if same.size:
    raise ValueError(
      f"targets must differ from labels, but they are equal "
      f"for images {same[:5].tolist()}"
    )
  return targets


def check_finite_logits(logits: np.ndarray, first_index: int = 0):
  """Raises if the model gave NaN or inf for clean images; float [N, K] in."""
  bad = np.flatnonzero(~np.all(np.isfinite(logits), axis=-1))
  if bad.size:
    raise ValueError(
      f"predict returned NaN or inf logits for the clean "
      f"images {(bad[:5] + first_index).tolist()}"
    )
