"""Network in Network (Lin, Chen and Yan, ICLR 2014), CIFAR-10 version."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from pixeljax.models.layers import ConvBN
from pixeljax.models.layers import avg_pool
from pixeljax.models.layers import max_pool
from pixeljax.models.layers import normalize
from pixeljax.models.train_ops import max_pool_train


class NiN(nnx.Module):
  """NiN for 32x32 images: three mlpconv blocks, batch norm after every conv.

  5x5 192, 1x1 160, 1x1 96, 3x3/2 max-pool | 5x5 192, 1x1 192, 1x1 192,
  3x3/2 average-pool | 3x3 192, 1x1 192, 1x1 `num_classes`, global average
  pooling. Dropout (0.3) after the two pooling layers, as in the paper.

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

    def block(cin, kernel, widths):
      layers, c = [], cin
      for k, w in zip((kernel, 1, 1), widths):
        layers.append(ConvBN(c, w, k, dtype=dtype, rngs=rngs))
        c = w
      return nnx.List(layers)

    self.block1 = block(3, 5, (192, 160, 96))
    self.block2 = block(96, 5, (192, 192, 192))
    self.block3 = block(192, 3, (192, 192))
    self.drop = nnx.Dropout(dropout)
    self.classifier = nnx.Conv(192, num_classes, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(
    self, images: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    x = normalize(images, self.dtype)
    for layer in self.block1:
      x = layer(x)
    # Train mode: the same pool, with a gradient XLA's CPU backend runs fast.
    training = not self.block1[0].bn.use_running_average
    pool = max_pool_train if training else max_pool
    x = self.drop(pool(x, 3, 2), rngs=rngs)
    for layer in self.block2:
      x = layer(x)
    x = self.drop(avg_pool(x, 3, 2), rngs=rngs)
    for layer in self.block3:
      x = layer(x)
    x = self.classifier(x)
    return x.mean(axis=(1, 2)).astype(jnp.float32)
