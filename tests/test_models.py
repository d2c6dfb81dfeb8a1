"""The victim networks and the pure predict the attack engine takes."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixeljax.models import MODELS
from pixeljax.models import SmallCNN
from pixeljax.models import create_model
from pixeljax.models import make_predict
from pixeljax.models import param_count

# Parameter counts of the registry models (batch-norm scales and biases
# included).
PARAMS = {
  "allconv": 1_370_986,
  "nin": 968_394,
  "vgg16": 19_986_378,
  "smallcnn": 242_474,
}


def _images(n=4, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, 32, 32, 3), maxval=255.0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_dtype_and_size(name):
  assert (
    param_count(nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0))))
    == PARAMS[name]
  )
  # Init and forward in one compilation: much faster than running them op by op.
  logits = jax.jit(
    lambda x: make_predict(create_model(name, rngs=nnx.Rngs(0)))(x)
  )(_images(2))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert bool(jnp.isfinite(logits).all())


def test_smallcnn_is_small():
  assert 100_000 <= PARAMS["smallcnn"] <= 300_000


def test_predict_is_pure_eval_mode_and_leaves_model_alone():
  model = SmallCNN(rngs=nnx.Rngs(0))
  predict = jax.jit(make_predict(model))
  x = _images(4)
  full = predict(x)
  # Eval-mode batch norm: an image's logits do not depend on its batch.
  np.testing.assert_allclose(predict(x[:1])[0], full[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(predict(x), full)
  assert (
    model.convs[0].bn.use_running_average is False
  )  # caller's model still trains


def test_normalisation_is_inside():
  """A constant image at the CIFAR mean is all zeros after normalisation."""
  model = SmallCNN(rngs=nnx.Rngs(0))
  mean = jnp.broadcast_to(jnp.asarray((125.3, 123.0, 113.9)), (1, 32, 32, 3))
  zeros_logits = make_predict(model)(mean)
  np.testing.assert_allclose(
    zeros_logits[0], model.classifier.bias[...], atol=1e-5
  )


def test_bad_input_and_unknown_name():
  predict = make_predict(SmallCNN(rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"images: expected \[B, H, W, 3\]"):
    predict(jnp.zeros((32, 32, 3)))
  with pytest.raises(ValueError, match="allconv.*smallcnn.*got 'resnet'"):
    create_model("resnet", rngs=nnx.Rngs(0))


def test_bf16_compute_returns_f32_logits():
  model = create_model("smallcnn", rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  assert model.convs[0].conv.kernel[...].dtype == jnp.float32  # params stay f32
  logits = make_predict(model)(_images(2))
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)


@pytest.mark.parametrize("hw", [1, 2, 5])
def test_conv_paths_agree(hw):
  """Tiny maps take the patches-matmul path; both paths compute the same
  conv."""
  from pixeljax.models.layers import ConvBN
  from pixeljax.models.layers import conv_as_matmul

  block = ConvBN(4, 6, 3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, hw, hw, 4))
  kernel = block.conv.kernel[...]
  np.testing.assert_allclose(
    conv_as_matmul(x, kernel), block.conv(x), atol=1e-5
  )
  assert block(x).shape == (2, hw, hw, 6)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
  "batch, size, kernel, stride, padding, channels",
  [
    (6, 9, 3, 1, "SAME", 16),
    (4, 8, 3, 2, "SAME", 16),  # AllConv's strided stages
    (3, 7, 5, 2, "SAME", 16),  # odd map, wider kernel
    (4, 9, 3, 2, "VALID", 16),
    (3, 10, 3, 3, "SAME", 16),  # stride 3: nine phases
    (2, 8, 1, 2, "SAME", 16),  # a kernel narrower than the stride
    (2, 7, 2, 2, "SAME", 48),  # even kernel, padding on one side
    (5, 8, 3, 1, "VALID", 16),  # AllConv's head
    (3, 7, 1, 1, "SAME", 16),  # 1x1, odd rows: one block
    (7, 64, 3, 1, "SAME", 16),  # chunks of one image (rows < positions)
    (3, 9, 5, 1, "SAME", 3),  # an image layer's narrow patches
    (4, 8, 3, 2, "SAME", 3),
  ],
)
def test_train_conv_gradients_match_xla(
  batch, size, kernel, stride, padding, channels, native, monkeypatch
):
  """The train-mode convolution has XLA's value, and the input and kernel
  gradients of XLA's own convolution, on shapes that exercise the padding,
  the stride (the input gradient's phases) and each way of the kernel
  gradient (narrow patches, XLA's own where it is fast, chunked patches),
  with XLA's kernel gradient allowed or not."""
  from pixeljax.models import train_ops
  from pixeljax.models.train_ops import conv_train

  monkeypatch.setattr(train_ops, "_native_kernel_grad_is_fast", lambda: native)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, channels, 5))

  def xla(x, w):
    return jax.lax.conv_general_dilated(
      x,
      w,
      (stride, stride),
      padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

  def ours(x, w):
    return conv_train(x, w, stride, padding)

  # A loss that weighs every output position differently.
  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w)) * jnp.cos(conv(x, w)))

  np.testing.assert_array_equal(ours(x, w), xla(x, w))
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
  want = jax.jit(jax.grad(loss(xla), argnums=(0, 1)))(x, w)
  # Two programs that XLA may fuse differently: float32 rounding apart.
  for ours_grad, xla_grad in zip(got, want):
    scale = float(jnp.abs(xla_grad).max())
    np.testing.assert_allclose(ours_grad, xla_grad, rtol=0, atol=1e-5 * scale)


