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
