"""VGG16 as used on CIFAR-10 (Simonyan and Zisserman 2015; Su et al. 2019)."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from pixeljax.models.layers import ConvBN
from pixeljax.models.layers import max_pool
from pixeljax.models.layers import normalize

_BLOCKS = (
  (64, 64),
  (128, 128),
  (256, 256, 256),
  (512, 512, 512),
  (512, 512, 512),
)


class VGG16(nnx.Module):
  """VGG16 with batch norm: 13 3x3 convs in five blocks, each followed by a
  2x2 max-pool, then dense 2048, 2048, `num_classes` with dropout 0.5.

  The dense layers fix the input size: images must be 32x32 (five pools
  leave 1x1x512 features).

  Call: `model(images f32 [B, 32, 32, 3] in 0..255, rngs=...)` -> logits f32
  [B, K];
  `rngs` (for dropout) is needed in train mode only.
  """

  def __init__(
    self,
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    dropout: float = 0.5,
  ):
    self.dtype = dtype
    blocks, cin = [], 3
    for widths in _BLOCKS:
      convs = []
      for w in widths:
        convs.append(ConvBN(cin, w, 3, dtype=dtype, rngs=rngs))
        cin = w
      blocks.append(nnx.List(convs))
    self.blocks = nnx.List(blocks)
    self.fc1 = nnx.Linear(512, 2048, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(2048, 2048, dtype=dtype, rngs=rngs)
    self.fc3 = nnx.Linear(2048, num_classes, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout)

  def __call__(
    self, images: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    if images.shape[1:3] != (32, 32):
      raise ValueError(
        f"images: VGG16 expects [B, 32, 32, 3], got shape {images.shape}"
      )
    x = normalize(images, self.dtype)
    for block in self.blocks:
      for layer in block:
        x = layer(x)
      x = max_pool(x)
    x = x.reshape(x.shape[0], -1)
    x = self.drop(jax.nn.relu(self.fc1(x)), rngs=rngs)
    x = self.drop(jax.nn.relu(self.fc2(x)), rngs=rngs)
    return self.fc3(x).astype(jnp.float32)
