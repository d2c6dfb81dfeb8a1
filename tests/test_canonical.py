"""Convolutions in the model reach the engine's loops in the canonical layout
(NHWC / HWIO), which XLA's CPU backend runs fast there, with the same values."""

import re

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from pixeljax.attack import canonical
from pixeljax.attack import evaluate

_RNG = np.random.default_rng(0)
# A PyTorch-layout kernel: [out, in, kh, kw].
_OIHW = _RNG.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.1
_DENSE = _RNG.normal(size=(4, 3)).astype(np.float32)
# Two 8x8 images' candidates, 6 each (1 pixel: x, y, r, g, b).
_CANDIDATES = _RNG.uniform(0, 8, (2, 6, 5)).astype(np.float32)


def _cnn(layout: str):
  """conv 3x3 (3 -> 4) + ReLU + global mean + dense (4 -> 3); the same
  function with the kernel stored as OIHW or HWIO, or on NCHW activations."""
  kernel = _OIHW if layout != "HWIO" else _OIHW.transpose(2, 3, 1, 0)
  kernel = jnp.asarray(kernel)

  def predict(images):
    x = (images - 128.0) / 64.0
    if layout == "NCHW":
      x = lax.conv_general_dilated(
        x.transpose(0, 3, 1, 2), kernel, (1, 1), "SAME"
      )
      x = x.transpose(0, 2, 3, 1)
    else:
      x = lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", layout, "NHWC")
      )
    return jnp.mean(jax.nn.relu(x), axis=(1, 2)) @ _DENSE

  return predict


def _convolutions(jaxpr):
  """Every conv_general_dilated equation in ``jaxpr``, at any depth."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive is lax.conv_general_dilated_p:
      found.append(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          sub = sub.jaxpr
        if isinstance(sub, jax.extend.core.Jaxpr):
          found += _convolutions(sub)
  return found


def _score(predict):
  """The engine's candidate scoring, as a function of the images."""

  def score(images):
    return evaluate.score_candidates(
      predict,
      images,
      jnp.zeros(2, jnp.int32),
      None,
      jnp.asarray(_CANDIDATES),
      jnp.ones(2, bool),
      batch_size=4,
    )

  return score, jnp.zeros((2, 8, 8, 3), jnp.uint8)


@pytest.mark.parametrize("layout", ["OIHW", "NCHW"])
def test_engine_loops_hold_only_canonical_convolutions(layout):
  score, images = _score(_cnn(layout))

  def recheck(x):
    return evaluate.recheck_logits(_cnn(layout), x)

  for function in (score, recheck):
    convs = _convolutions(jax.make_jaxpr(function)(images).jaxpr)
    assert convs
    for eqn in convs:
      assert tuple(eqn.params["dimension_numbers"]) == (
        (0, 3, 1, 2),
        (3, 2, 0, 1),
        (0, 3, 1, 2),
      )


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's HLO")
def test_cpu_loop_body_runs_the_canonical_convolution():
  score, images = _score(_cnn("OIHW"))
  hlo = jax.jit(score).lower(images).compile().as_text()
  labels = re.findall(r" convolution\(.*?dim_labels=(\S+?),", hlo)
  assert labels and set(labels) == {"b01f_01io->b01f"}
  # No convolution compiled as XLA's naive elemental loop nest.
  assert "oi01" not in hlo


def _nested(function):
  """``function`` behind a jit, a custom derivative, a checkpoint, a scan
  and a branch: the rewrite reaches into each."""

  @jax.custom_jvp
  def custom(x):
    return jax.jit(jax.checkpoint(function))(x)

  custom.defjvp(lambda primals, tangents: (custom(*primals), tangents[0]))

  def predict(images):
    out, _ = lax.scan(
      lambda c, _: (c + custom(images), None),
      jnp.zeros((images.shape[0], 3)),
      None,
      length=2,
    )
    return lax.cond(images[0, 0, 0, 0] > 1e9, lambda o: -o, lambda o: o, out)

  return predict


def _grouped(images):
  """A 1-D, strided, dilated, grouped convolution in a CWN-like layout."""
  x = images.reshape(images.shape[0], -1, 6)  # [B, 32, 6]
  kernel = jnp.asarray(_RNG.normal(size=(3, 2, 6)), jnp.float32)  # W I O
  out = lax.conv_general_dilated(
    x.transpose(2, 1, 0),
    kernel.transpose(1, 2, 0),
    (2,),
    [(1, 2)],
    rhs_dilation=(2,),
    feature_group_count=3,
    dimension_numbers=("CWN", "IOW", "WCN"),
  )  # [W', 6, B]
  return out.mean(axis=0).T[:, :3] / 100.0


@pytest.mark.parametrize(
  "predict",
  [_cnn("OIHW"), _cnn("NCHW"), _nested(_cnn("OIHW")), _grouped],
  ids=["oihw", "nchw", "nested", "grouped-1d"],
)
def test_same_logits(predict):
  images = jnp.asarray(_RNG.integers(0, 256, (5, 8, 8, 3)), jnp.float32)
  rewritten = canonical.for_loops(predict)
  assert canonical.needs_rewrite(jax.make_jaxpr(predict)(images).jaxpr)
  assert not canonical.needs_rewrite(jax.make_jaxpr(rewritten)(images).jaxpr)
  np.testing.assert_allclose(
    jax.jit(rewritten)(images), jax.jit(predict)(images), rtol=1e-5, atol=1e-6
  )


def test_canonical_model_is_called_as_it_is():
  predict = _cnn("HWIO")
  images = jnp.zeros((2, 8, 8, 3), jnp.float32)
  assert str(jax.make_jaxpr(canonical.for_loops(predict))(images)) == str(
    jax.make_jaxpr(predict)(images)
  )


def test_oihw_model_scores_exactly_as_its_hwio_twin():
  score_hwio, _ = _score(_cnn("HWIO"))
  score_oihw, _ = _score(_cnn("OIHW"))
  images = jnp.asarray(_RNG.integers(0, 256, (2, 8, 8, 3)), jnp.uint8)
  for got, want in zip(
    jax.jit(score_oihw)(images), jax.jit(score_hwio)(images)
  ):
    np.testing.assert_array_equal(got, want)

  def recheck(predict):
    return jax.jit(lambda x: evaluate.recheck_logits(predict, x))(images)

  np.testing.assert_array_equal(recheck(_cnn("OIHW")), recheck(_cnn("HWIO")))
