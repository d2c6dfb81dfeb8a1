"""Candidate encoding: d pixels as one real vector, decoded to integer pixels.

A candidate is a float32 vector of length ``d * (2 + C)``: for each of the d
pixels, ``(x, y, c_1 .. c_C)`` with ``x`` the column in ``[0, W]``, ``y`` the
row in ``[0, H]`` and colours in ``[0, 255]``. Differential evolution works on
these real vectors; every candidate is decoded to integer coordinates and
integer colours before it touches an image, so the image a model scores is
exactly the uint8 image the attack returns.
"""

import jax
import jax.numpy as jnp

COLOUR_MAX = 255.0
# The paper starts colours from N(128, 127), clipped to the valid range.
COLOUR_INIT_MEAN = 128.0
COLOUR_INIT_STD = 127.0


def candidate_length(pixels: int, channels: int) -> int:
  """Length of one candidate vector for ``pixels`` pixels of ``channels``."""
  return pixels * (2 + channels)


def bounds(pixels: int, height: int, width: int, channels: int):
  """Lower and upper bounds, each float32 [L], of a candidate vector."""
  upper_one = jnp.array([width, height] + [COLOUR_MAX] * channels, jnp.float32)
  upper = jnp.tile(upper_one, pixels)
  return jnp.zeros_like(upper), upper


def clip_to_bounds(candidates, height: int, width: int, channels: int):
  """Clips float32 [..., L] candidates into the box that ``bounds`` gives."""
  pixels = candidates.shape[-1] // (2 + channels)
  lower, upper = bounds(pixels, height, width, channels)
  return jnp.clip(candidates, lower, upper)


def sample_initial(
  key, popsize: int, pixels: int, height: int, width: int, channels: int
):
  """The paper's initial population: float32 [popsize, L].

  Coordinates are uniform over the image; colours are N(128, 127), clipped.
  """
  key_xy, key_colour = jax.random.split(key)
  xy = jax.random.uniform(key_xy, (popsize, pixels, 2)) * jnp.array(
    [width, height], jnp.float32
  )
  colour = COLOUR_INIT_MEAN + COLOUR_INIT_STD * jax.random.normal(
    key_colour, (popsize, pixels, channels)
  )
  colour = jnp.clip(colour, 0.0, COLOUR_MAX)
  return jnp.concatenate([xy, colour], axis=-1).reshape(popsize, -1)


def decode(candidates, height: int, width: int, channels: int):
  """Decodes float32 [..., L] candidates to int32 [..., d, 2 + C] pixels.

  Coordinates are floored (so each of the W columns gets an equal share of
  [0, W]) and colours rounded. When two of a candidate's pixels land on the
  same position, the later one wins, and the earlier ones are given its colour
  too: the returned perturbation then says exactly what the image holds,
  whatever order the pixels are written in.
  """
  shaped = candidates.reshape(*candidates.shape[:-1], -1, 2 + channels)
  x = jnp.clip(jnp.floor(shaped[..., 0]), 0, width - 1)
  y = jnp.clip(jnp.floor(shaped[..., 1]), 0, height - 1)
  colour = jnp.clip(jnp.round(shaped[..., 2:]), 0, COLOUR_MAX)
  position = (y * width + x).astype(jnp.int32)  # [..., d]
  pixels = position.shape[-1]
  same = position[..., :, None] == position[..., None, :]  # [..., d, d]
  later = jnp.arange(pixels)[None, :] >= jnp.arange(pixels)[:, None]
  winner = jnp.max(jnp.where(same & later, jnp.arange(pixels), -1), axis=-1)
  colour = jnp.take_along_axis(colour, winner[..., None], axis=-2)
  return jnp.concatenate([x[..., None], y[..., None], colour], axis=-1).astype(
    jnp.int32
  )


def inject(images, perturbation):
  """Writes decoded pixels into images.

  Args:
    images: [B, H, W, C] images, any dtype.
    perturbation: int32 [B, d, 2 + C] from ``decode``.

  Returns:
    [B, H, W, C] images of the input dtype with the d pixels replaced.
  """
  batch = jnp.arange(images.shape[0])[:, None]
  x, y = perturbation[..., 0], perturbation[..., 1]
  colour = perturbation[..., 2:].astype(images.dtype)
  return images.at[batch, y, x].set(colour)
