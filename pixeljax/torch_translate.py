"""PyTorch modules translated into JAX functions, from their exported graph.

``translate(module, input_shape)`` exports the module with ``torch.export``
(batch axis dynamic), lowers the program to the core ATen operator set
(``run_decompositions``), and returns a function that runs that graph as
``jax.numpy`` / ``lax`` operations, with the module's parameters and buffers
as JAX arrays. Called inside a ``jax.jit``, the model is part of the compiled
program, so the engine's rewrites (canonical convolutions, incremental
evaluation) and sharding see every operation, as they see a JAX model's.

Why our own interpreter and not torchax: torchax 0.0.13, the last release,
fails to import with torch 2.13 (an ATen overload it names is gone), and
only its nightly development builds work; the core ATen set a CNN exports to
is small, and a table of lowerings keeps the model's convolutions and
pooling as the single ``lax`` primitives that the incremental path reads.

The operators covered are those of ``SUPPORTED`` (convolution of any
stride, padding, dilation and groups; batch norm in eval mode; ReLU, ReLU6,
LeakyReLU, GELU, SiLU, Hardswish, sigmoid, tanh; max, average and adaptive
pooling; linear, matmul; elementwise arithmetic; cat, views, permutes,
reductions, softmax). Any other is an ``UnsupportedOperator`` naming it and
the submodule where it occurs, raised before anything runs.

Layout: 2-D convolutions and pooling run channels-last (NHWC maps, HWIO
kernels), the layout XLA's CPU convolutions take, and elementwise ops, batch
norm, reductions and channel concatenation keep it; an NCHW module fed NHWC
images (``apply(..., channels_last=True)``) runs with no transpose. Any other
op gets its NCHW operand back. A constant padding (``F.pad``) followed by a
convolution or a pooling is folded into that op's own padding: the
incremental path follows a padded convolution, not a separate pad.
"""

from collections.abc import Callable
import math
import operator
from typing import NamedTuple
import warnings

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import torch


class TranslationError(ValueError):
  """The module cannot be run as JAX operations: it does not export, or it
  exports to something outside what this translator covers."""


class UnsupportedOperator(TranslationError):
  """An operator of the exported graph that has no JAX lowering here.

  Attributes:
    operator: the ATen operator, e.g. "aten.upsample_bilinear2d.vec".
    module_path: the submodule where it occurs ("" for the root module),
      with its type, e.g. "layers.0.up (Upsample)".
  """

  def __init__(self, op: str, module_path: str, detail: str = ""):
    self.operator, self.module_path = op, module_path
    where = f"in {module_path}" if module_path else "in the module's forward"
    super().__init__(
      f"the operator {op} ({where}) has no JAX translation"
      + (f": {detail}" if detail else "")
      + "; pass backend='callback' to run the module through a host "
      "callback instead"
    )


class _Padded:
  """A constant padding not applied yet: the next convolution or pooling
  may take it as its own padding. ``pads`` (low, high) per axis.

  Not a pytree (nor are the classes below): ``jax.tree.leaves`` finds it
  among a node's arguments whole."""

  def __init__(self, value, pads: tuple, fill: float):
    self.value, self.pads, self.fill = value, pads, fill


class _Unavailable:
  """An output that the translation does not compute (a max pooling's
  indices); an error if anything reads it."""

  def __init__(self, what: str):
    self.what = what


class _NHWC:
  """A logical [N, C, H, W] tensor held as ``value`` [N, H, W, C].

  Convolutions and pooling run channels-last, the layout XLA's CPU
  convolutions take, and elementwise ops, batch norm and reductions keep
  it: a PyTorch CNN fed NHWC images runs with no transposes at all. Any
  other op gets the NCHW array (``_array``)."""

  def __init__(self, value):
    self.value = value


_TO_NCHW = (0, 3, 1, 2)  # logical axis l is physical axis _TO_NCHW[l]
_TO_NHWC = (0, 2, 3, 1)


def _array(x):
  """A lowering's operand as an array: pending padding applied, an NHWC
  held map back in NCHW."""
  if isinstance(x, _Padded):
    value = _array(x.value)
    return lax.pad(
      value,
      np.asarray(x.fill, value.dtype),
      [(lo, hi, 0) for lo, hi in x.pads],
    )
  if isinstance(x, _NHWC):
    return jnp.transpose(x.value, _TO_NCHW)
  return x


