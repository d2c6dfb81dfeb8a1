"""All-CNN-C (Springenberg et al., "Striving for Simplicity", ICLR 2015
workshop)."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from pixeljax.models.layers import ConvBN
from pixeljax.models.layers import normalize


class AllConv(nnx.Module):
  """All-CNN-C for 32x32 images, with batch norm after every convolution.

  3x3 convs 96, 96, 96/stride 2 | 192, 192, 192/stride 2 | 192 valid, 1x1 192,
  1x1 `num_classes`, global average pooling. Pooling is done by strided
  convolutions, as in the paper; dropout follows each strided stage (0.3,
  lighter than the paper's 0.5 since batch norm also regularises).

  Call: `model(images f32 [B, H, W, 3] in 0..255, rngs=...)` -> logits f32
  [B, K];
  `rngs` (for dropout) is needed in train mode only.
  """

  def __init__(
    self,
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    dropout: float = 0.3,
  ):
    self.dtype = dtype
    widths = [
      (3, 96, 1),
      (96, 96, 1),
      (96, 96, 2),
      (96, 192, 1),
      (192, 192, 1),
      (192, 192, 2),
    ]
    self.features = nnx.List(
      [ConvBN(i, o, 3, stride=s, dtype=dtype, rngs=rngs) for i, o, s in widths]
    )
    self.drop = nnx.Dropout(dropout)
    self.head = nnx.List(
      [
        ConvBN(192, 192, 3, padding="VALID", dtype=dtype, rngs=rngs),
        ConvBN(192, 192, 1, dtype=dtype, rngs=rngs),
      ]
    )
    self.classifier = nnx.Conv(192, num_classes, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(
    self, images: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    x = normalize(images, self.dtype)
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i in (2, 5):  # after each strided (pooling) stage
        x = self.drop(x, rngs=rngs)
    for layer in self.head:
      x = layer(x)
    x = self.classifier(x)
    return x.mean(axis=(1, 2)).astype(jnp.float32)
