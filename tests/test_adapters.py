"""PyTorch and ONNX models through pixeljax.adapters: the same logits and the
same attacks as the JAX model they were rebuilt from."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixeljax  # noqa: E402
from pixeljax import adapters  # noqa: E402
from pixeljax import data  # noqa: E402
from pixeljax.models import make_predict  # noqa: E402
from pixeljax.models import weights  # noqa: E402

torch_victims = pytest.importorskip("benchmarks.torch_victims")

_IMAGES, _LABELS = (a[:4] for a in data.load_cifar10_sample()[:2])
# Small enough to compile quickly; the shipped SmallCNN's decisions on these
# images are far from ties (probabilities agree to ~1e-6 across frameworks).
_ATTACK = dict(key=jax.random.key(0), popsize=16, maxiter=4, batch_size=32)


@pytest.fixture(scope="module")
def victim():
  """The shipped SmallCNN: (JAX predict, torch module on NCHW, JAX result)."""
  model = weights.load_victim("smallcnn")
  predict = make_predict(model)
  return (
    predict,
    torch_victims.to_torch(model),
    pixeljax.batched_attack(predict, _IMAGES, _LABELS, **_ATTACK),
  )


def _export(module, path, *, dynamic_batch=True, input_shape=(1, 3, 32, 32)):
  """``module`` (taking ``input_shape``, NCHW 32 x 32 x 3 by default) as an
  ONNX file: the legacy exporter, which needs neither onnxscript nor a
  network, and takes a second."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(
      module,
      (torch.zeros(input_shape),),
      str(path),
      dynamo=False,
      input_names=["pixels"],
      dynamic_axes={"pixels": {0: "batch"}} if dynamic_batch else None,
    )
  return path


def _assert_same_attack(got, want):
  for name in (
    "success",
    "adv_images",
    "perturbation",
    "adv_label",
    "queries",
    "generations",
    "clean_label",
  ):
    np.testing.assert_array_equal(
      getattr(got, name), getattr(want, name), err_msg=name
    )
  for name in ("true_prob", "adv_prob", "target_prob"):
    np.testing.assert_allclose(
      getattr(got, name), getattr(want, name), atol=1e-5, err_msg=name
    )


def test_torch_model_is_attacked_as_the_jax_model(victim):
  predict, module, want = victim
  got = pixeljax.batched_attack(
    adapters.from_torch(module, nchw=True), _IMAGES, _LABELS, **_ATTACK
  )
  assert want.success.any() and not want.success.all()
  _assert_same_attack(got, want)


def test_onnx_model_is_attacked_as_the_jax_model(victim, tmp_path):
  pytest.importorskip("onnxruntime")
  predict, module, want = victim
  path = _export(module, tmp_path / "smallcnn.onnx")
  # The layout is read from the declared input [batch, 3, 32, 32].
  got = pixeljax.batched_attack(
    adapters.from_onnx(path), _IMAGES, _LABELS, **_ATTACK
  )
  _assert_same_attack(got, want)


class _Counting(torch.nn.Module):
  """An NHWC module that records the batch size of each call."""

  def __init__(self, module):
    super().__init__()
    self.module, self.calls = module, []

  def forward(self, x):
    self.calls.append(x.shape[0])
    return self.module(x.permute(0, 3, 1, 2))


def test_torch_logits_batches_and_vmap(victim):
  predict, module, _ = victim
  counting = _Counting(module).eval()
  # The host callback: a translated module is not called in the search.
  wrapped = adapters.from_torch(counting, batch_size=2, backend="callback")
  images = jnp.asarray(_IMAGES[:3], jnp.float32)
  want = jax.jit(predict)(images)
  np.testing.assert_allclose(jax.jit(wrapped)(images), want, atol=1e-5)
  # The test runs on 1 and 2 images, then 3 in pieces of 2.
  assert counting.calls == [1, 2, 2, 1]
  stacked = jax.vmap(wrapped)(jnp.stack([images, images[::-1]]))
  np.testing.assert_allclose(stacked[1], want[::-1], atol=1e-5)


def test_onnx_fixed_batch_is_padded(victim, tmp_path):
  pytest.importorskip("onnxruntime")
  predict, module, _ = victim
  path = _export(module, tmp_path / "fixed.onnx", dynamic_batch=False)
  images = jnp.asarray(_IMAGES[:3], jnp.float32)
  np.testing.assert_allclose(
    jax.jit(adapters.from_onnx(path))(images),
    jax.jit(predict)(images),
    atol=1e-5,
  )


class _Output(torch.nn.Module):
  def __init__(self, make):
    super().__init__()
    self.make = make

  def forward(self, x):
    return self.make(x)