def _shape(x) -> tuple:
  """The logical shape of an operand."""
  if isinstance(x, _NHWC):
    return tuple(x.value.shape[p] for p in _TO_NCHW)
  if isinstance(x, _Padded):
    return tuple(n + lo + hi for n, (lo, hi) in zip(_shape(x.value), x.pads))
  return tuple(np.shape(x))


def _nhwc(x):
  """A 4-D operand (held either way) as an NHWC array."""
  if isinstance(x, _NHWC):
    return x.value
  return jnp.transpose(_array(x), _TO_NHWC)


def _map(x, fn):
  """``fn`` of an operand, elementwise: an NHWC held map stays NHWC."""
  if isinstance(x, _NHWC):
    return _NHWC(fn(x.value))
  return fn(_array(x))


def _as_nhwc_operand(x):
  """An operand of an elementwise op with an NHWC held one, in the same
  layout (scalars as they are; arrays of rank <= 4 broadcast to rank 4 and
  transposed), or None when it has more axes."""
  if isinstance(x, _NHWC):
    return x.value
  x = _array(x)
  if np.ndim(x) == 0:
    return x
  if np.ndim(x) > 4:
    return None
  x = x.reshape((1,) * (4 - np.ndim(x)) + tuple(np.shape(x)))
  return x.transpose(_TO_NHWC)


def _elementwise(fn, *operands):
  """``fn`` of broadcasting operands; NHWC where one of them is."""
  if any(isinstance(o, _NHWC) for o in operands):
    held = [_as_nhwc_operand(o) for o in operands]
    if all(h is not None for h in held):
      return _NHWC(fn(*held))
  return fn(*[_array(o) for o in operands])


def _split_padding(x, fill: float, spatial: int):
  """(array, pads [(lo, hi)] of the last ``spatial`` axes) where ``x``'s
  pending padding is ``fill`` on those axes only and never negative;
  otherwise (the padded array, zero pads)."""
  if isinstance(x, _Padded):
    lead = x.pads[: -spatial or None]
    tail = x.pads[len(x.pads) - spatial :]
    fills_match = x.fill == fill or (math.isnan(x.fill) and math.isnan(fill))
    if (
      fills_match
      and all(p == (0, 0) for p in lead)
      and all(lo >= 0 and hi >= 0 for lo, hi in tail)
    ):
      return x.value, [tuple(p) for p in tail]
  return _array(x), [(0, 0)] * spatial


def _ints(value, count: int) -> tuple:
  """An ATen int-list argument (one int repeats) as ``count`` ints."""
  if isinstance(value, int):
    return (value,) * count
  value = tuple(int(v) for v in value)
  return value * count if len(value) == 1 else value


# ---- lowerings: ATen schema arguments in, JAX arrays out -------------------


