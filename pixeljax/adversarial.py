"""One-pixel adversarial examples for training, made in the training step.

A black-box search costs thousands of model evaluations per image: far too
many to make a fresh example for every training image at every step. During
training the model's gradient is at hand, so the examples are made the way
first-order attacks make them, batched over the whole batch on the device:

1. One backward pass gives the gradient g of each image's loss with respect
   to its pixels.
2. Each pixel's best corner colour to first order is 255 where g > 0 and 0
   elsewhere, per channel; its gain, sum_c g_c (corner_c - x_c), is how much
   that one-pixel change raises the loss to first order.
3. The ``candidates`` pixels of highest gain are each tried at their corner
   in one forward pass (B x candidates images), and each image keeps the one
   that raises its loss most.

The cost is one backward pass and ``candidates`` forward passes over the
images made adversarial: with half of each batch adversarial and 4
candidates, about 2x a clean step (``benchmarks/train_throughput.py``
measures it). The examples are one-pixel changes with extreme colours, what
the corner scan that ``l0_robustness`` starts with tries.
"""

import jax
import jax.numpy as jnp

_COLOUR_MAX = 255.0


def one_pixel_examples(loss_fn, images, *, candidates: int = 4):
  """Each image with the one pixel, at a corner colour, that raises its loss
  most among the ``candidates`` most promising to first order.

  Args:
    loss_fn: ``loss_fn(images float32 [M, H, W, C]) -> float32 [M]``, each
      image's loss (differentiable in the images; called on the B images and
      on their B * candidates tries).
    images: float32 [B, H, W, C] holding 0..255.
    candidates: pixels tried per image, at least 1.

  Returns:
    float32 [B, H, W, C]: the images with one pixel changed, no gradient.
  """
  if candidates < 1:
    raise ValueError(f"candidates must be at least 1, got {candidates}")
  images = jax.lax.stop_gradient(images.astype(jnp.float32))
  batch, height, width, channels = images.shape
  grad = jax.grad(lambda x: jnp.sum(loss_fn(x)))(images)
  corner = jnp.where(grad > 0, _COLOUR_MAX, 0.0)  # [B, H, W, C]
  gain = jnp.sum(grad * (corner - images), axis=-1).reshape(batch, -1)
  _, where = jax.lax.top_k(gain, candidates)  # [B, P] positions y * W + x
  flat = images.reshape(batch, height * width, channels)
  colour = jnp.take_along_axis(
    corner.reshape(batch, height * width, channels), where[..., None], axis=1
  )  # [B, P, C]
  rows = jnp.arange(batch)[:, None]
  tries = (
    jnp.broadcast_to(flat[:, None], (batch, candidates) + flat.shape[1:])
    .at[rows, jnp.arange(candidates)[None, :], where]
    .set(colour)
  )  # [B, P, H * W, C]
  tries = tries.reshape(batch * candidates, height, width, channels)
  losses = loss_fn(tries).reshape(batch, candidates)
  best = jnp.argmax(losses, axis=-1)
  chosen = tries.reshape(batch, candidates, height, width, channels)[
    jnp.arange(batch), best
  ]
  return jax.lax.stop_gradient(chosen)
