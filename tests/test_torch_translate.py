"""PyTorch modules translated into JAX (pixeljax.torch_translate): the same
logits as torch on a zoo of CNNs and on the shipped victims rebuilt in torch,
the same attacks as the JAX model, and clear limits."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import pixeljax  # noqa: E402
from pixeljax import adapters  # noqa: E402
from pixeljax import data  # noqa: E402
from pixeljax import models  # noqa: E402
from pixeljax import torch_translate  # noqa: E402
from pixeljax.models import weights  # noqa: E402

torch_victims = pytest.importorskip("benchmarks.torch_victims")

# Logits within this share of the largest |logit| of torch's.
TOLERANCE = 1e-4


# ---- the zoo: small widths keep export and evaluation to a second or two --


class _Residual(nn.Module):
  """A CIFAR ResNet basic block."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
      )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
  """CIFAR ResNet-18 (2, 2, 2, 2 blocks), ``width`` channels at first."""

  def __init__(self, width=4):
    super().__init__()
    self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(width)
    blocks, cin = [], width
    for stage in range(4):
      cout = width * 2**stage
      for block in range(2):
        blocks.append(_Residual(cin, cout, 2 if stage and not block else 1))
        cin = cout
    self.layers = nn.Sequential(*blocks)
    self.fc = nn.Linear(cin, 10)

  def forward(self, x):
    x = F.relu(self.bn(self.conv(x / 255.0)))
    x = F.adaptive_avg_pool2d(self.layers(x), 1)
    return self.fc(torch.flatten(x, 1))


def vgg_bn(width=4):
  """A VGG with batch norm: conv-bn-relu, max pools, a dense head with
  dropout (eval: the identity)."""
  layers, cin = [], 3
  for cout in (width, "M", 2 * width, "M", 4 * width, 4 * width, "M"):
    if cout == "M":
      layers.append(nn.MaxPool2d(2))
    else:
      layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout)]
      layers.append(nn.ReLU(inplace=True))
      cin = cout
  return nn.Sequential(
    *layers,
    nn.Flatten(),
    nn.Linear(cin * 16, 32),
    nn.ReLU(),
    nn.Dropout(0.5),
    nn.Linear(32, 10),
  )


class _Inverted(nn.Module):
  """MobileNetV2's inverted residual: 1x1 expand, 3x3 depthwise, 1x1."""

  def __init__(self, cin, cout, stride, expand):
    super().__init__()
    hidden = cin * expand
    self.residual = stride == 1 and cin == cout
    self.block = nn.Sequential(
      nn.Conv2d(cin, hidden, 1, bias=False),
      nn.BatchNorm2d(hidden),
      nn.ReLU6(inplace=True),
      nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
      nn.BatchNorm2d(hidden),
      nn.ReLU6(inplace=True),
      nn.Conv2d(hidden, cout, 1, bias=False),
      nn.BatchNorm2d(cout),
    )

  def forward(self, x):
    return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v2():
  return nn.Sequential(
    nn.Conv2d(3, 8, 3, 1, 1, bias=False),
    nn.BatchNorm2d(8),
    nn.Hardswish(),
    _Inverted(8, 8, 1, 2),
    _Inverted(8, 12, 2, 3),
    _Inverted(12, 12, 1, 3),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Dropout(0.2),
    nn.Linear(12, 10),
  )


class Adaptive(nn.Module):
  """Adaptive pooling to sizes that do and do not divide the map."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(3, 6, 5, stride=2, padding=1)  # 15 x 15
    self.max = nn.AdaptiveMaxPool2d((4, 3))
    self.avg = nn.AdaptiveAvgPool2d((5, 5))
    self.tail = nn.AdaptiveAvgPool2d((2, 7))
    self.fc = nn.Linear(6 * (12 + 25 + 14), 10)

  def forward(self, x):
    x = F.leaky_relu(self.conv(x / 255.0), 0.1)
    parts = [self.max(x), self.avg(x), self.tail(x)]
    return self.fc(torch.cat([p.flatten(1) for p in parts], 1))


class Operators(nn.Module):
  """The rest of the covered set: dilated grouped convolution, F.pad,
  pooling with ceil mode and padding, GELU, SiLU, sigmoid, tanh, matmul,
  views, permutes, means, softmax."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=2, dilation=2, groups=3)
    self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    self.avg = nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)
    self.mix = nn.Parameter(torch.randn(6, 4))
    self.fc = nn.Linear(4 + 6 + 6, 10)

  def forward(self, x):
    x = F.pad(x / 255.0, (1, 2, 0, 1))  # asymmetric, folded into the conv
    x = F.gelu(self.conv(x))
    y = F.silu(x) + torch.sigmoid(x) * torch.tanh(x) - F.relu6(x) / 6
    y = F.gelu(F.pad(y, (1, 1, 1, 1), value=-0.5), approximate="tanh")
    pooled = self.pool(y)
    batch, channels = pooled.shape[:2]
    tokens = pooled.view(batch, channels, -1).permute(0, 2, 1) @ self.mix
    averaged = F.avg_pool2d(y, 2, ceil_mode=True).reshape(batch, 6, -1)
    head = torch.cat(
      [
        tokens.mean(1),
        averaged.mean(-1),
        self.avg(y).amax((2, 3)) * torch.softmax(averaged.sum(-1), -1),
      ],
      dim=1,
    )
    return torch.log_softmax(self.fc(head), -1)