def _convolution(
  x,
  weight,
  bias,
  stride,
  padding,
  dilation,
  transposed,
  output_padding,
  groups,
):
  if transposed:
    raise _Refuse("transposed convolution")
  spatial = weight.ndim - 2
  x, pending = _split_padding(x, 0.0, spatial)
  padding = _ints(padding, spatial)
  pads = [(lo + p, hi + p) for (lo, hi), p in zip(pending, padding)]
  if spatial == 2:
    # Channels-last: OIHW kernels as HWIO (a constant's transpose folds).
    out = lax.conv_general_dilated(
      _nhwc(x),
      weight.transpose(2, 3, 1, 0),
      window_strides=_ints(stride, 2),
      padding=pads,
      rhs_dilation=_ints(dilation, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=int(groups),
    )
    return _NHWC(out if bias is None else out + bias)
  x = _array(x)
  letters = "DHW"[-spatial:] if spatial <= 3 else None
  if letters is None:
    raise _Refuse(f"{spatial}-d convolution")
  out = lax.conv_general_dilated(
    x,
    weight,
    window_strides=_ints(stride, spatial),
    padding=pads,
    rhs_dilation=_ints(dilation, spatial),
    dimension_numbers=(f"NC{letters}", f"OI{letters}", f"NC{letters}"),
    feature_group_count=int(groups),
  )
  if bias is not None:
    out = out + bias.reshape((1, -1) + (1,) * spatial)
  return out


def _batch_norm(x, weight, bias, mean, var, momentum, eps):
  """Eval-mode batch norm over axis 1; returns ATen's (out, mean, rstd)."""
  held = isinstance(x, _NHWC)
  x = x.value if held else _array(x)
  shape = (-1,) if held else (1, -1) + (1,) * (x.ndim - 2)
  scale = lax.rsqrt(var + eps)
  if weight is not None:
    scale = scale * weight
  out = (x - mean.reshape(shape)) * scale.reshape(shape)
  if bias is not None:
    out = out + bias.reshape(shape)
  if held:
    out = _NHWC(out)
  return out, _Unavailable("batch norm statistics"), _Unavailable("rstd")


def _pool_extent(length, window, stride, pad, dilation, ceil_mode):
  """PyTorch's output length of a pooling, and the extra high padding that
  ``ceil_mode`` adds to reach it."""
  span = dilation * (window - 1) + 1
  numerator = length + 2 * pad - span
  out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
  # The last window must start inside the image or its low padding.
  if ceil_mode and (out - 1) * stride >= length + pad:
    out -= 1
  extra = max((out - 1) * stride + span - (length + 2 * pad), 0)
  return out, extra


def _pool(x, kind, kernel, stride, padding, dilation, ceil_mode, spatial=2):
  """Max or sum reduce_window over the last ``spatial`` axes, PyTorch's
  padding and ceil mode included. Returns (sum or max, per-axis extents)."""
  kernel = _ints(kernel, spatial)
  stride = _ints(stride, spatial) if stride else kernel
  padding = _ints(padding, spatial)
  dilation = _ints(dilation, spatial)
  fill = -np.inf if kind == "max" else 0.0
  x, pending = _split_padding(x, fill, spatial)
  held = spatial == 2 and isinstance(x, _NHWC)
  x = x.value if held else _array(x)
  axes = (1, 2) if held else tuple(range(x.ndim - spatial, x.ndim))
  window, strides, dilations = [1] * x.ndim, [1] * x.ndim, [1] * x.ndim
  pads = [(0, 0)] * x.ndim
  extents = []
  for i, axis in enumerate(axes):
    low, high = pending[i]
    length = x.shape[axis] + low + high
    out, extra = _pool_extent(
      length, kernel[i], stride[i], padding[i], dilation[i], ceil_mode
    )
    extents.append((length, kernel[i], stride[i], padding[i], out))
    window[axis], strides[axis], dilations[axis] = (
      kernel[i],
      stride[i],
      dilation[i],
    )
    pads[axis] = (low + padding[i], high + padding[i] + extra)
  # NumPy: a concrete identity makes it reduce_window_max or _sum, the
  # primitives that XLA and the incremental path know.
  init = np.asarray(fill, x.dtype)
  out = lax.reduce_window(
    x,
    init,
    lax.max if kind == "max" else lax.add,
    tuple(window),
    tuple(strides),
    pads,
    window_dilation=tuple(dilations),
  )
  return (_NHWC(out) if held else out), extents


def _max_pool(x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
  out, _ = _pool(x, "max", kernel, stride, padding, dilation, ceil_mode)
  return out


def _max_pool_with_indices(*args, **kwargs):
  return _max_pool(*args, **kwargs), _Unavailable("max pooling indices")


def _window_counts(length, window, stride, pad, out, include_pad):
  """float [out]: how many cells PyTorch divides each window's sum by."""
  starts = np.arange(out) * stride - pad
  ends = np.minimum(starts + window, length + pad)
  if include_pad:
    return (ends - starts).astype(np.float32)
  return (np.minimum(ends, length) - np.maximum(starts, 0)).astype(np.float32)


def _avg_pool(
  x,
  kernel,
  stride=(),
  padding=0,
  ceil_mode=False,
  count_include_pad=True,
  divisor_override=None,
):
  if isinstance(x, _Padded):
    x = _array(x)  # padding folded as zeros would count as cells
  total, extents = _pool(x, "sum", kernel, stride, padding, 1, ceil_mode)
  if divisor_override:
    return _map(total, lambda t: t / divisor_override)
  counts = [
    _window_counts(length, window, step, pad, out, count_include_pad)
    for length, window, step, pad, out in extents
  ]
  if all(np.all(c == c[0]) for c in counts):
    # One divisor everywhere: a scalar keeps the op elementwise.
    divisor = float(np.prod([c[0] for c in counts]))
    return _map(total, lambda t: t / divisor)
  divisor = np.multiply.outer(*counts) if len(counts) == 2 else counts[0]
  if isinstance(total, _NHWC):
    return _NHWC(total.value / divisor[..., None].astype(total.value.dtype))
  return total / divisor.astype(total.dtype)


def _adaptive_bounds(length: int, out: int):
  """PyTorch's adaptive pooling windows: (start, end) per output cell."""
  return [(i * length // out, -(-(i + 1) * length // out)) for i in range(out)]


def _adaptive(x, output_size, kind):
  if isinstance(x, _Padded):
    x = _array(x)
  height, width = _shape(x)[-2:]
  size = [
    dim if out is None else int(out)
    for dim, out in zip((height, width), _ints(output_size, 2))
  ]
  if height % size[0] == 0 and width % size[1] == 0:
    # Equal windows: one window reduction (or a global one).
    kernel = (height // size[0], width // size[1])
    if kind == "avg" and size == [1, 1]:
      if isinstance(x, _NHWC):
        return _NHWC(jnp.mean(x.value, axis=(1, 2), keepdims=True))
      return jnp.mean(x, axis=(-2, -1), keepdims=True)
    out, _ = _pool(x, "max" if kind == "max" else "sum", kernel, kernel, 0, 1,
                   False)  # fmt: skip
    cells = float(kernel[0] * kernel[1])
    return out if kind == "max" else _map(out, lambda t: t / cells)
  x = _array(x)
  rows, cols = (
    _adaptive_bounds(height, size[0]),
    _adaptive_bounds(width, size[1]),
  )
  if kind == "avg":
    # Unequal windows: averaging matrices over each spatial axis.
    def matrix(bounds, length):
      m = np.zeros((len(bounds), length), np.float32)
      for i, (lo, hi) in enumerate(bounds):
        m[i, lo:hi] = 1.0 / (hi - lo)
      return jnp.asarray(m, x.dtype)

    return jnp.einsum(
      "...hw,ih,jw->...ij", x, matrix(rows, height), matrix(cols, width)
    )
  cells = [
    [jnp.max(x[..., r0:r1, c0:c1], axis=(-2, -1)) for c0, c1 in cols]
    for r0, r1 in rows
  ]
  return jnp.stack([jnp.stack(row, -1) for row in cells], -2)


def _adaptive_avg(x, output_size):
  return _adaptive(x, output_size, "avg")


def _adaptive_max(x, output_size):
  return _adaptive(x, output_size, "max"), _Unavailable("max pooling indices")


def _reshape(x, shape):
  return jnp.reshape(_array(x), tuple(int(s) for s in shape))


def _expand(x, sizes, implicit=False):
  x = _array(x)
  sizes = [int(s) for s in sizes]
  offset = len(sizes) - x.ndim
  shape = [x.shape[i - offset] if s == -1 else s for i, s in enumerate(sizes)]
  return jnp.broadcast_to(x, shape)


def _addmm(bias, a, b, beta=1, alpha=1):
  bias, product = _array(bias), jnp.matmul(_array(a), _array(b))
  if alpha != 1:
    product = product * alpha
  return product + (bias if beta == 1 else beta * bias)


def _slice(x, dim=0, start=None, end=None, step=1):
  x = _array(x)
  index = [slice(None)] * x.ndim
  index[dim] = slice(start, end, step)
  return x[tuple(index)]


def _select(x, dim, index):
  return jnp.take(_array(x), index, axis=dim)


def _squeeze(x, dims=None):
  x = _array(x)
  if dims is None:
    return jnp.squeeze(x)
  dims = (dims,) if isinstance(dims, int) else tuple(dims)
  return jnp.squeeze(x, [d % x.ndim for d in dims if x.shape[d] == 1])


def _reduce(fn):
  def lower(x, dim=None, keepdim=False, *, dtype=None):
    if dim is not None:
      dim = (dim,) if isinstance(dim, int) else tuple(dim) or None
    if isinstance(x, _NHWC) and dim is not None:
      logical = sorted(d % 4 for d in dim)
      physical = tuple(_TO_NCHW[d] for d in logical)
      out = fn(x.value, axis=physical, keepdims=keepdim)
      if keepdim:
        out = _NHWC(out)
      else:  # the axes left, back in logical order
        left = [_TO_NHWC[p] for p in range(4) if p not in physical]
        order = tuple(int(i) for i in np.argsort(left))
        if order != tuple(range(len(order))):
          out = jnp.transpose(out, order)
    else:
      out = fn(_array(x), axis=dim, keepdims=keepdim)
    return (
      out if dtype is None else _map(out, lambda t: t.astype(_dtype(dtype)))
    )

  return lower


def _softmax(x, dim, half_to_float=False):
  return jax.nn.softmax(_array(x), axis=dim)


def _log_softmax(x, dim, half_to_float=False):
  return jax.nn.log_softmax(_array(x), axis=dim)


def _dtype(dtype):
  if dtype is None:
    return None
  return jnp.dtype(torch.empty((), dtype=dtype).numpy().dtype)


def _full(size, value, *, dtype=None, **_):
  dtype = _dtype(dtype) or (
    jnp.float32 if isinstance(value, float) else jnp.int32
  )
  return jnp.full(tuple(int(s) for s in size), value, dtype)


def _scalar_tensor(value, *, dtype=None, **_):
  return jnp.asarray(value, _dtype(dtype) or jnp.float32)


def _to_copy(x, *, dtype=None, **_):
  return x if dtype is None else _map(x, lambda t: t.astype(_dtype(dtype)))


def _constant_pad(x, pad, value=0.0):
  """F.pad: ``pad`` (low, high) pairs from the last axis backwards; kept
  pending, for a following convolution or pooling to take."""
  if isinstance(x, _Padded):
    x = _array(x)
  rank = len(_shape(x))
  pairs = [(0, 0)] * rank
  for i in range(len(pad) // 2):
    pairs[rank - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
  return _Padded(x, tuple(pairs), float(value))


def _cat(tensors, dim=0):
  if all(isinstance(t, _NHWC) for t in tensors):
    axis = _TO_NCHW[dim % 4]  # channels: the last axis
    return _NHWC(jnp.concatenate([t.value for t in tensors], axis=axis))
  return jnp.concatenate([_array(t) for t in tensors], axis=dim)


def _split_with_sizes(x, sizes, dim=0):
  x = _array(x)
  return jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis=dim)


def _split(x, size, dim=0):
  x = _array(x)
  length = x.shape[dim]
  return _split_with_sizes(
    x, [min(size, length - s) for s in range(0, length, size)], dim
  )


def _clamp(x, min=None, max=None):  # noqa: A002 (ATen's argument names)
  def clamp(x):
    if min is not None:
      x = jnp.maximum(x, min)
    if max is not None:
      x = jnp.minimum(x, max)
    return x

  return _map(x, clamp)


def _gelu(x, *, approximate="none"):
  return _map(x, lambda t: jax.nn.gelu(t, approximate=approximate == "tanh"))


def _leaky_relu(x, negative_slope=0.01):
  return _map(x, lambda t: jnp.where(t >= 0, t, t * negative_slope))


def _hardswish(x):
  return _map(x, lambda t: t * jnp.clip(t + 3.0, 0.0, 6.0) / 6.0)


def _hardsigmoid(x):
  return _map(x, lambda t: jnp.clip(t + 3.0, 0.0, 6.0) / 6.0)


def _divide(rounding_mode):
  def divide(a, b):
    if rounding_mode == "floor":
      return jnp.floor_divide(a, b)
    if rounding_mode == "trunc":
      return jnp.trunc(jnp.true_divide(a, b)).astype(jnp.result_type(a, b))
    return jnp.true_divide(a, b)

  return divide


def _div(a, b, *, rounding_mode=None):
  return _elementwise(_divide(rounding_mode), a, b)


def _binary(fn):
  def lower(a, b, *, alpha=1):
    return _elementwise(
      lambda a, b: fn(a, b if alpha == 1 else b * alpha), a, b
    )

  return lower


def _unary(fn):
  return lambda x: _map(x, fn)


def _identity(x, *_, **__):
  return x


def _nothing(*_, **__):
  return None


def _permute(x, dims):
  return jnp.transpose(_array(x), tuple(int(d) for d in dims))


def _transpose(x, a, b):
  return jnp.swapaxes(_array(x), a, b)


def _dropout(x, p=0.5, train=False):
  if train:
    raise _Refuse("dropout in training mode")
  return x


def _where(condition, a, b):
  return _elementwise(jnp.where, condition, a, b)


def _sym_size(x, dim):
  return _shape(x)[dim]


class _Refuse(Exception):
  """Raised by a lowering for arguments it does not cover; becomes an
  ``UnsupportedOperator`` with the node's operator and module path."""


_LOWERINGS: dict[str, Callable] = {
  # Convolution, normalisation, pooling.
  "aten.convolution.default": _convolution,
  "aten._native_batch_norm_legit_no_training.default": _batch_norm,
  "aten.max_pool2d_with_indices.default": _max_pool_with_indices,
  "aten.max_pool2d.default": _max_pool,
  "aten.avg_pool2d.default": _avg_pool,
  "aten._adaptive_avg_pool2d.default": _adaptive_avg,
  "aten.adaptive_avg_pool2d.default": _adaptive_avg,
  "aten.adaptive_max_pool2d.default": _adaptive_max,
  # Activations.
  "aten.relu.default": _unary(lambda x: jnp.maximum(x, 0)),
  "aten.hardtanh.default": lambda x, lo=-1.0, hi=1.0: _clamp(x, lo, hi),
  "aten.clamp.default": _clamp,
  "aten.clamp_min.default": lambda x, lo: _clamp(x, lo),
  "aten.clamp_max.default": lambda x, hi: _clamp(x, None, hi),
  "aten.leaky_relu.default": _leaky_relu,
  "aten.gelu.default": _gelu,
  "aten.silu.default": _unary(jax.nn.silu),
  "aten.hardswish.default": _hardswish,
  "aten.hardsigmoid.default": _hardsigmoid,
  "aten.sigmoid.default": _unary(jax.nn.sigmoid),
  "aten.tanh.default": _unary(jnp.tanh),
  "aten.elu.default": lambda x, alpha=1.0, scale=1.0, input_scale=1.0: _map(
    x, lambda t: scale * jax.nn.elu(t * input_scale, alpha)
  ),
  "aten._softmax.default": _softmax,
  "aten._log_softmax.default": _log_softmax,
  "aten.dropout.default": _dropout,
  # Linear algebra.
  "aten.addmm.default": _addmm,
  "aten.mm.default": _binary(jnp.matmul),
  "aten.bmm.default": _binary(jnp.matmul),
  "aten.matmul.default": _binary(jnp.matmul),
  # Elementwise arithmetic (Tensor and Scalar overloads alike).
  **{
    f"aten.{name}.{overload}": _binary(fn)
    for name, fn in (
      ("add", jnp.add),
      ("sub", jnp.subtract),
      ("rsub", lambda a, b: jnp.subtract(b, a)),
      ("mul", jnp.multiply),
      ("maximum", jnp.maximum),
      ("minimum", jnp.minimum),
      ("eq", jnp.equal),
      ("ne", jnp.not_equal),
      ("gt", jnp.greater),
      ("ge", jnp.greater_equal),
      ("lt", jnp.less),
      ("le", jnp.less_equal),
    )
    for overload in ("Tensor", "Scalar", "default")
  },
  "aten.div.Tensor": _div,
  "aten.div.Scalar": _div,
  "aten.div.Tensor_mode": _div,
  "aten.div.Scalar_mode": _div,
  "aten.pow.Tensor_Scalar": _binary(jnp.power),
  "aten.pow.Tensor_Tensor": _binary(jnp.power),
  "aten.pow.Scalar": _binary(jnp.power),
  "aten.where.self": _where,
  **{
    f"aten.{name}.default": _unary(fn)
    for name, fn in (
      ("neg", jnp.negative),
      ("abs", jnp.abs),
      ("exp", jnp.exp),
      ("log", jnp.log),
      ("sqrt", jnp.sqrt),
      ("rsqrt", lax.rsqrt),
      ("reciprocal", jnp.reciprocal),
      ("erf", jax.scipy.special.erf),
      ("floor", jnp.floor),
      ("ceil", jnp.ceil),
      ("round", jnp.round),
      ("logical_not", jnp.logical_not),
    )
  },
  # Reductions.
  "aten.mean.dim": _reduce(jnp.mean),
  "aten.mean.default": _reduce(jnp.mean),
  "aten.sum.dim_IntList": _reduce(jnp.sum),
  "aten.sum.default": _reduce(jnp.sum),
  "aten.amax.default": _reduce(jnp.max),
  "aten.amin.default": _reduce(jnp.min),
  # Shapes and copies.
  "aten.view.default": _reshape,
  "aten._unsafe_view.default": _reshape,
  "aten.reshape.default": _reshape,
  "aten.expand.default": _expand,
  "aten.permute.default": _permute,
  "aten.transpose.int": _transpose,
  "aten.t.default": lambda x: jnp.transpose(_array(x)),
  "aten.unsqueeze.default": lambda x, d: jnp.expand_dims(_array(x), d),
  "aten.squeeze.dim": _squeeze,
  "aten.squeeze.dims": _squeeze,
  "aten.squeeze.default": _squeeze,
  "aten.cat.default": _cat,
  "aten.split_with_sizes.default": _split_with_sizes,
  "aten.split.Tensor": _split,
  "aten.slice.Tensor": _slice,
  "aten.select.int": _select,
  "aten.constant_pad_nd.default": _constant_pad,
  "aten.clone.default": _identity,
  "aten.alias.default": _identity,
  "aten.detach.default": _identity,
  "aten.lift_fresh_copy.default": _identity,
  "aten.contiguous.default": _identity,
  "aten._to_copy.default": _to_copy,
  "aten.full.default": _full,
  "aten.scalar_tensor.default": _scalar_tensor,
  "aten.sym_size.int": _sym_size,
  # Export's own checks: nothing to compute.
  "aten._assert_tensor_metadata.default": _nothing,
  "aten._assert_scalar.default": _nothing,
  "aten.sym_constrain_range_for_size.default": _nothing,
  # Python arithmetic on sizes (a dynamic batch) and tuple outputs.
  **{
    f"_operator.{fn.__name__}": fn
    for fn in (
      operator.getitem,
      operator.add,
      operator.sub,
      operator.mul,
      operator.floordiv,
      operator.truediv,
      operator.mod,
      operator.neg,
    )
  },
}

# The operators translated, as ``str(node.target)`` names them.
SUPPORTED = frozenset(_LOWERINGS)


def _name(target) -> str:
  """An FX node's target as "aten.op.overload" or "_operator.mul"."""
  if isinstance(target, torch._ops.OpOverload):
    return str(target)
  return f"{getattr(target, '__module__', '?')}.{target.__name__}"


def _where_in(node) -> str:
  """The innermost submodule a node comes from: "path (Type)", or ""."""
  stack = node.meta.get("nn_module_stack") or {}
  if not stack:
    return ""
  path, kind = list(stack.values())[-1]
  kind = kind if isinstance(kind, str) else kind.__name__
  kind = kind.rpartition(".")[2]
  return f"submodule {path!r} ({kind})" if path else f"the {kind} module"


def export(module, input_shape, dtype=torch.float32):
  """``module`` exported at ``input_shape`` [B, ...], batch axis dynamic,
  lowered to core ATen operators.

  Raises:
    TranslationError: ``torch.export`` cannot capture the module (data-
      dependent control flow, a batch size baked into the code).
  """
  example = torch.zeros(tuple(input_shape), dtype=dtype)
  try:
    batch = torch.export.Dim("batch", min=1)
    # torch 2.13's exporter warns of its own deprecated pytree API: noise
    # the user can do nothing about.
    with torch.no_grad(), warnings.catch_warnings():
      warnings.filterwarnings(
        "ignore", message=".*LeafSpec.*", category=FutureWarning
      )
      program = torch.export.export(
        module, (example,), dynamic_shapes=({0: batch},), strict=False
      )
      return program.run_decompositions()
  except Exception as error:
    message = str(error).strip().splitlines()
    raise TranslationError(
      f"torch.export could not capture the module with a dynamic batch "
      f"axis ({type(error).__name__}: {message[0] if message else ''})"
    ) from error


class Translation(NamedTuple):
  """A module as a JAX function.

  Attributes:
    apply: ``apply(params, x [B, ...] in the module's input layout) ->
      output``, jax.numpy operations only (jittable, vmappable);
      ``apply(params, x, channels_last=True)`` takes an NCHW module's
      input as NHWC [B, H, W, C], with no transpose.
    params: the module's parameters, buffers and constant tensors as
      NumPy arrays, by the exported graph's names for them.
    operators: how many times each ATen operator occurs in the graph.
  """

  apply: Callable
  params: dict
  operators: dict


def _constants(program) -> dict:
  """Placeholder name -> NumPy array, for every parameter, buffer and
  constant tensor of the exported program; the user input is left out.

  NumPy, not JAX: the translation may happen while a search is being
  traced, where a JAX array made from them would be a tracer of it."""
  state = {**program.state_dict, **program.constants}
  out = {}
  for spec in program.graph_signature.input_specs:
    if spec.kind.name == "USER_INPUT":
      continue
    tensor = state[spec.target]
    tensor = tensor.detach().cpu()
    out[spec.arg.name] = tensor.numpy().copy()
  return out


def translate(module, input_shape, dtype=torch.float32) -> Translation:
  """``module`` as JAX operations.

  Args:
    module: a ``torch.nn.Module`` in eval mode with one tensor input and one
      tensor output.
    input_shape: the module's input shape [B, ...] to export at (B >= 2
      keeps the batch axis free; the result takes any batch size).
    dtype: the input dtype the module takes.

  Returns:
    a ``Translation``.

  Raises:
    TranslationError: the module does not export, takes or returns other
      than one tensor, or its parameters are not float32.
    UnsupportedOperator: its graph holds an operator with no lowering here
      (the first found, with the submodule where it occurs).
  """
  program = export(module, input_shape, dtype)
  user_inputs = [
    s
    for s in program.graph_signature.input_specs
    if s.kind.name == "USER_INPUT"
  ]
  user_outputs = [
    s
    for s in program.graph_signature.output_specs
    if s.kind.name == "USER_OUTPUT"
  ]
  if len(user_inputs) != 1 or len(user_outputs) != 1:
    raise TranslationError(
      f"expected a module with one tensor input and one tensor output, got "
      f"{len(user_inputs)} inputs and {len(user_outputs)} outputs"
    )
  if len(program.graph_signature.output_specs) != 1:
    raise TranslationError(
      "the module changes its own buffers in forward (a module in eval mode "
      "should not)"
    )
  constants = _constants(program)
  for name, value in constants.items():
    if np.issubdtype(value.dtype, np.floating) and value.dtype != np.float32:
      raise TranslationError(
        f"the translation runs float32 modules; {name} is {value.dtype}"
      )
  nodes, operators = [], {}
  for node in program.graph.nodes:
    if node.op != "call_function":
      nodes.append((node, None))
      continue
    name = _name(node.target)
    if name not in _LOWERINGS:
      raise UnsupportedOperator(name, _where_in(node))
    operators[name] = operators.get(name, 0) + 1
    nodes.append((node, _LOWERINGS[name]))
  input_name = user_inputs[0].arg.name
  output_name = user_outputs[0].arg.name

  def apply(params, x, channels_last=False):
    if channels_last:
      if np.ndim(x) != 4:
        raise ValueError(
          f"x: channels_last needs images [B, H, W, C], got {np.shape(x)}"
        )
      x = _NHWC(x)
    env = {}

    def read(value):
      return env[value.name]

    for node, lower in nodes:
      if node.op == "placeholder":
        env[node.name] = x if node.name == input_name else params[node.name]
      elif node.op == "call_function":
        args = torch.fx.node.map_arg(node.args, read)
        kwargs = torch.fx.node.map_arg(node.kwargs, read)
        # getitem picks from a tuple that may hold what was not computed.
        leaves = [] if lower is operator.getitem else jax.tree.leaves(args)
        for value in leaves + jax.tree.leaves(kwargs):
          if isinstance(value, _Unavailable):
            raise UnsupportedOperator(
              _name(node.target), _where_in(node), f"it reads {value.what}"
            )
        try:
          env[node.name] = lower(*args, **kwargs)
        except _Refuse as error:
          raise UnsupportedOperator(
            _name(node.target), _where_in(node), str(error)
          ) from None
    return _array(env[output_name])

  return Translation(apply, constants, operators)