def test_train_mode_uses_the_train_convolution():
  """ConvBN takes train_ops' gradients in train mode only: eval mode (what
  the attack runs, and the incremental evaluation reads) is XLA's plain
  convolution."""
  from pixeljax.models.layers import ConvBN

  block = ConvBN(3, 4, 3, stride=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))

  def primitives(mode):
    getattr(block, mode)()
    graphdef, state = nnx.split(block)
    # copy=True: train mode updates the batch statistics inside the trace.
    jaxpr = jax.make_jaxpr(
      lambda state, x: nnx.merge(graphdef, state, copy=True)(x)
    )(state, x)
    return {str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns}

  assert "custom_vjp_call" in " ".join(primitives("train"))
  assert "conv_general_dilated" in primitives("eval")
  assert not any("custom_vjp" in p for p in primitives("eval"))


@pytest.mark.parametrize("block_bytes", [None, 1024])
@pytest.mark.parametrize("stride", [1, 2])
def test_train_mode_matches_nnx_layers(stride, block_bytes, monkeypatch):
  """ConvBN in train mode (train_ops: matmul kernel gradient, batch norm by
  blocked sums, its closed-form gradient and the ReLU's mask inside it) gives
  nnx.Conv + nnx.BatchNorm + ReLU's output, gradients and running statistics,
  whether batch norm sums its rows in one block or in several."""
  from pixeljax.models import train_ops
  from pixeljax.models.layers import ConvBN

  if block_bytes:
    monkeypatch.setattr(train_ops, "_BLOCK_BYTES", block_bytes)
    # 6 x 10 rows of 10 x 7 float32 (stride 1): blocks of a few rows.
    assert train_ops._row_blocks(60, 60 * 70 * 4) == 15
  block = ConvBN(5, 7, 3, stride=stride, rngs=nnx.Rngs(0))
  block.bn.scale[...] = jax.random.uniform(jax.random.key(2), (7,)) + 0.5
  block.bn.bias[...] = jax.random.normal(jax.random.key(3), (7,))
  x = 3.0 + jax.random.normal(jax.random.key(0), (6, 10, 10, 5))
  weights = jax.random.normal(
    jax.random.key(1), (6, 10 // stride, 10 // stride, 7)
  )
  graphdef, params, stats = nnx.split(block, nnx.Param, ...)

  def loss(params, stats, reference):
    model = nnx.merge(graphdef, params, stats, copy=True)
    if reference:
      y = jax.nn.relu(model.bn(model.conv(x)))
    else:
      y = model(x)
    return jnp.sum(jnp.sin(y) * weights), nnx.state(model, nnx.BatchStat)

  (got, got_stats), got_grads = jax.value_and_grad(loss, has_aux=True)(
    params, stats, False
  )
  (want, want_stats), want_grads = jax.value_and_grad(loss, has_aux=True)(
    params, stats, True
  )
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(
      a, b, rtol=0, atol=2e-5 * float(jnp.abs(b).max())
    )


@pytest.mark.parametrize(
  "size, window, stride",
  [(8, 3, 2), (7, 3, 2), (9, 2, 2), (8, 3, 1), (10, 5, 3)],
)
def test_train_max_pool_matches_select_and_scatter(size, window, stride):
  """max_pool_train (NiN's overlapping pool in train mode) has nnx.max_pool's
  value and select-and-scatter's gradient, ties included: inputs on a
  coarse grid after a ReLU, so that windows hold several equal maxima."""
  from pixeljax.models.train_ops import max_pool_train

  x = jax.random.normal(jax.random.key(0), (3, size, size, 4))
  x = jax.nn.relu(jnp.round(2 * x) / 2)

  def plain(x):
    return nnx.max_pool(
      x, (window, window), strides=(stride, stride), padding="SAME"
    )

  weights = jax.random.normal(jax.random.key(1), plain(x).shape)

  def loss(pool):
    return lambda x: jnp.sum(pool(x) * weights)

  np.testing.assert_array_equal(max_pool_train(x, window, stride), plain(x))
  got = jax.grad(loss(lambda x: max_pool_train(x, window, stride)))(x)
  want = jax.grad(loss(plain))(x)
  # An input that is the maximum of several windows sums their gradients,
  # in either order.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_nin_uses_the_train_pool_in_train_mode_only():
  model = create_model("nin", rngs=nnx.Rngs(0))
  images = _images(2)

  def primitives():
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(
      lambda state, x: nnx.merge(graphdef, state, copy=True)(
        x, rngs=nnx.Rngs(0)
      )
    )(state, images)
    return " ".join(str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns)

  model.eval()
  assert "custom_vjp" not in primitives()
  model.train()
  # Each of 8 ConvBN: its convolution and batch norm; then the max-pool.
  assert primitives().count("custom_vjp") == 2 * 8 + 1