@pytest.mark.parametrize(
  "make, match",
  [
    (
      lambda x: x[:, :, 0, :],
      r"module: expected logits \[B, K\] .* got an "
      r"output of shape \(1, 4, 3\)",
    ),
    (lambda x: (x.mean(dim=(1, 2)),), "module: expected a tensor"),
  ],
  ids=["rank-3", "tuple"],
)
def test_output_not_logits_is_a_clear_error(make, match):
  predict = adapters.from_torch(_Output(make).eval())
  images = np.zeros((2, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match=match):
    pixeljax.batched_attack(
      predict,
      images,
      np.zeros(2, int),
      key=jax.random.key(0),
      popsize=4,
      maxiter=1,
    )


def test_bad_arguments():
  module = torch.nn.Flatten()
  with pytest.raises(ValueError, match=r"module: expected a module in eval"):
    adapters.from_torch(module.train())
  with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
    adapters.from_torch(lambda x: x)
  with pytest.raises(ValueError, match="batch_size must be None or an int"):
    adapters.from_torch(module.eval(), batch_size=0)
  with pytest.raises(FileNotFoundError, match="path: no such ONNX file"):
    adapters.from_onnx("missing.onnx")


def test_onnx_layout_must_be_decidable(tmp_path):
  pytest.importorskip("onnxruntime")
  square = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
  square(torch.zeros(1, 3, 3, 3))
  path = tmp_path / "square.onnx"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(
      square.eval(), (torch.zeros(1, 3, 3, 3),), str(path), dynamo=False
    )
  images = jnp.zeros((1, 3, 3, 3), jnp.float32)
  with pytest.raises(ValueError, match=r"nchw: .* fits both"):
    adapters.from_onnx(path)(images)
  assert adapters.from_onnx(path, nchw=True)(images).shape == (1, 2)
  with pytest.raises(ValueError, match=r"do not fit the model's input"):
    adapters.from_onnx(path, nchw=False)(jnp.zeros((1, 3, 3, 4)))


_FACTORY = """
import torch

def build():
  torch.manual_seed(0)
  return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
"""


def test_load_external_torch_and_onnx(tmp_path):
  (tmp_path / "factory.py").write_text(_FACTORY)
  factory = f"{tmp_path / 'factory.py'}:build"
  trained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
  state = tmp_path / "state.pt"
  torch.save(trained.state_dict(), state)
  images = jnp.asarray(np.arange(2 * 48).reshape(2, 4, 4, 3), jnp.float32)
  with torch.no_grad():
    want = trained(torch.from_numpy(np.array(images))).numpy()
  # Relative to the largest logit: a tiny logit of a random linear layer
  # differs in its last bits between torch and onnxruntime.
  tolerance = 1e-5 * np.abs(want).max()

  external = adapters.load_external(
    torch_factory=factory, weights=state, image_shape=(4, 4, 3), num_classes=3
  )
  assert external.num_classes == 3
  assert external.identity["architecture"] == f"torch:{factory}"
  assert set(external.identity["files"]) == {"state.pt"}
  np.testing.assert_allclose(external.predict(images), want, atol=tolerance)

  with pytest.raises(ValueError, match="num_classes: the model gives 3"):
    adapters.load_external(
      torch_factory=factory, image_shape=(4, 4, 3), num_classes=10
    )
  with pytest.raises(ValueError, match="exactly one of onnx and"):
    adapters.load_external()
  with pytest.raises(ValueError, match="torch_factory: expected"):
    adapters.load_external(torch_factory="no_function_here")
  with pytest.raises(ValueError, match="weights: .* does not fit"):
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), wrong)
    adapters.load_external(
      torch_factory=factory, weights=wrong, image_shape=(4, 4, 3)
    )

  pytest.importorskip("onnxruntime")
  path = tmp_path / "linear.onnx"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(
      trained.eval(),
      (torch.zeros(1, 4, 4, 3),),
      str(path),
      dynamo=False,
      input_names=["x"],
      dynamic_axes={"x": {0: "b"}},
    )
  external = adapters.load_external(onnx=path, image_shape=(4, 4, 3))
  assert external.identity["name"] == "linear"
  assert external.num_classes == 3
  np.testing.assert_allclose(external.predict(images), want, atol=tolerance)


def _module(forward):
  """An eval-mode module around ``forward``, NHWC [B, 4, 4, 3] -> logits."""
  return _Output(forward).eval()


def _linear(x):
  """Logits [B, 3] of NHWC [B, H, W, C]: one value per channel."""
  return x.mean(dim=(1, 2))


def _first_only(x):
  """A model that runs one image only (its batch hard-coded)."""
  if x.shape[0] != 1:
    raise RuntimeError(f"expected one image, got {x.shape[0]}")
  return _linear(x)


