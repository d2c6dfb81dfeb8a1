"""Incremental evaluation: a few changed pixels recompute only what they touch.

A candidate changes d pixels, and in a network's early layers only the
receptive fields of those pixels change. ``Evaluator`` traces ``predict``
once, at batch 1, as one flat program (``canonical.flat_jaxpr``), and replays
that program per candidate with each feature map that depends on the image
held as d fixed-size windows, one around each changed pixel:

* elementwise ops run on the windows (constant operands must not vary over
  the batch or the map, as biases and batch-norm statistics do not);
* a convolution or a window reduction (max, min or average pooling) runs
  on each output window's input patch: the clean image's map
  (``clean_maps``), padded as the op pads, with the d input windows written
  over it;
* pooling written as a reshape into blocks and a reduction over them runs
  on windows widened to whole blocks;
* a transpose permutes the windows' axes.

Any other op (a dense layer, global pooling, a reshape, anything unknown),
operands whose windows differ (a residual sum), or windows that would hold
nearly all of the map (``WHOLE_SHARE``) turn the map back into a whole one:
the clean map with the windows written in, or the window itself when it
covers the map. From there the program runs as traced. The logits are
those of the full pass up to float rounding (the same products, summed in
another order). Whether an attack takes this path is decided in
incremental_choice.py.
"""

import dataclasses
import functools

import jax
from jax import lax
from jax.extend import core
import jax.numpy as jnp
import numpy as np

from pixeljax.attack import canonical

# A map goes whole once its windows would hold this share of its cells:
# assembling each window's patch costs gathers that a whole map does not.
# Windows run at about the whole map's FLOP rate on CPU
# (benchmarks/results/incremental_profile_cpu.md), so they pay until they
# hold nearly all of it: at d = 3, 0.9 instead of 0.5 ran AllConv 1.12x and
# NiN 1.2x faster (benchmarks/results/incremental_cpu.md).
WHOLE_SHARE = 0.9

# Shape-preserving elementwise primitives: on windows they compute exactly
# what they compute on the window's cells of the full map.
_ELEMENTWISE = frozenset(
  {
    "abs",
    "add",
    "and",
    "atan2",
    "cbrt",
    "ceil",
    "clamp",
    "convert_element_type",
    "copy",
    "copy_p",
    "cos",
    "div",
    "eq",
    "erf",
    "erf_inv",
    "erfc",
    "exp",
    "exp2",
    "expm1",
    "floor",
    "ge",
    "gt",
    "integer_pow",
    "is_finite",
    "le",
    "log",
    "log1p",
    "logistic",
    "lt",
    "max",
    "min",
    "mul",
    "ne",
    "neg",
    "not",
    "or",
    "pow",
    "reduce_precision",
    "rem",
    "round",
    "rsqrt",
    "select_n",
    "sign",
    "sin",
    "sqrt",
    "square",
    "sub",
    "tan",
    "tanh",
    "xor",
  }
)

# Window reductions (pooling) and the value their padding stands for.
_REDUCE_WINDOW = {
  "reduce_window_max": -np.inf,
  "reduce_window_min": np.inf,
  "reduce_window_sum": 0.0,
}
_REDUCE = frozenset({"reduce_max", "reduce_min", "reduce_sum"})


@dataclasses.dataclass(frozen=True, eq=False)
class _Windows:
  """Where a feature map's d windows lie (compared by identity: maps that
  share this object have their windows at the same places).

  Attributes:
    rows, cols: int32 [d], each window's first row and column.
    height, width: the windows' size, the same for all d (static).
    map_height, map_width: the map's size (static).
  """

  rows: jax.Array
  cols: jax.Array
  height: int
  width: int
  map_height: int
  map_width: int

  @property
  def cover_map(self) -> bool:
    return self.height == self.map_height and self.width == self.map_width


@dataclasses.dataclass(frozen=True)
class _Const:
  """A value that does not depend on the image."""

  value: jax.Array


@dataclasses.dataclass(frozen=True)
class _Full:
  """A whole value of the traced program (batch 1)."""

  value: jax.Array


