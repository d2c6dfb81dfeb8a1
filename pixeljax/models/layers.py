"""Building blocks shared by the victim networks."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from pixeljax.models.train_ops import batch_norm_train
from pixeljax.models.train_ops import conv_train

# Per-channel mean and standard deviation of the CIFAR-10 training images, in
# 0..255 pixel units: the models take raw pixels and normalise inside.
CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)


def normalize(images: jax.Array, dtype) -> jax.Array:
  """Raw pixels float [B, H, W, 3] in 0..255 -> standardised `dtype` [B, H, W,
  3]."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
      "images: expected [B, H, W, 3] pixels in 0..255, got shape "
      f"{images.shape}"
    )
  mean = jnp.asarray(CIFAR10_MEAN, jnp.float32)
  std = jnp.asarray(CIFAR10_STD, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


class ConvBN(nnx.Module):
  """Convolution (no bias: batch norm has one) -> batch norm -> ReLU."""

  def __init__(
    self,
    cin: int,
    cout: int,
    kernel: int,
    *,
    rngs: nnx.Rngs,
    stride: int = 1,
    padding: str = "SAME",
    dtype=jnp.float32,
  ):
    self.conv = nnx.Conv(
      cin,
      cout,
      (kernel, kernel),
      strides=stride,
      padding=padding,
      use_bias=False,
      dtype=dtype,
      rngs=rngs,
      kernel_init=nnx.initializers.he_normal(),
    )
    # momentum 0.9: running statistics settle within a short run too.
    self.bn = nnx.BatchNorm(cout, momentum=0.9, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.conv.kernel_size
    kernel = self.conv.kernel[...].astype(x.dtype)
    tiny = x.shape[1] * x.shape[2] <= 4 and self.conv.strides == 1
    if tiny and self.conv.padding == "SAME" and kh % 2 and kw % 2:
      y = conv_as_matmul(x, kernel)
    elif self.bn.use_running_average:
      y = self.conv(x)
    else:
      # Train mode: the same functions, with gradients (and batch statistics)
      # computed in the forms XLA's CPU backend runs fast (`train_ops`).
      y = conv_train(x, kernel, self.conv.strides, self.conv.padding)
      return self._batch_norm_relu_train(y)
    return jax.nn.relu(self.bn(y))

  def _batch_norm_relu_train(self, y: jax.Array) -> jax.Array:
    """`self.bn` in train mode, then ReLU: normalises by the batch
    statistics and moves the running ones towards them, as nnx.BatchNorm
    does."""
    bn = self.bn
    out, mean, var = batch_norm_train(
      y, bn.scale[...], bn.bias[...], bn.epsilon, relu=True
    )
    for running, batch in ((bn.mean, mean), (bn.var, var)):
      running[...] = jax.lax.stop_gradient(
        bn.momentum * running[...] + (1 - bn.momentum) * batch
      )
    return out


def conv_as_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 SAME convolution as patches @ kernel: x [B, H, W, Cin], kernel
  [kh, kw, Cin, Cout] (odd kh, kw) -> [B, H, W, Cout].

  XLA's CPU convolution is pathologically slow on maps of 2x2 or less (VGG16's
  last block: hundreds of ms per call); a matrix product is not.
  """
  kh, kw, cin, cout = kernel.shape
  b, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  patches = jnp.concatenate(
    [padded[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)],
    axis=-1,
  )
  return patches @ kernel.reshape(kh * kw * cin, cout)


def max_pool(x: jax.Array, window: int = 2, stride: int = 2) -> jax.Array:
  """Max-pool [B, H, W, C] -> [B, ceil(H/stride), ceil(W/stride), C], SAME
  padding."""
  b, h, w, c = x.shape
  if window == stride and h % stride == 0 and w % stride == 0:
    # Non-overlapping windows as a reshape + max: the same values, and on CPU
    # its gradient is several times faster than XLA's select-and-scatter.
    return x.reshape(b, h // stride, stride, w // stride, stride, c).max(
      axis=(2, 4)
    )
  return nnx.max_pool(
    x, (window, window), strides=(stride, stride), padding="SAME"
  )


def avg_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  return nnx.avg_pool(
    x, (window, window), strides=(stride, stride), padding="SAME"
  )
