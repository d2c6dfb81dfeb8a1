"""Convolutions rewritten to the layout XLA's CPU backend runs fast in loops.

XLA's CPU compiler only has a fast convolution (Eigen, or a YNNPACK fusion)
for the canonical layout: input [N, spatial..., C], kernel [spatial..., I, O],
output [N, spatial..., C] (NHWC / HWIO in 2-D). Its ``convolution-
canonicalization`` pass wraps any other convolution in transposes to reach
that layout, but it walks the entry computation only
(``module->entry_computation()`` in xla/service/cpu/conv_canonicalization.cc).
A convolution in a loop body (``lax.fori_loop``, ``lax.map``, ``scan``,
``while_loop``) keeps its layout, for instance PyTorch's OIHW kernels or NCHW
images, and is emitted as a naive elemental loop nest: on a 2-core CPU a
CIFAR-10 CNN ran at about 100 images/s in a loop against 2,500 under a plain
``jax.jit``. The engine calls the model in loops, so ``for_loops`` does the
canonicalisation itself: it traces ``predict`` at the call's shape and
replays it with every non-canonical convolution between explicit transposes.
Transposes of constant kernels fold away at compile time, and a model whose
convolutions are canonical already is called exactly as it is.
"""

import contextlib
import functools

import jax
from jax import lax
from jax.extend import core
import jax.numpy as jnp

# Call-like primitives whose body is replayed inline: for a forward pass this
# is what they compute (a jit boundary, a custom derivative or a
# rematerialisation policy changes nothing in the values).
_INLINE = frozenset(
  {
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "call",
    "remat2",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
  }
)


def _canonical_numbers(rank: int) -> lax.ConvDimensionNumbers:
  """NHWC / HWIO / NHWC dimension numbers for ``rank``-dimensional operands."""
  spatial = tuple(range(1, rank - 1))
  return lax.ConvDimensionNumbers(
    lhs_spec=(0, rank - 1, *spatial),
    rhs_spec=(rank - 1, rank - 2, *range(rank - 2)),
    out_spec=(0, rank - 1, *spatial),
  )


def _is_slow_conv(eqn) -> bool:
  """Whether ``eqn`` is a convolution in a non-canonical layout."""
  if eqn.primitive is not lax.conv_general_dilated_p:
    return False
  rank = len(eqn.invars[0].aval.shape)
  return tuple(eqn.params["dimension_numbers"]) != tuple(
    _canonical_numbers(rank)
  )


def _subjaxprs(value):
  """The open jaxprs in an equation's parameter ``value``."""
  if isinstance(value, core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [sub for item in value for sub in _subjaxprs(item)]
  return []


def _inner_needs_rewrite(eqn) -> bool:
  return any(
    needs_rewrite(sub)
    for value in eqn.params.values()
    for sub in _subjaxprs(value)
  )


def needs_rewrite(jaxpr) -> bool:
  """Whether ``jaxpr`` (open) holds a non-canonical convolution anywhere."""
  return any(
    _is_slow_conv(eqn) or _inner_needs_rewrite(eqn) for eqn in jaxpr.eqns
  )


def _transpose(x, permutation):
  permutation = tuple(permutation)
  if permutation == tuple(range(len(permutation))):
    return x
  return lax.transpose(x, permutation)


def _canonical_conv(lhs, rhs, params):
  """The convolution ``params`` describe, computed in the canonical layout.

  Strides, padding, dilations and groups are per spatial axis (kept in
  order) or per feature axis, so they carry over unchanged.
  """
  lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
  rank = len(lhs_spec)
  lhs = _transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
  rhs = _transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))
  out = lax.conv_general_dilated(
    lhs,
    rhs,
    params["window_strides"],
    params["padding"],
    lhs_dilation=params["lhs_dilation"],
    rhs_dilation=params["rhs_dilation"],
    dimension_numbers=_canonical_numbers(rank),
    feature_group_count=params["feature_group_count"],
    batch_group_count=params["batch_group_count"],
    precision=params["precision"],
    preferred_element_type=params["preferred_element_type"],
  )
  # Canonical output axes: batch 0, spatial 1..rank-2, feature rank-1.
  back = [0] * rank
  back[out_spec[0]], back[out_spec[1]] = 0, rank - 1
  for i, axis in enumerate(out_spec[2:]):
    back[axis] = i + 1
  return _transpose(out, back)


