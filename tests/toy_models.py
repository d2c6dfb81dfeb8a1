"""Hand-made models with known answers, for the engine's tests.

Each follows the model contract: float32 [B, H, W, C] raw pixels 0..255 in,
float32 [B, K] logits out.
"""

import jax
import jax.numpy as jnp
import numpy as np


def one_pixel_switch(x: int, y: int, colour, *, width: float = 40.0):
  """Two classes; class 1 wins only near ``colour`` at pixel (x, y).

  The logit of class 1 falls with the distance of that pixel's colour from
  ``colour``: the fitness guides DE to the colour once it has the position.
  """
  colour = jnp.asarray(colour, jnp.float32)

  def predict(images):
    distance = jnp.sqrt(jnp.sum((images[:, y, x, :] - colour) ** 2, axis=-1))
    switch = (width - distance) / 10.0
    return jnp.stack([jnp.zeros_like(switch), switch], axis=-1)

  return predict


def colour_votes(num_classes: int = 3):
  """Class c's logit is the brightest value of channel c over the image / 25.

  Targeted: one pixel saturating channel t (and darkening the others there)
  makes t the argmax on a dim image.
  """

  def predict(images):
    peak = jnp.max(images, axis=(1, 2))[:, :num_classes]
    return peak / 25.0

  return predict


def linear_model(
  height: int, width: int, channels: int, num_classes: int, seed: int
):
  """A random linear classifier in JAX and the same one in NumPy."""
  rng = np.random.default_rng(seed)
  weights = rng.normal(size=(height * width * channels, num_classes)) * 0.1
  weights = weights.astype(np.float32)

  def predict(images):
    flat = images.reshape(images.shape[0], -1) / 255.0
    return flat @ jnp.asarray(weights)

  def predict_numpy(images):
    flat = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    return flat @ weights

  return predict, predict_numpy


def small_cnn(channels: int, num_classes: int = 10, seed: int = 0):
  """A random strided conv + global pool + dense: cheap on any image size."""
  key = jax.random.key(seed)
  kernel = jax.random.normal(key, (5, 5, channels, 8)) * 0.1
  dense = jax.random.normal(jax.random.fold_in(key, 1), (8, num_classes))

  def predict(images):
    hidden = jax.lax.conv_general_dilated(
      (images - 128.0) / 64.0,
      kernel,
      (4, 4),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jnp.mean(jax.nn.relu(hidden), axis=(1, 2)) @ dense

  return predict


def counting(predict):
  """``predict`` that also records each model call's batch size.

  Returns (the wrapped predict, the list it appends batch sizes to). The
  count comes from a host callback, so it sees the calls the compiled code
  really makes.
  """
  seen = []

  def wrapped(images):
    jax.debug.callback(lambda batch: seen.append(batch.shape[0]), images)
    return predict(images)

  return wrapped, seen
