"""Train-mode operations of the victims, in forms XLA's CPU backend runs fast.

A train step spends most of its time in the gradients, and XLA's CPU backend
(jax 0.10) runs several of their parts far below the machine's speed: with
YNNPACK (XLA's default) a convolution's kernel gradient, a convolution
contracting over the batch, is 2-3x slower than the same sums as matrix
products; with XLA's own (Eigen) convolutions, which `pixeljax train`
selects (`pixeljax.xla_options`), batch norm's per-channel reductions over
[B, H, W] are some 15x slower than as row sums, and slower again where they
sum products that XLA writes out first, a strided convolution's input
gradient convolves an input dilated with zeros (s^2 times the
multiply-adds), and an overlapping max-pool's gradient (select-and-scatter)
runs 3.5x slower than as comparisons and shifted sums. The functions here
compute the values and gradients of XLA's convolution, of nnx.BatchNorm and
of nnx.max_pool with those parts written the fast way
(`benchmarks/train_profile.py` shows where a step's time goes,
`benchmarks/train_throughput.py` measures whole steps). Only train mode uses
them: the eval-mode models that attacks and incremental evaluation trace are
plain `lax` and nnx layers.
"""

from __future__ import annotations

import functools
import os

from flax import nnx
import jax
import jax.numpy as jnp

from pixeljax import xla_options


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