def _rewrite_closed(closed):
  """A ClosedJaxpr computing what ``closed`` does, convolutions canonical."""
  if not needs_rewrite(closed.jaxpr):
    return closed
  avals = [
    jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type)
    for a in closed.in_avals
  ]
  return jax.make_jaxpr(
    lambda *args: _replay(closed.jaxpr, closed.consts, args)
  )(*avals)


def _rewrite_param(value):
  if isinstance(value, core.ClosedJaxpr):
    return _rewrite_closed(value)
  if isinstance(value, tuple) and any(
    isinstance(v, core.ClosedJaxpr) for v in value
  ):
    return tuple(_rewrite_param(v) for v in value)
  return value


def _inline_body(eqn):
  """The (jaxpr, consts) an inlinable call runs, or None."""
  if eqn.primitive.name not in _INLINE:
    return None
  for name in ("jaxpr", "call_jaxpr"):
    body = eqn.params.get(name)
    if isinstance(body, core.ClosedJaxpr):
      return body.jaxpr, body.consts
    if isinstance(body, core.Jaxpr) and not body.constvars:
      return body, ()
  return None


def _replay(jaxpr, consts, args, inline=False):
  """Evaluates ``jaxpr`` on ``args`` (in the current trace) with every
  non-canonical convolution, at any depth, in the canonical layout; with
  ``inline``, the bodies of call-like primitives are replayed in line too.

  Returns the list of output values.
  """
  env = {}

  def read(var):
    return var.val if isinstance(var, core.Literal) else env[var]

  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    invals = [read(var) for var in eqn.invars]
    context = getattr(eqn.ctx, "manager", None) or contextlib.nullcontext()
    with context:
      body = _inline_body(eqn)
      if _is_slow_conv(eqn):
        outvals = [_canonical_conv(*invals, eqn.params)]
      elif body is not None and (inline or _inner_needs_rewrite(eqn)):
        outvals = _replay(*body, invals, inline)
      elif not _inner_needs_rewrite(eqn):
        outvals = bind(eqn, eqn.params, invals)
      else:  # loops and branches: their bodies rewritten, the op kept
        params = {k: _rewrite_param(v) for k, v in eqn.params.items()}
        outvals = bind(eqn, params, invals)
    for var, value in zip(eqn.outvars, outvals):
      if not isinstance(var, core.DropVar):
        env[var] = value
  return [read(var) for var in jaxpr.outvars]


def bind(eqn, params, invals):
  """The list of values ``eqn``'s primitive gives on ``invals`` with
  ``params`` (the equation's own, or changed ones)."""
  bound = eqn.primitive.get_bind_params(params)
  # jax 0.10 returns the parameters; older versions (subfuns, parameters).
  subfuns, bind_params = bound if isinstance(bound, tuple) else ((), bound)
  out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
  return out if eqn.primitive.multiple_results else [out]


def for_loops(predict):
  """``predict`` made fast inside compiled loops on XLA's CPU backend.

  Args:
    predict: ``predict(images float32 [B, H, W, C]) -> logits [B, K]``, any
      jittable function.

  Returns:
    A function computing the same logits. On each call (a trace, under jit)
    ``predict`` is traced at that call's shape; when it holds a convolution
    in a non-canonical layout (OIHW kernels, NCHW images, ...), the traced
    computation is replayed with each such convolution between transposes to
    NHWC / HWIO and back, which XLA fuses or folds away. Otherwise
    ``predict`` itself is called, so its computation is unchanged.
  """

  @functools.wraps(predict)
  def canonical_predict(images):
    probe = jax.ShapeDtypeStruct(images.shape, images.dtype)
    closed, out_shape = jax.make_jaxpr(predict, return_shape=True)(probe)
    if not needs_rewrite(closed.jaxpr):
      return predict(images)
    out = _replay(closed.jaxpr, closed.consts, [images])
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return canonical_predict


def flat_jaxpr(predict, shape):
  """``predict`` traced at float32 ``shape`` as one flat program.

  Returns ``(closed_jaxpr, out_shape)``: the jaxpr holds no call-like
  primitive (jit, custom derivatives, remat: their bodies are in line) and
  only canonical convolutions, so that an interpreter sees every
  convolution, pooling and elementwise op of the forward pass at top level.
  """
  probe = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  closed, out_shape = jax.make_jaxpr(predict, return_shape=True)(probe)
  flat = jax.make_jaxpr(
    lambda images: _replay(closed.jaxpr, closed.consts, [images], inline=True)
  )(probe)
  return flat, out_shape
