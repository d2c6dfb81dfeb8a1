"""Train-mode operations of the victims, in forms XLA's CPU backend runs fast.

A train step spends most of its time in the gradients, and XLA's CPU backend
(jax 0.10) runs two of its parts far below the machine's speed, one under
each of its convolution back ends: with YNNPACK (XLA's default) a
convolution's kernel gradient, a convolution contracting over the batch, is
2-3x slower than the same sums as matrix products; with XLA's own (Eigen)
convolutions, which `pixeljax train` selects (`pixeljax.xla_options`), batch
norm's per-channel reductions over [B, H, W] are some 15x slower than as row
sums. The functions here compute the values and gradients of XLA's
convolution and of nnx.BatchNorm with those parts written the fast way
(`benchmarks/train_throughput.py` measures a whole step). Only train mode
uses them: the eval-mode models that attacks and incremental evaluation trace
are plain `lax` and nnx layers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _conv(x, kernel, stride: int, pads) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    pads,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def _explicit_pads(x, kernel, stride: int, padding: str):
  """The padding "SAME" or "VALID" as ((top, bottom), (left, right)), as lax
  pads it."""
  return tuple(
    jax.lax.padtype_to_pads(
      x.shape[1:3], kernel.shape[:2], (stride,) * 2, padding
    )
  )


def conv_with_matmul_grad(
  x: jax.Array, kernel: jax.Array, stride: int, padding: str
) -> jax.Array:
  """The convolution of nnx.Conv (NHWC, HWIO, no dilation or groups): x [B, H,
  W, Cin], kernel [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout], "SAME" or "VALID".

  Its value and input gradient are XLA's; its kernel gradient is
  `conv_kernel_grad`.
  """
  pads = _explicit_pads(x, kernel, stride, padding)
  return _conv_matmul_grad(x, kernel, stride, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_matmul_grad(x, kernel, stride, pads):
  return _conv(x, kernel, stride, pads)


def _conv_matmul_grad_fwd(x, kernel, stride, pads):
  return _conv(x, kernel, stride, pads), (x, kernel)


def _conv_matmul_grad_bwd(stride, pads, residuals, grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _conv(x, kernel, stride, pads), x)
  (x_grad,) = input_vjp(grad)
  kernel_grad = conv_kernel_grad(x, grad, kernel.shape[:2], stride, pads)
  return x_grad, kernel_grad.astype(kernel.dtype)


_conv_matmul_grad.defvjp(_conv_matmul_grad_fwd, _conv_matmul_grad_bwd)


def conv_kernel_grad(
  x: jax.Array, grad: jax.Array, kernel_size, stride: int, pads
) -> jax.Array:
  """The kernel gradient of a convolution as patches^T @ grad: x [B, H, W,
  Cin] and the output's gradient [B, Ho, Wo, Cout] -> float32 [kh, kw, Cin,
  Cout].

  A loop over chunks of a few images builds each chunk's patches [rows, kh *
  kw * Cin] and adds one matrix product: the patches stay in cache, where
  patches of the whole batch would stream through memory (1.7x slower on the
  2-core Xeon, AllConv's widest layer; XLA's YNNPACK convolution 3x).
  """
  (kh, kw), (b, ho, wo, cout) = kernel_size, grad.shape
  cin = x.shape[-1]
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  images = _chunk_images(b, ho * wo)
  padded = padded.reshape(b // images, images, *padded.shape[1:])
  grad = grad.reshape(b // images, images * ho * wo, cout)

  def add_chunk(total, chunk):
    x_chunk, grad_chunk = chunk
    patches = jnp.concatenate(
      [
        jax.lax.slice(
          x_chunk,
          (0, i, j, 0),
          (images, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, cin),
          (1, stride, stride, 1),
        ).reshape(-1, cin)
        for i in range(kh)
        for j in range(kw)
      ],
      axis=-1,
    )
    # Summed in float32 over the chunks, whatever the compute dtype.
    product = jnp.dot(patches.T, grad_chunk, preferred_element_type=jnp.float32)
    return total + product, None

  total = jnp.zeros((kh * kw * cin, cout), jnp.float32)
  total, _ = jax.lax.scan(add_chunk, total, (padded, grad))
  return total.reshape(kh, kw, cin, cout)


def _chunk_images(images: int, positions: int, rows: int = 2048) -> int:
  """The most images, dividing `images`, whose output positions together fit
  in `rows` (at least 1)."""
  fits = [n for n in range(1, images + 1) if n * positions <= rows]
  return max([n for n in fits if images % n == 0], default=1)


def channel_sums(x: jax.Array) -> jax.Array:
  """x [B, H, W, C] -> its sums over B, H and W, [C], in float32.

  As a sum over the rows of [B * H, W * C] and then over W: XLA's CPU backend
  runs a reduction over the leading axes of a 4-D array (C kept) some 15x
  slower than this.
  """
  b, h, w, c = x.shape
  rows = x.astype(jnp.float32).reshape(b * h, w * c).sum(0)
  return rows.reshape(w, c).sum(0)


def batch_norm_train(
  x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch norm by the batch's statistics, as nnx.BatchNorm in train mode.

  x [B, H, W, C] (channels last), scale and bias [C] -> (the normalised x
  scaled and shifted, in x's dtype; the batch mean [C] and biased variance
  [C], float32, for the running statistics). The variance is E[x^2] - E[x]^2,
  clipped at 0, as nnx's default. The gradient is batch norm's closed form,
  with every reduction a `channel_sums`; the mean and variance outputs are
  for the running statistics only and pass no gradient back.
  """
  return _batch_norm_train(x, scale, bias, epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x, scale, bias, epsilon):
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  count = x.size // x.shape[-1]
  mean = channel_sums(x) / count
  var = jnp.maximum(
    channel_sums(jnp.square(x.astype(jnp.float32))) / count - jnp.square(mean),
    0.0,
  )
  inv_std = jax.lax.rsqrt(var + epsilon)
  normalised = (x.astype(jnp.float32) - mean) * inv_std
  out = (normalised * scale + bias).astype(x.dtype)
  return (out, mean, var), (x, mean, inv_std, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  x, mean, inv_std, scale = residuals
  grad = cotangents[0].astype(jnp.float32)
  count = x.size // x.shape[-1]
  normalised = (x.astype(jnp.float32) - mean) * inv_std
  bias_grad = channel_sums(grad)
  scale_grad = channel_sums(grad * normalised)
  x_grad = (scale * inv_std / count) * (
    count * grad - bias_grad - normalised * scale_grad
  )
  return (
    x_grad.astype(x.dtype),
    scale_grad.astype(scale.dtype),
    bias_grad.astype(scale.dtype),
  )


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
