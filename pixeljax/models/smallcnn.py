"""A small CNN that trains on a CPU in minutes: the stand-in victim."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from pixeljax.models.layers import ConvBN
from pixeljax.models.layers import max_pool
from pixeljax.models.layers import normalize

_WIDTHS = (32, 64, 128, 128)


class SmallCNN(nnx.Module):
  """Four 3x3 conv-BN-ReLU layers (32, 64, 128, 128), a 2x2 max-pool after the
  first three, global average pooling and a dense layer: about 240k params.

  Call: `model(images f32 [B, H, W, 3] in 0..255, rngs=None)` -> logits f32
  [B, K];
  it has no dropout, so `rngs` is accepted for a uniform interface and ignored.
  """

  def __init__(
    self, num_classes: int = 10, *, rngs: nnx.Rngs, dtype=jnp.float32
  ):
    self.dtype = dtype
    cins = (3,) + _WIDTHS[:-1]
    self.convs = nnx.List(
      [ConvBN(i, o, 3, dtype=dtype, rngs=rngs) for i, o in zip(cins, _WIDTHS)]
    )
    self.classifier = nnx.Linear(
      _WIDTHS[-1], num_classes, dtype=dtype, rngs=rngs
    )

  def __call__(
    self, images: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    del rngs  # no dropout
    x = normalize(images, self.dtype)
    for i, layer in enumerate(self.convs):
      x = layer(x)
      if i < len(self.convs) - 1:
        x = max_pool(x)
    return self.classifier(x.mean(axis=(1, 2))).astype(jnp.float32)