@dataclasses.dataclass(frozen=True)
class _Win:
  """Feature map ``var`` as d windows.

  ``value`` has the map's layout, with the d windows along the batch axis
  and the windows' size along the row and column axes; ``axes`` are the
  (batch, row, column) axes.
  """

  value: jax.Array
  var: object
  windows: _Windows
  axes: tuple


@dataclasses.dataclass(frozen=True)
class _Blocks:
  """The windows of ``source`` widened to whole blocks and reshaped as the
  traced program reshapes the map into blocks, before a reduction pools them.

  ``value`` is canonical: [d, block rows, block height, block columns,
  block width, other axes...]; ``windows`` place the blocks; ``axes`` are
  the (batch, block row, block column) axes of the reshaped map.
  """

  value: jax.Array
  source: _Win
  windows: _Windows
  axes: tuple
  shape: tuple


def _permutation(axes, rank):
  """Canonical order of a windowed value's axes: batch, row, column, then
  the others in their order."""
  return (*axes, *(a for a in range(rank) if a not in axes))


def _to_canonical(value, axes):
  return lax.transpose(value, _permutation(axes, value.ndim))


def _from_canonical(value, axes):
  return lax.transpose(value, tuple(np.argsort(_permutation(axes, value.ndim))))


def _through(starts, size, out_length, kernel, stride, pad_low, dilation):
  """One spatial axis through a sliding window op.

  Args:
    starts: int32 [d], the input windows' first index on this axis.
    size: the input windows' size.
    out_length: the output map's length.
    kernel, stride, pad_low, dilation: the op's, on this axis.

  Returns:
    (out_size, out_starts, patch_starts, patch_size): the fixed-size output
    windows that hold every output cell the input windows reach (moved
    inside the map at its edges), and the input patch each one reads.
  """
  reach = (kernel - 1) * dilation
  out_size = min(out_length, (size - 1 + reach) // stride + 1)
  # First output cell whose receptive field reaches the window:
  # ceil((starts + pad_low - reach) / stride).
  first = -((reach - pad_low - starts) // stride)
  out_starts = jnp.clip(first, 0, out_length - out_size)
  patch_starts = out_starts * stride - pad_low
  patch_size = (out_size - 1) * stride + reach + 1
  return out_size, out_starts, patch_starts, patch_size


class _Maps:
  """The clean maps a candidate's replay reads, for one image.

  Each read is keyed by (var, axes, fill, margins): the map of ``var`` in
  canonical order [H, W, others...] padded on each side by ``margins`` rows
  and columns of ``fill``. With no arrays (the dry run), reads are recorded
  and answered with zeros of the right shape.
  """

  def __init__(self, requests=None, arrays=None, image=None):
    self.requests = [] if requests is None else list(requests)
    self.arrays = arrays
    self.image = image

  def _array(self, var, axes, fill, margins):
    key = (var, axes, fill, margins)
    if self.arrays is None:
      if key not in self.requests:
        self.requests.append(key)
      return jnp.zeros((1, *_padded_shape(*key)), var.aval.dtype)
    return self.arrays[self.requests.index(key)]

  def patch(self, var, axes, fill, margins, row, col, height, width):
    """The padded map's [height, width] patch whose first cell is (row, col)
    of the unpadded map."""
    array = self._array(var, axes, fill, margins)
    (top, _), (left, _) = margins
    image = 0 if self.image is None else self.image
    zero = jnp.zeros((), jnp.int32)
    start = (image, row + top, col + left) + (zero,) * (array.ndim - 3)
    sizes = (1, height, width, *array.shape[3:])
    return lax.dynamic_slice(array, start, sizes)[0]

  def whole(self, var, axes):
    """The map of ``var``, canonical [H, W, others...]."""
    shape = _padded_shape(var, axes, 0.0, ((0, 0), (0, 0)))
    return self.patch(var, axes, 0.0, ((0, 0), (0, 0)), 0, 0, *shape[:2])


def _padded_shape(var, axes, fill, margins):
  del fill
  shape = [var.aval.shape[a] for a in _permutation(axes, len(var.aval.shape))]
  (top, bottom), (left, right) = margins
  return (shape[1] + top + bottom, shape[2] + left + right, *shape[3:])


def _assemble(win, maps, rows, cols, height, width, fill, margins):
  """Patches canonical [d, height, width, others...] of ``win``'s map,
  patch j starting at (rows[j], cols[j]): the clean map (``fill`` outside
  it) with the d windows written over it."""
  windows = win.windows
  values = _to_canonical(win.value, win.axes)
  others = values.ndim - 3

  def one(row, col):
    patch = maps.patch(
      win.var, win.axes, fill, margins, row, col, height, width
    )
    r = row + jnp.arange(height)
    c = col + jnp.arange(width)
    for i in range(values.shape[0]):
      ri = r - windows.rows[i]
      ci = c - windows.cols[i]
      inside = ((ri >= 0) & (ri < windows.height))[:, None] & (
        (ci >= 0) & (ci < windows.width)
      )[None, :]
      cells = values[i][jnp.clip(ri, 0, windows.height - 1)][
        :, jnp.clip(ci, 0, windows.width - 1)
      ]
      patch = jnp.where(
        inside.reshape(inside.shape + (1,) * others), cells, patch
      )
    return patch

  return jax.vmap(one)(rows, cols)


def _materialize(value, maps):
  """``value`` as a whole value of the traced program."""
  if isinstance(value, (_Const, _Full)):
    return value.value
  if isinstance(value, _Blocks):
    return jnp.reshape(_materialize(value.source, maps), value.shape)
  windows = value.windows
  if windows.cover_map:  # every window holds the whole, exact map
    return lax.slice_in_dim(value.value, 0, 1, axis=value.axes[0])
  canvas = maps.whole(value.var, value.axes)
  values = _to_canonical(value.value, value.axes)
  zero = jnp.zeros((), jnp.int32)
  for i in range(values.shape[0]):
    start = (windows.rows[i], windows.cols[i]) + (zero,) * (canvas.ndim - 2)
    canvas = lax.dynamic_update_slice(canvas, values[i], start)
  return _from_canonical(canvas[None], value.axes)


def _flops(eqn, invals, outvals) -> int:
  """Multiply-adds x 2 of a convolution or a matrix product."""
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec
    kernel = invals[1].shape
    per_output = np.prod([kernel[a] for a in rhs_spec[1:]])
    return int(2 * np.prod(outvals[0].shape) * per_output)
  if name == "dot_general":
    (contracting, _), _ = eqn.params["dimension_numbers"]
    inner = np.prod([invals[0].shape[a] for a in contracting])
    return int(2 * np.prod(outvals[0].shape) * inner)
  return 0


class _Replay:
  """One candidate's pass through the traced program, maps as windows."""

  def __init__(self, maps):
    self.maps = maps
    self.flops = 0
    self.windowed_ops = 0

  def bind(self, eqn, params, values):
    out = canonical.bind(eqn, params, values)
    self.flops += _flops(eqn, values, out)
    return out

  def run(self, closed, perturbation):
    """Logits [K] of the image with ``perturbation`` int32 [d, 2 + C]."""
    jaxpr = closed.jaxpr
    env = {}

    def read(var):
      if isinstance(var, core.Literal):
        return _Const(var.val)
      return env[var]

    for var, value in zip(jaxpr.constvars, closed.consts):
      env[var] = _Const(value)
    (images,) = jaxpr.invars
    _, height, width, channels = images.aval.shape
    pixels = perturbation.shape[0]
    colours = perturbation[:, 2:].astype(images.aval.dtype)
    env[images] = _Win(
      value=colours.reshape(pixels, 1, 1, channels),
      var=images,
      windows=_Windows(
        rows=perturbation[:, 1],
        cols=perturbation[:, 0],
        height=1,
        width=1,
        map_height=height,
        map_width=width,
      ),
      axes=(0, 1, 2),
    )
    for eqn in jaxpr.eqns:
      outs = self.step(eqn, [read(var) for var in eqn.invars])
      for var, value in zip(eqn.outvars, outs):
        env[var] = value
    (logits,) = [read(var) for var in jaxpr.outvars]
    return _materialize(logits, self.maps)[0]

  def step(self, eqn, invals):
    """The values of ``eqn``'s outputs, as windows where it can."""
    if all(isinstance(v, _Const) for v in invals):
      return [
        _Const(v) for v in self.bind(eqn, eqn.params, [v.value for v in invals])
      ]
    name = eqn.primitive.name
    rule = None
    if name in _ELEMENTWISE:
      rule = self.elementwise
    elif name == "conv_general_dilated":
      rule = self.conv
    elif name in _REDUCE_WINDOW:
      rule = self.reduce_window
    elif name == "transpose":
      rule = self.transpose
    elif name == "reshape":
      rule = self.blocks
    elif name in _REDUCE:
      rule = self.pool_blocks
    out = None if rule is None else rule(eqn, invals)
    if out is not None:
      self.windowed_ops += 1
      return [out]
    values = [_materialize(v, self.maps) for v in invals]
    return [_Full(v) for v in self.bind(eqn, eqn.params, values)]

  @staticmethod
  def _cheaper_whole(count, windows):
    """Whether ``count`` windows hold ``WHOLE_SHARE`` of the map's cells or
    more: then one whole map costs less than the windows."""
    area = windows.height * windows.width
    return count * area >= WHOLE_SHARE * windows.map_height * windows.map_width

  def _windowed(self, value, var, windows, axes):
    """A window value of ``var``; a whole one once the windows cover the map."""
    out = _Win(value, var, windows, axes)
    return _Full(_materialize(out, self.maps)) if windows.cover_map else out

  def elementwise(self, eqn, invals):
    wins = [v for v in invals if isinstance(v, _Win)]
    if len(wins) + sum(isinstance(v, _Const) for v in invals) < len(invals):
      return None  # a whole or blocked operand
    first = wins[0]
    if any(
      w.windows is not first.windows or w.axes != first.axes for w in wins
    ):
      return None
    values = []
    for v in invals:
      if isinstance(v, _Const):
        shape = jnp.shape(v.value)
        if shape and any(shape[a] != 1 for a in first.axes):
          return None  # varies over the batch or the map
      values.append(v.value)
    (out,) = self.bind(eqn, eqn.params, values)
    return _Win(out, eqn.outvars[0], first.windows, first.axes)

  def _slide(self, eqn, operand, axis_params, out_axes, fill, params, rest):
    """A sliding-window op (a convolution, a pooling) on ``operand``'s
    windows, or None where the windows would be dearer than the whole map.

    Args:
      eqn: the op.
      operand: its windowed input.
      axis_params: for the input's row and column axis each, (kernel,
        stride, (pad low, pad high), dilation).
      out_axes: the output's (batch, row, column) axes.
      fill: what the op's padding stands for.
      params: the op's parameters with no padding, bound on the patches.
      rest: the op's other operands (the kernel).
    """
    out_shape = eqn.outvars[0].aval.shape
    _, row, col = operand.axes
    windows = operand.windows
    placed = [
      _through(starts, size, out_shape[out_axis], kernel, stride, pad[0], dil)
      for starts, size, out_axis, (kernel, stride, pad, dil) in (
        (windows.rows, windows.height, out_axes[1], axis_params[row]),
        (windows.cols, windows.width, out_axes[2], axis_params[col]),
      )
    ]
    (height, rows, patch_rows, patch_height) = placed[0]
    (width, cols, patch_cols, patch_width) = placed[1]
    windows = _Windows(
      rows, cols, height, width, out_shape[out_axes[1]], out_shape[out_axes[2]]
    )
    if self._cheaper_whole(operand.value.shape[operand.axes[0]], windows):
      return None
    margins = tuple(
      (max(axis_params[a][2][0], 0), max(axis_params[a][2][1], 0))
      for a in (row, col)
    )
    patches = _assemble(
      operand,
      self.maps,
      patch_rows,
      patch_cols,
      patch_height,
      patch_width,
      fill,
      margins,
    )
    (out,) = self.bind(
      eqn, params, [_from_canonical(patches, operand.axes), *rest]
    )
    return self._windowed(out, eqn.outvars[0], windows, out_axes)

  def conv(self, eqn, invals):
    lhs, rhs = invals
    params = eqn.params
    if not isinstance(lhs, _Win) or not isinstance(rhs, _Const):
      return None
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    batch, row, col = lhs.axes
    if (
      len(lhs_spec) != 4
      or lhs_spec[0] != batch
      or set(lhs_spec[2:]) != {row, col}
      or any(d != 1 for d in params["lhs_dilation"])
      or params["batch_group_count"] != 1
    ):
      return None
    # Spatial axis k of the convolution is input axis lhs_spec[2 + k].
    axis_params, out_axis = {}, {}
    for k, axis in enumerate(lhs_spec[2:]):
      axis_params[axis] = (
        rhs.value.shape[rhs_spec[2 + k]],
        params["window_strides"][k],
        params["padding"][k],
        params["rhs_dilation"][k],
      )
      out_axis[axis] = out_spec[2 + k]
    return self._slide(
      eqn,
      lhs,
      axis_params,
      (out_spec[0], out_axis[row], out_axis[col]),
      0.0,
      dict(params, padding=((0, 0), (0, 0))),
      [rhs.value],
    )

  def reduce_window(self, eqn, invals):
    (operand,) = invals
    if not isinstance(operand, _Win):
      return None
    params = eqn.params
    _, row, col = operand.axes
    for a in range(operand.value.ndim):
      if a not in (row, col) and (
        params["window_dimensions"][a] != 1
        or params["window_strides"][a] != 1
        or tuple(params["padding"][a]) != (0, 0)
        or params["window_dilation"][a] != 1
      ):
        return None
    if any(d != 1 for d in params["base_dilation"]):
      return None
    axis_params = {
      a: (
        params["window_dimensions"][a],
        params["window_strides"][a],
        params["padding"][a],
        params["window_dilation"][a],
      )
      for a in (row, col)
    }
    return self._slide(
      eqn,
      operand,
      axis_params,
      operand.axes,
      _REDUCE_WINDOW[eqn.primitive.name],
      dict(params, padding=tuple((0, 0) for _ in params["padding"])),
      [],
    )

  def transpose(self, eqn, invals):
    (operand,) = invals
    if not isinstance(operand, _Win):
      return None
    permutation = tuple(eqn.params["permutation"])
    (out,) = self.bind(eqn, eqn.params, [operand.value])
    axes = tuple(permutation.index(a) for a in operand.axes)
    return _Win(out, eqn.outvars[0], operand.windows, axes)

  def blocks(self, eqn, invals):
    """A reshape that splits the rows and columns into blocks, for pooling."""
    (operand,) = invals
    if not isinstance(operand, _Win) or eqn.params.get("dimensions"):
      return None
    in_shape = eqn.invars[0].aval.shape
    out_shape = tuple(eqn.outvars[0].aval.shape)
    batch, row, col = operand.axes
    expected, axes, block = [], {}, {}
    for a, length in enumerate(in_shape):
      axes[a] = len(expected)
      if a in (row, col):
        if len(out_shape) < len(expected) + 2:
          return None
        block[a] = out_shape[len(expected) + 1]
        if block[a] < 1 or length % block[a]:
          return None
        expected += [length // block[a], block[a]]
      else:
        expected.append(length)
    if tuple(expected) != out_shape:
      return None
    windows = operand.windows
    placed = {}
    for a, starts, size, length in (
      (row, windows.rows, windows.height, windows.map_height),
      (col, windows.cols, windows.width, windows.map_width),
    ):
      count = min(length // block[a], (size + block[a] - 2) // block[a] + 1)
      first = jnp.clip(starts // block[a], 0, length // block[a] - count)
      placed[a] = (first, count)
    patches = _assemble(
      operand,
      self.maps,
      placed[row][0] * block[row],
      placed[col][0] * block[col],
      placed[row][1] * block[row],
      placed[col][1] * block[col],
      0.0,
      ((0, 0), (0, 0)),
    )
    value = patches.reshape(
      patches.shape[0],
      placed[row][1],
      block[row],
      placed[col][1],
      block[col],
      *patches.shape[3:],
    )
    blocked = _Windows(
      placed[row][0],
      placed[col][0],
      placed[row][1],
      placed[col][1],
      windows.map_height // block[row],
      windows.map_width // block[col],
    )
    return _Blocks(
      value, operand, blocked, (axes[batch], axes[row], axes[col]), out_shape
    )

  def pool_blocks(self, eqn, invals):
    """A reduction over the blocks a ``blocks`` reshape made."""
    (operand,) = invals
    if not isinstance(operand, _Blocks):
      return None
    _, row, col = operand.axes
    if tuple(sorted(eqn.params["axes"])) != tuple(sorted((row + 1, col + 1))):
      return None
    (pooled,) = self.bind(eqn, dict(eqn.params, axes=(2, 4)), [operand.value])
    # The output's axes: the reshaped map's, less the two block axes.
    kept = [a for a in range(len(operand.shape)) if a not in (row + 1, col + 1)]
    axes = tuple(kept.index(a) for a in operand.axes)
    out = _from_canonical(pooled, axes)
    return self._windowed(out, eqn.outvars[0], operand.windows, axes)


def _clean_values(closed, requests, image):
  """The requested maps of one float32 [H, W, C] image, canonical and
  padded (see ``_Maps``)."""
  jaxpr = closed.jaxpr
  env = dict(zip(jaxpr.constvars, closed.consts))
  env[jaxpr.invars[0]] = image[None]

  def read(var):
    return var.val if isinstance(var, core.Literal) else env[var]

  wanted = {var for var, *_ in requests}
  for eqn in jaxpr.eqns:
    if wanted.issubset(env):
      break
    outs = canonical.bind(eqn, eqn.params, [read(v) for v in eqn.invars])
    env.update(zip(eqn.outvars, outs))
  maps = []
  for var, axes, fill, margins in requests:
    value = _to_canonical(env[var], axes)[0]
    pad = [*margins] + [(0, 0)] * (value.ndim - 2)
    maps.append(jnp.pad(value, pad, constant_values=fill))
  return tuple(maps)


class Evaluator:
  """``predict``'s logits for d-pixel candidates, computed incrementally.

  Attributes:
    closed: the flat program of ``predict`` at batch 1.
    requests: the clean maps each candidate reads (see ``_Maps``).
    flops: counted FLOPs of one candidate (convolutions and matrix products).
    full_flops: the same for one full forward pass.
    windowed_ops: ops of the program that ran on windows.
  """

  def __init__(self, predict, image_shape, pixels: int):
    """``predict``: float32 [B, H, W, C] -> logits [B, K]; ``image_shape``:
    (H, W, C); ``pixels``: d, the changed pixels of every candidate."""
    self.closed, _ = canonical.flat_jaxpr(predict, (1, *image_shape))
    dry = _Maps()
    replay = _Replay(dry)
    probe = jax.ShapeDtypeStruct((pixels, 2 + image_shape[-1]), jnp.int32)
    jax.eval_shape(lambda p: replay.run(self.closed, p), probe)
    self.requests = tuple(dry.requests)
    self.flops = replay.flops
    self.windowed_ops = replay.windowed_ops
    self.full_flops = sum(
      _flops(
        eqn,
        [v.aval for v in eqn.invars],
        [v.aval for v in eqn.outvars],
      )
      for eqn in self.closed.jaxpr.eqns
    )

  def clean_maps(self, images):
    """The maps candidates read, of images [M, H, W, C] (any real dtype):
    a tuple of arrays [M, ...], ``map_bytes`` bytes per image."""
    images = images.astype(jnp.float32)
    return jax.vmap(
      lambda image: _clean_values(self.closed, self.requests, image)
    )(images)

  @property
  def map_bytes(self) -> int:
    """Bytes of one image's clean maps."""
    return sum(
      int(np.prod(_padded_shape(*key))) * key[0].aval.dtype.itemsize
      for key in self.requests
    )

  def logits(self, maps, image_index, perturbation):
    """Logits [B, K] of B candidates.

    Args:
      maps: ``clean_maps`` of M images.
      image_index: int32 [B], each candidate's image among the M.
      perturbation: int32 [B, d, 2 + C], each candidate's decoded pixels
        (``pixels.decode``: repeated positions already carry one colour).
    """

    def one(index, pixels):
      return _Replay(_Maps(self.requests, maps, index)).run(self.closed, pixels)

    return jax.vmap(one)(image_index, perturbation)


@functools.lru_cache(maxsize=8)
def evaluator(predict, image_shape: tuple, pixels: int) -> Evaluator:
  """The ``Evaluator`` of ``predict`` at (H, W, C) ``image_shape`` and d =
  ``pixels``, traced once: the attack's checks and its compiled scoring
  share it."""
  return Evaluator(predict, image_shape, pixels)