def conv_train(
  x: jax.Array, kernel: jax.Array, stride: int, padding: str
) -> jax.Array:
  """The convolution of nnx.Conv (NHWC, HWIO, no dilation or groups): x [B, H,
  W, Cin], kernel [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout], "SAME" or "VALID".

  Its value is XLA's; its input gradient is XLA's at stride 1 and
  `conv_input_grad` at larger strides; its kernel gradient is
  `conv_kernel_grad`.
  """
  pads = _explicit_pads(x, kernel, stride, padding)
  return _conv_train(x, kernel, stride, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_train(x, kernel, stride, pads):
  return _conv(x, kernel, stride, pads)


def _conv_train_fwd(x, kernel, stride, pads):
  return _conv(x, kernel, stride, pads), (x, kernel)


def _conv_train_bwd(stride, pads, residuals, grad):
  x, kernel = residuals
  if stride == 1:
    _, input_vjp = jax.vjp(lambda x: _conv(x, kernel, stride, pads), x)
    (x_grad,) = input_vjp(grad)
  else:
    x_grad = conv_input_grad(grad, kernel, x.shape, stride, pads)
  kernel_grad = conv_kernel_grad(x, grad, kernel.shape[:2], stride, pads)
  return x_grad.astype(x.dtype), kernel_grad.astype(kernel.dtype)


_conv_train.defvjp(_conv_train_fwd, _conv_train_bwd)


def conv_input_grad(
  grad: jax.Array, kernel: jax.Array, x_shape, stride: int, pads
) -> jax.Array:
  """The input gradient of a strided convolution, one stride-1 convolution
  per output phase: grad [B, Ho, Wo, Cout], kernel [kh, kw, Cin, Cout] ->
  [B, H, W, Cin] (x_shape [B, H, W, Cin]; pads as `_explicit_pads`).

  Input position s * a + r (padded coordinates, 0 <= r < s) receives from the
  kernel taps r, r + s, ...: a small convolution of grad with those taps.
  XLA instead convolves grad dilated by s (zeros between its entries), s^2
  times the multiply-adds: 1.2-1.3x slower on AllConv's stride-2 layers.
  """
  kh, kw, cin, _ = kernel.shape
  b, h, w, _ = x_shape
  (top, _), (left, _) = pads
  ho, wo = grad.shape[1:3]
  # Output positions per phase, covering the padded input's first top + h
  # rows (left + w columns).
  rows, cols = -(-(top + h) // stride), -(-(left + w) // stride)
  phases = []
  for r in range(stride):
    row = []
    for c in range(stride):
      taps = kernel[r::stride, c::stride]  # [th, tw, Cin, Cout]
      th, tw = taps.shape[:2]
      if th == 0 or tw == 0:  # a kernel narrower than the stride
        row.append(jnp.zeros((b, rows, cols, cin), grad.dtype))
        continue
      # Correlating with the flipped taps, Cin and Cout swapped.
      flipped = jnp.swapaxes(taps[::-1, ::-1], 2, 3)
      phase_pads = ((th - 1, rows - ho), (tw - 1, cols - wo))
      row.append(_conv(grad, flipped, 1, phase_pads))
    phases.append(jnp.stack(row, axis=3))  # [B, rows, cols, s, Cin]
  full = jnp.stack(phases, axis=2)  # [B, rows, s, cols, s, Cin]
  full = full.reshape(b, rows * stride, cols * stride, cin)
  return full[:, top : top + h, left : left + w]


def conv_kernel_grad(
  x: jax.Array, grad: jax.Array, kernel_size, stride: int, pads
) -> jax.Array:
  """The kernel gradient of a convolution: x [B, H, W, Cin] and the output's
  gradient [B, Ho, Wo, Cout] -> float32 [kh, kw, Cin, Cout].

  Three ways, by what runs fastest (2-core EPYC, batch 128, the victims'
  layers):
  - narrow patches (a 1x1 kernel's, which are x itself, strided, or an
    image layer's few channels: at most `_WHOLE_BATCH_COLUMNS`) as patches^T
    @ grad for the whole batch (`contract_rows`);
  - float32 stride-1 convolutions with at most `_NATIVE_POSITIONS` output
    positions by XLA's own kernel-gradient convolution (Eigen): 1.2-1.7x
    faster than patches on the 16x16 and smaller maps of AllConv, NiN and
    VGG16. Not where YNNPACK runs the convolutions (`xla_options`), 2-3x
    slower than patches there;
  - the rest (larger maps, strided, bfloat16) as patches^T @ grad, in a loop
    over chunks of a few images that pads each chunk, builds its patches
    [rows, kh * kw * Cin] and adds one matrix product: the patches stay in
    cache, where patches of the whole batch would stream through memory (1.7x
    slower on the 2-core Xeon, AllConv's widest layer). Padding chunk by
    chunk, not x at once, and multiplying grad^T @ patches, whose operands
    Eigen reads faster than patches^T @ grad's, make the loop 1.1-1.7x faster
    on AllConv's 3x3 layers.
  """
  (kh, kw), (b, ho, wo, cout) = kernel_size, grad.shape
  cin = x.shape[-1]
  if kh * kw * cin <= _WHOLE_BATCH_COLUMNS or (kh, kw) == (1, 1):
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    patches = _patches(padded, (kh, kw), stride, (ho, wo))
    product = contract_rows(
      patches.reshape(-1, kh * kw * cin), grad.reshape(-1, cout)
    )
    return product.reshape(kh, kw, cin, cout)
  if (
    stride == 1
    and ho * wo <= _NATIVE_POSITIONS
    and x.dtype == jnp.float32
    and _native_kernel_grad_is_fast()
  ):
    kernel = jax.ShapeDtypeStruct((kh, kw, cin, cout), x.dtype)
    (kernel_grad,) = jax.linear_transpose(
      lambda kernel: _conv(x, kernel, 1, pads), kernel
    )(grad.astype(x.dtype))
    return kernel_grad
  images = _chunk_images(b, ho * wo)
  x = x.reshape(b // images, images, *x.shape[1:])
  grad = grad.reshape(b // images, images * ho * wo, cout)

  def add_chunk(total, chunk):
    x_chunk, grad_chunk = chunk
    padded = jnp.pad(x_chunk, ((0, 0), *pads, (0, 0)))
    patches = _patches(padded, (kh, kw), stride, (ho, wo))
    # [Cout, kh * kw * Cin], summed in float32 over the chunks, whatever the
    # compute dtype.
    product = jax.lax.dot_general(
      grad_chunk,
      patches.reshape(-1, kh * kw * cin),
      (((0,), (0,)), ((), ())),
      preferred_element_type=jnp.float32,
    )
    return total + product, None

  total = jnp.zeros((cout, kh * kw * cin), jnp.float32)
  total, _ = jax.lax.scan(add_chunk, total, (x, grad))
  return total.T.reshape(kh, kw, cin, cout)


# Patches this narrow are built for the whole batch: NiN's 5x5 image layer
# (75 columns) takes 18 ms so, patches included, against the chunk loop's 28
# (2-core EPYC, batch 128); AllConv's and VGG16's 3x3 (27) 4 ms against 5.5.
_WHOLE_BATCH_COLUMNS = 128
# On larger maps XLA's kernel-gradient convolution is no faster than the
# chunk loop (AllConv's 32x32 96->96 layer: 79 ms against 75).
_NATIVE_POSITIONS = 16 * 16


def contract_rows(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [N, P], b [N, Q] -> a^T @ b, float32 [P, Q].

  As one product per block of rows, a block per CPU thread, summed: XLA's
  CPU backend runs a single product over a long N at 200-260 GF/s on NiN's
  1x1 layers (2-core EPYC) and a batch of two at 340-350. The blocks'
  count, and so the sum's rounding, follows the core count: a run resumed
  on a machine with another count rounds differently from there on.
  """
  rows = a.shape[0]
  blocks = _largest_divisor(rows, _cpu_threads())
  product = jax.lax.dot_general(
    a.reshape(blocks, rows // blocks, a.shape[1]),
    b.reshape(blocks, rows // blocks, b.shape[1]),
    (((1,), (1,)), ((0,), (0,))),
    preferred_element_type=jnp.float32,
  )
  return product.sum(0)


def _native_kernel_grad_is_fast() -> bool:
  """XLA's own kernel-gradient convolution is the fast one except where
  YNNPACK runs a CPU's convolutions."""
  return not (_on_cpu() and xla_options.ynnpack_runs_cpu_convolutions())


def _on_cpu() -> bool:
  """Whether the train step runs on the CPU (JAX's default backend), where
  the forms that run fast differ from other backends'."""
  return jax.default_backend() == "cpu"


def _cpu_threads() -> int:
  """The CPU cores this process may run on; 1 on other backends, which
  spread one product over the device themselves."""
  if not _on_cpu():
    return 1
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _patches(
  padded: jax.Array, kernel_size, stride: int, out_size, offset=(0, 0)
) -> jax.Array:
  """The input patch of every output position: padded x [B, H', W', Cin] ->
  [B, Ho, Wo, kh * kw * Cin], in the order of a kernel's [kh, kw, Cin]
  (the kernel's first tap at `offset` in the window)."""
  (kh, kw), (ho, wo), (b, _, _, cin) = kernel_size, out_size, padded.shape
  return jnp.concatenate(
    [
      jax.lax.slice(
        padded,
        (0, i, j, 0),
        (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, cin),
        (1, stride, stride, 1),
      )
      for i in range(offset[0], offset[0] + kh)
      for j in range(offset[1], offset[1] + kw)
    ],
    axis=-1,
  )


def _chunk_images(images: int, positions: int, rows: int = 2048) -> int:
  """The most images, dividing `images`, whose output positions together fit
  in `rows` (at least 1)."""
  return _largest_divisor(images, rows // positions)


def _largest_divisor(n: int, most: int) -> int:
  """The largest divisor of `n` that is at most `most` (at least 1)."""
  return max(d for d in _divisors(n) if d <= max(most, 1))


def _divisors(n: int) -> list[int]:
  """The divisors of `n`, ascending."""
  return [d for d in range(1, n + 1) if n % d == 0]


def channel_sums(terms, *arrays: jax.Array) -> tuple[jax.Array, ...]:
  """The sums over B, H and W of each array that `terms` makes of blocks of
  `arrays`: arrays [B, H, W, C]; terms(*blocks) -> a tuple of float32 [rows,
  W, C] -> a tuple of [C], float32.

  In one pass over blocks of about `_BLOCK_BYTES` of the first array (a scan
  over rows of [B * H, W, C]): the terms of a block stay in cache, where XLA's
  CPU backend writes terms of the whole arrays to memory and reads them back
  to sum them (2-2.4x slower on batch norm's 32x32 and 16x16 maps, 2-core
  EPYC).
  """
  b, h, w, c = arrays[0].shape
  blocks = _row_blocks(b * h, arrays[0].size * arrays[0].dtype.itemsize)
  arrays = tuple(a.reshape(blocks, -1, w, c) for a in arrays)

  def add_block(totals, blocks):
    parts = terms(*(a.astype(jnp.float32) for a in blocks))
    return tuple(t + p.sum(0) for t, p in zip(totals, parts)), None

  shapes = jax.eval_shape(terms, *(a[0] for a in arrays))
  zeros = tuple(jnp.zeros((w, c), jnp.float32) for _ in shapes)
  totals, _ = jax.lax.scan(add_block, zeros, arrays)
  return tuple(t.sum(0) for t in totals)


# Blocks of channel_sums: 1.5-3 MB ran fastest on the 2-core EPYC (1 MB of L2
# a core), 4-5x smaller or larger up to 2x slower.
_BLOCK_BYTES = 2 << 20


def _row_blocks(rows: int, nbytes: int) -> int:
  """The number of blocks, dividing `rows`, nearest to nbytes /
  `_BLOCK_BYTES` (at least 1); 1 on backends other than the CPU, whose
  reductions take the terms in without writing them out."""
  if not _on_cpu():
    return 1
  want = max(1.0, nbytes / _BLOCK_BYTES)
  return min(_divisors(rows), key=lambda d: abs(d - want))


def batch_norm_train(
  x: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  epsilon: float,
  relu: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch norm by the batch's statistics, as nnx.BatchNorm in train mode,
  and a ReLU after it if `relu`.

  x [B, H, W, C] (channels last), scale and bias [C] -> (the normalised x
  scaled and shifted, in x's dtype; the batch mean [C] and biased variance
  [C], float32, for the running statistics). The variance is E[x^2] - E[x]^2,
  clipped at 0, as nnx's default. The gradient is batch norm's closed form,
  its reductions by `channel_sums`, the ReLU's mask applied inside them
  rather than written out; the mean and variance outputs are for the running
  statistics only and pass no gradient back.
  """
  return _batch_norm_train(x, scale, bias, epsilon, relu)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(x, scale, bias, epsilon, relu):
  return _batch_norm_train_fwd(x, scale, bias, epsilon, relu)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon, relu):
  count = x.size // x.shape[-1]
  sums, squares = channel_sums(lambda x: (x, x * x), x)
  mean = sums / count
  var = jnp.maximum(squares / count - jnp.square(mean), 0.0)
  inv_std = jax.lax.rsqrt(var + epsilon)
  out = (x.astype(jnp.float32) - mean) * inv_std * scale + bias
  if relu:
    out = jnp.maximum(out, 0.0)
  return (out.astype(x.dtype), mean, var), (x, mean, inv_std, scale, bias)


def _batch_norm_train_bwd(epsilon, relu, residuals, cotangents):
  x, mean, inv_std, scale, bias = residuals
  count = x.size // x.shape[-1]

  def normalised_and_grad(grad, x):
    """The normalised x and the gradient at the batch norm's output (through
    the ReLU), float32."""
    normalised = (x.astype(jnp.float32) - mean) * inv_std
    grad = grad.astype(jnp.float32)
    if relu:  # jax.nn.relu's gradient: 0 where its input is 0 or less
      grad = jnp.where(normalised * scale + bias > 0, grad, 0.0)
    return normalised, grad

  def terms(grad, x):
    normalised, grad = normalised_and_grad(grad, x)
    return grad, grad * normalised

  bias_grad, scale_grad = channel_sums(terms, cotangents[0], x)
  normalised, grad = normalised_and_grad(cotangents[0], x)
  x_grad = (scale * inv_std / count) * (
    count * grad - bias_grad - normalised * scale_grad
  )
  return (
    x_grad.astype(x.dtype),
    scale_grad.astype(scale.dtype),
    bias_grad.astype(scale.dtype),
  )


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def max_pool_train(x: jax.Array, window: int, stride: int) -> jax.Array:
  """nnx.max_pool with SAME padding (x [B, H, W, C] -> [B, ceil(H / stride),
  ceil(W / stride), C]), with a gradient written without XLA's
  select-and-scatter, which its CPU backend runs 3.5x slower on NiN's
  overlapping 3x3/2 pool.

  Each output's gradient goes to the first maximum of its window in
  row-major order, as select-and-scatter's does: ties (the zeros after a
  ReLU) get it once.
  """
  return _max_pool_train(x, window, stride)


def _max_pool(x, window, stride):
  return nnx.max_pool(
    x, (window, window), strides=(stride, stride), padding="SAME"
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_train(x, window, stride):
  return _max_pool(x, window, stride)


def _max_pool_train_fwd(x, window, stride):
  y = _max_pool(x, window, stride)
  return y, (x, y)


def _max_pool_train_bwd(window, stride, residuals, grad):
  x, y = residuals
  b, h, w, c = x.shape
  ho, wo = y.shape[1:3]
  pads = jax.lax.padtype_to_pads((h, w), (window,) * 2, (stride,) * 2, "SAME")
  (top, _), (left, _) = pads
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  # Each window's first maximum, as its tap's row-major index in the window.
  first = jnp.full(y.shape, window * window, jnp.int32)
  for tap in reversed(range(window * window)):
    values = _patches(padded, (1, 1), stride, (ho, wo), divmod(tap, window))
    first = jnp.where(values == y, tap, first)
  # Padded input row stride * a + r gets the gradient of window a - t
  # through tap r + stride * t (columns alike): a sum per phase (r, q) of
  # shifted maps the size of y, then the phases interleaved.
  rows, cols = -(-(top + h) // stride), -(-(left + w) // stride)
  zero = jnp.zeros((), grad.dtype)
  phases = []
  for r in range(stride):
    row = []
    for q in range(stride):
      total = jnp.zeros((b, rows, cols, c), grad.dtype)
      for i in range(r, window, stride):
        for j in range(q, window, stride):
          part = jnp.where(first == i * window + j, grad, zero)
          di, dj = (i - r) // stride, (j - q) // stride
          shift = ((0, 0, 0), (di, rows - ho - di, 0))
          shift += ((dj, cols - wo - dj, 0), (0, 0, 0))
          total = total + jax.lax.pad(part, zero, shift)
      row.append(total)
    phases.append(jnp.stack(row, axis=3))  # [B, rows, cols, s, C]
  full = jnp.stack(phases, axis=2)  # [B, rows, s, cols, s, C]
  full = full.reshape(b, rows * stride, cols * stride, c)
  return (full[:, top : top + h, left : left + w],)


_max_pool_train.defvjp(_max_pool_train_fwd, _max_pool_train_bwd)