@pytest.mark.parametrize(
  "forward, match",
  [
    (
      lambda x: _linear(x[:1]),
      r"module: expected logits \[B, K\] for images of shape \(2, 4, 4, 3\)"
      r" .* got an output of shape \(1, 3\)",
    ),
    (
      _first_only,
      r"module: the _Output module raised on images \[B, H, W, C\] = "
      r"\[2, 4, 4, 3\]: RuntimeError: expected one image, got 2; .* "
      r"needs batch_size=1",
    ),
    (
      lambda x: _linear(x) * torch.nan,
      r"module: the _Output module gives NaN or inf logits for test images",
    ),
    (
      lambda x: _linear(x).long(),
      r"module: expected floating logits \[B, K\], got int64",
    ),
  ],
  ids=["batch-of-1", "raises-beyond-1", "nan", "integer"],
)
def test_models_are_checked_before_the_jit(forward, match):
  predict = adapters.from_torch(_module(forward))
  images = jnp.zeros((5, 4, 4, 3), jnp.float32)
  # At the trace: a plain ValueError, never an XLA callback error.
  with pytest.raises(adapters.ModelError, match=match) as caught:
    jax.jit(predict)(images)
  if forward is _first_only:
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert caught.value.images == (2, 4, 4, 3)


def test_a_model_of_one_image_at_a_time_runs_with_batch_size_1():
  predict = adapters.from_torch(_module(_first_only), batch_size=1)
  images = jnp.asarray(np.arange(3 * 48).reshape(3, 4, 4, 3), jnp.float32)
  # It does not export with a free batch axis: the callback runs it.
  with pytest.warns(UserWarning, match=r"host callback .*torch\.export"):
    got = jax.jit(predict)(images)
  np.testing.assert_allclose(got, np.asarray(images).mean(axis=(1, 2)))


def test_a_submodule_in_training_mode_is_refused():
  module = torch.nn.Sequential(
    torch.nn.Flatten(),
    torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(48, 3)),
  ).eval()
  module[1][0].train()
  assert not module.training
  with pytest.raises(
    ValueError, match=r"submodule '1\.0' \(Dropout\) is in training mode"
  ):
    adapters.from_torch(module)
  assert module[1][0].training  # the user's module is left as it was
  module.eval()
  assert adapters.from_torch(module)(jnp.zeros((2, 4, 4, 3))).shape == (2, 3)


class _BatchOfOne(torch.nn.Module):
  """A linear model whose batch of 1 is hard-coded in its reshape, as in an
  export of ``x.view(1, -1)``."""

  def __init__(self):
    super().__init__()
    torch.manual_seed(0)
    self.linear = torch.nn.Linear(48, 3)

  def forward(self, x):
    return self.linear(x.reshape(1, 48))


def test_onnx_dynamic_in_name_only_runs_one_image_per_call(tmp_path):
  pytest.importorskip("onnxruntime")
  module = _BatchOfOne().eval()
  path = _export(module, tmp_path / "one.onnx", input_shape=(1, 4, 4, 3))
  images = np.arange(3 * 48, dtype=np.float32).reshape(3, 4, 4, 3)
  with torch.no_grad():
    want = torch.cat([module(torch.from_numpy(i[None])) for i in images])
  with pytest.warns(UserWarning, match=r"one\.onnx raised on images .*\[2, 4"):
    got = jax.jit(adapters.from_onnx(path, nchw=False))(images)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-4)


def test_onnx_model_that_fails_is_refused_before_the_jit(tmp_path):
  pytest.importorskip("onnxruntime")
  # NaN weights: every logit NaN.
  module = _BatchOfOne().eval()
  with torch.no_grad():
    module.linear.weight.fill_(torch.nan)
  path = _export(
    module,
    tmp_path / "nan.onnx",
    dynamic_batch=False,
    input_shape=(1, 4, 4, 3),
  )
  with pytest.raises(adapters.ModelError, match=r"path: .*nan\.onnx gives NaN"):
    jax.jit(adapters.from_onnx(path, nchw=False))(jnp.zeros((2, 4, 4, 3)))


@pytest.mark.parametrize("content", [b"", b"not an ONNX model"])
def test_a_file_that_is_not_onnx_is_named(tmp_path, content):
  pytest.importorskip("onnxruntime")
  path = tmp_path / "model.onnx"
  path.write_bytes(content)
  with pytest.raises(
    ValueError, match=r"path: \S+model\.onnx is not an ONNX model"
  ) as caught:
    adapters.from_onnx(path)
  assert type(caught.value.__cause__).__module__.startswith("onnxruntime")


def test_a_factory_file_with_a_syntax_error_names_file_and_line(tmp_path):
  factory = tmp_path / "broken.py"
  factory.write_text("import torch\n\ndef build(:\n  pass\n")
  with pytest.raises(
    ValueError, match=r"torch_factory: \S+broken\.py, line 3: SyntaxError"
  ):
    adapters.load_external(torch_factory=f"{factory}:build")