ZOO = {
  "resnet18": ResNet18,
  "vgg_bn": vgg_bn,
  "mobilenet_v2": mobilenet_v2,
  "adaptive": Adaptive,
  "operators": Operators,
}


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
  """Random batch-norm statistics and affine parameters too, so that a
  wrong mapping of any of them shows; the module in eval mode."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for sub in module.modules():
      if isinstance(sub, nn.BatchNorm2d):
        size = sub.num_features
        sub.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
        sub.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
        sub.weight.copy_(torch.rand(size, generator=generator) + 0.5)
        sub.bias.copy_(torch.randn(size, generator=generator) * 0.2)
  return module.eval()


def _images(count: int, seed: int = 0) -> np.ndarray:
  """float32 [count, 32, 32, 3] pixels 0..255."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, 32, 32, 3)).astype(np.float32)


def _torch_logits(module, images) -> np.ndarray:
  """The module on NHWC ``images``, given to it as NCHW."""
  with torch.no_grad():
    return module(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def _assert_close(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  gap = np.abs(got - want).max() / np.abs(want).max()
  assert gap <= TOLERANCE, f"logits differ by {gap:.3g} of the largest"


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_gives_torch_logits(name):
  torch.manual_seed(0)
  module = _randomize(ZOO[name]())
  images = _images(3)
  want = _torch_logits(module, images)
  translation = torch_translate.translate(module, (2, 3, 32, 32))
  # As the module takes them (NCHW), and held channels-last from NHWC
  # images, as from_torch runs it; batches of 3 and 1 (exported at 2).
  nchw = jnp.asarray(images.transpose(0, 3, 1, 2))
  _assert_close(translation.apply(translation.params, nchw), want)
  forward = jax.jit(translation.apply, static_argnames="channels_last")
  _assert_close(forward(translation.params, images, channels_last=True), want)
  _assert_close(
    forward(translation.params, images[:1], channels_last=True), want[:1]
  )


# VGG16 (13 s here) is left out: the zoo's VGG with batch norm has its ops.
@pytest.mark.parametrize("name", ["smallcnn", "allconv", "nin"])
def test_shipped_victims_rebuilt_in_torch(name):
  model = models.create_model(name, rngs=nnx.Rngs(1))
  module = _randomize(torch_victims.to_torch(model), seed=2)
  images = _images(2, seed=1)
  predict = adapters.from_torch(module, nchw=True, backend="translate")
  _assert_close(predict(jnp.asarray(images)), _torch_logits(module, images))


def test_trained_smallcnn_matches_torch_and_jax():
  model = weights.load_victim("smallcnn")
  module = torch_victims.to_torch(model)
  images = np.asarray(data.load_cifar10_sample().images[:8], np.float32)
  predict = jax.jit(adapters.from_torch(module, nchw=True))
  got = predict(jnp.asarray(images))
  _assert_close(got, _torch_logits(module, images))
  _assert_close(got, jax.jit(models.make_predict(model))(jnp.asarray(images)))
  # The model is inside the jit: JAX operations, no callback to the host.
  text = str(jax.make_jaxpr(predict)(jnp.asarray(images)))
  assert "conv_general_dilated" in text and "callback" not in text


def test_attack_is_the_jax_models_incrementally_too():
  model = weights.load_victim("smallcnn")
  sample = data.load_cifar10_sample()
  images, labels = sample.images[:4], sample.labels[:4]
  settings = dict(key=jax.random.key(1), popsize=16, maxiter=3, batch_size=32)
  want = pixeljax.batched_attack(
    models.make_predict(model), images, labels, incremental=True, **settings
  )
  translated = adapters.from_torch(torch_victims.to_torch(model), nchw=True)
  got = pixeljax.batched_attack(
    translated, images, labels, incremental=True, **settings
  )
  # The incremental path reads the translated program as it reads JAX's.
  assert got.incremental.all() and want.incremental.all()
  for field in ("success", "adv_images", "perturbation", "queries"):
    np.testing.assert_array_equal(
      getattr(got, field), getattr(want, field), err_msg=field
    )
  np.testing.assert_allclose(got.true_prob, want.true_prob, atol=1e-5)


def test_batch_size_and_vmap():
  torch.manual_seed(0)
  module = _randomize(vgg_bn())
  images = _images(5, seed=3)
  want = _torch_logits(module, images)
  predict = adapters.from_torch(module, nchw=True, batch_size=2)
  _assert_close(jax.jit(predict)(jnp.asarray(images)), want)
  stacked = jax.vmap(predict)(jnp.stack([images[:2], images[3:]]))
  _assert_close(stacked.reshape(4, -1), want[[0, 1, 3, 4]])


def test_the_door_runs_the_module_once_per_test_batch():
  torch.manual_seed(0)
  module = _randomize(vgg_bn())
  batches = []
  # Real tensors only: torch.export runs forward on fake ones.
  module.register_forward_pre_hook(
    lambda _, args: (
      batches.append(len(args[0])) if type(args[0]) is torch.Tensor else None
    )
  )
  images = _images(3)
  got = jax.jit(adapters.from_torch(module, nchw=True))(jnp.asarray(images))
  # The module's logits on the test images of 1 and 2 serve both the door
  # and the translation's check; the attack itself runs translated.
  assert batches == [1, 2]
  _assert_close(got, _torch_logits(module, images))


class _Cumulative(nn.Module):
  """A head with an operator outside the translated set."""

  def forward(self, x):
    return torch.cumsum(x, dim=1)


def _with_cumsum():
  return nn.Sequential(
    nn.Flatten(), nn.Linear(3 * 32 * 32, 4), _Cumulative()
  ).eval()


def test_an_operator_outside_the_set_is_named_with_its_submodule():
  module = _with_cumsum()
  with pytest.raises(
    torch_translate.UnsupportedOperator,
    match=r"aten\.cumsum\.default \(in submodule '2' \(_Cumulative\)\) has "
    r"no JAX translation.*backend='callback'",
  ) as caught:
    torch_translate.translate(module, (2, 32, 32, 3))
  assert caught.value.operator == "aten.cumsum.default"
  strict = adapters.from_torch(module, backend="translate")
  with pytest.raises(torch_translate.UnsupportedOperator, match="cumsum"):
    jax.jit(strict)(jnp.zeros((2, 32, 32, 3)))


def test_auto_falls_back_to_the_callback_with_a_warning():
  module = _with_cumsum()
  images = _images(3)
  with torch.no_grad():
    want = module(torch.from_numpy(images)).numpy()
  with pytest.warns(UserWarning, match=r"host callback.*aten\.cumsum"):
    got = jax.jit(adapters.from_torch(module))(jnp.asarray(images))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    callback = adapters.from_torch(module, backend="callback")
    np.testing.assert_allclose(callback(jnp.asarray(images)), want, rtol=1e-6)
  with pytest.raises(ValueError, match="backend: expected one of auto"):
    adapters.from_torch(module, backend="jax")


@pytest.mark.parametrize(
  "module, match",
  [
    (
      nn.Sequential(nn.ConvTranspose2d(3, 2, 2), nn.Flatten()),
      r"convolution\.default .*transposed convolution",
    ),
    (
      nn.Sequential(nn.MaxPool2d(2, return_indices=True)),
      "max pooling indices",
    ),
  ],
  ids=["transposed", "pool-indices"],
)
def test_arguments_outside_the_set_are_named(module, match):
  class Head(nn.Module):
    def __init__(self):
      super().__init__()
      self.body = module

    def forward(self, x):
      out = self.body(x)
      if isinstance(out, tuple):  # values and indices
        out = out[0].flatten(1) + out[1].flatten(1).float()
      return out

  with pytest.raises(torch_translate.UnsupportedOperator, match=match):
    translation = torch_translate.translate(Head().eval(), (2, 3, 8, 8))
    translation.apply(translation.params, jnp.zeros((2, 3, 8, 8)))


def test_translation_that_disagrees_with_torch_is_refused(monkeypatch):
  torch.manual_seed(0)
  module = _randomize(vgg_bn())
  images = _images(2)
  # A wrong lowering (ReLU as the identity): the door compares logits.
  monkeypatch.setitem(
    torch_translate._LOWERINGS, "aten.relu.default", lambda x: x
  )
  strict = adapters.from_torch(module, nchw=True, backend="translate")
  with pytest.raises(
    torch_translate.TranslationError, match="differ from the module's"
  ):
    strict(jnp.asarray(images))
  with pytest.warns(UserWarning, match="differ from the module's"):
    got = adapters.from_torch(module, nchw=True)(jnp.asarray(images))
  _assert_close(got, _torch_logits(module, images))


def test_a_float64_module_runs_through_the_callback():
  module = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()
  images = _images(2)[:, :2, :2, :]
  with pytest.warns(UserWarning, match="float32"):
    got = adapters.from_torch(module)(jnp.asarray(images))
  with torch.no_grad():
    want = module(torch.from_numpy(images).double()).float().numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5)
