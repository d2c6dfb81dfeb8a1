"""pixeljax victims rebuilt as PyTorch modules with the same weights.

Only the peer benchmark imports this module (it needs the optional ``peers``
extra: ``pip install -e ".[peers]"``). ``to_torch`` maps a Flax NNX victim
(SmallCNN, AllConv, NiN, VGG16) onto ``torch.nn`` layers that compute the same
function: NHWC kernels become NCHW, Flax's "SAME" padding (which pads the
bottom/right more when the total is odd) is reproduced exactly, batch norm runs
on its running statistics, and the 0..255 normalisation stays inside the model.

``Pixels01`` then adapts the model to the peers' convention, float images in
[0, 1] NCHW, and rounds them to 8-bit pixels, so that every image a peer
evaluates is a uint8 image, as in pixeljax. ``CountingModule`` counts the
images that pass through ``forward``: the peers' model evaluations.
"""

import math

from flax import nnx
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pixeljax.models import VGG16
from pixeljax.models import AllConv
from pixeljax.models import NiN
from pixeljax.models import SmallCNN
from pixeljax.models import layers as jax_layers


def _tensor(variable) -> torch.Tensor:
  """An NNX variable's array as a float32 torch tensor (a copy)."""
  return torch.from_numpy(np.array(variable.get_value(), np.float32))


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
  """XLA's "SAME" padding of one axis: (before, after), the odd one after."""
  total = max((math.ceil(size / stride) - 1) * stride + window - size, 0)
  return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, window, stride, value: float) -> torch.Tensor:
  """Pads NCHW ``x`` as "SAME" would for this window and stride."""
  (wh, ww), (sh, sw) = _pair(window), _pair(stride)
  top, bottom = _same_padding(x.shape[2], wh, sh)
  left, right = _same_padding(x.shape[3], ww, sw)
  return F.pad(x, (left, right, top, bottom), value=value)


class Normalize(nn.Module):
  """Pixels 0..255 [B, 3, H, W] -> standardised, as ``layers.normalize``."""

  def __init__(self):
    super().__init__()
    shape = (1, 3, 1, 1)
    self.register_buffer(
      "mean", torch.tensor(jax_layers.CIFAR10_MEAN).reshape(shape)
    )
    self.register_buffer(
      "std", torch.tensor(jax_layers.CIFAR10_STD).reshape(shape)
    )

  def forward(self, x):
    return (x - self.mean) / self.std


class Conv(nn.Module):
  """An ``nnx.Conv`` (kernel [kh, kw, cin, cout]) as an NCHW convolution."""

  def __init__(self, conv: nnx.Conv):
    super().__init__()
    if conv.padding not in ("SAME", "VALID"):
      raise ValueError(
        f"conv: padding {conv.padding!r} is not supported; "
        f"expected 'SAME' or 'VALID'"
      )
    kernel = _tensor(conv.kernel).permute(3, 2, 0, 1)
    self.same = conv.padding == "SAME"
    self.window = tuple(kernel.shape[2:])
    self.stride = _pair(conv.strides or 1)
    self.conv = nn.Conv2d(
      kernel.shape[1],
      kernel.shape[0],
      self.window,
      stride=self.stride,
      bias=conv.bias is not None,
    )
    with torch.no_grad():
      self.conv.weight.copy_(kernel)
      if conv.bias is not None:
        self.conv.bias.copy_(_tensor(conv.bias))

  def forward(self, x):
    if self.same:
      x = _pad_same(x, self.window, self.stride, 0.0)
    return self.conv(x)


def _batch_norm(bn: nnx.BatchNorm) -> nn.BatchNorm2d:
  """An ``nnx.BatchNorm`` as ``BatchNorm2d``; use it in eval mode."""
  out = nn.BatchNorm2d(bn.num_features, eps=bn.epsilon)
  with torch.no_grad():
    out.weight.copy_(_tensor(bn.scale))
    out.bias.copy_(_tensor(bn.bias))
    out.running_mean.copy_(_tensor(bn.mean))
    out.running_var.copy_(_tensor(bn.var))
  return out


def _conv_bn(layer: jax_layers.ConvBN) -> nn.Sequential:
  return nn.Sequential(Conv(layer.conv), _batch_norm(layer.bn), nn.ReLU())


class Pool(nn.Module):
  """Flax's max or average pooling with "SAME" padding, on NCHW.

  Flax pads max pooling with -inf and average pooling with zeros that count
  in the mean (``count_include_pad``); so does this.
  """

  def __init__(self, kind: str, window: int, stride: int):
    super().__init__()
    self.kind, self.window, self.stride = kind, window, stride

  def forward(self, x):
    if self.kind == "max":
      x = _pad_same(x, self.window, self.stride, -math.inf)
      return F.max_pool2d(x, self.window, self.stride)
    x = _pad_same(x, self.window, self.stride, 0.0)
    return F.avg_pool2d(x, self.window, self.stride)


class GlobalMean(nn.Module):
  """[B, C, H, W] -> [B, C]: the mean over space."""

  def forward(self, x):
    return x.mean(dim=(2, 3))


class Flatten(nn.Module):
  """[B, C, H, W] -> [B, H * W * C] in Flax's (NHWC) order."""

  def forward(self, x):
    return x.permute(0, 2, 3, 1).flatten(1)


def _linear(dense: nnx.Linear) -> nn.Linear:
  """An ``nnx.Linear`` (kernel [in, out]) as ``nn.Linear`` ([out, in])."""
  kernel = _tensor(dense.kernel)
  out = nn.Linear(*kernel.shape)
  with torch.no_grad():
    out.weight.copy_(kernel.T)
    out.bias.copy_(_tensor(dense.bias))
  return out


def _smallcnn(model: SmallCNN) -> list[nn.Module]:
  modules = []
  for i, layer in enumerate(model.convs):
    modules.append(_conv_bn(layer))
    if i < len(model.convs) - 1:
      modules.append(Pool("max", 2, 2))
  return modules + [GlobalMean(), _linear(model.classifier)]


def _allconv(model: AllConv) -> list[nn.Module]:
  # Dropout is the identity in eval mode.
  modules = [_conv_bn(layer) for layer in (*model.features, *model.head)]
  return modules + [Conv(model.classifier), GlobalMean()]


def _nin(model: NiN) -> list[nn.Module]:
  return (
    [_conv_bn(layer) for layer in model.block1]
    + [Pool("max", 3, 2)]
    + [_conv_bn(layer) for layer in model.block2]
    + [Pool("avg", 3, 2)]
    + [_conv_bn(layer) for layer in model.block3]
    + [Conv(model.classifier), GlobalMean()]
  )


def _vgg16(model: VGG16) -> list[nn.Module]:
  modules = []
  for block in model.blocks:
    modules += [_conv_bn(layer) for layer in block] + [Pool("max", 2, 2)]
  return modules + [
    Flatten(),
    _linear(model.fc1),
    nn.ReLU(),
    _linear(model.fc2),
    nn.ReLU(),
    _linear(model.fc3),
  ]


_BUILDERS = (
  (SmallCNN, _smallcnn),
  (AllConv, _allconv),
  (NiN, _nin),
  (VGG16, _vgg16),
)


def to_torch(model: nnx.Module) -> nn.Sequential:
  """The victim ``model`` as a torch module in eval mode, same weights.

  Args:
    model: a pixeljax SmallCNN, AllConv, NiN or VGG16 with float32 compute
      (its batch norm statistics are used, whatever its mode).

  Returns:
    ``module(x float32 [B, 3, H, W] pixels in 0..255) -> logits float32
    [B, K]``: the same function as ``make_predict(model)`` on the images
    transposed to NHWC.
  """
  for cls, build in _BUILDERS:
    if isinstance(model, cls):
      if np.dtype(model.dtype) != np.float32:
        raise ValueError(f"model: expected float32 compute, got {model.dtype}")
      module = nn.Sequential(Normalize(), *build(model))
      return module.eval()
  names = ", ".join(cls.__name__ for cls, _ in _BUILDERS)
  raise TypeError(f"model: expected one of {names}, got {type(model).__name__}")


class Pixels01(nn.Module):
  """Feeds the peers' images, float [B, C, H, W] in [0, 1], to a 0..255 model.

  Each value becomes the 8-bit pixel ``round(255 x)``, so a peer that searches
  continuous colours is scored on the uint8 image it would return.
  """

  def __init__(self, model: nn.Module):
    super().__init__()
    self.model = model

  def forward(self, x):
    return self.model(torch.round(x * 255.0))


class CountingModule(nn.Module):
  """Counts the images (batch rows) that pass through the wrapped forward."""

  def __init__(self, model: nn.Module):
    super().__init__()
    self.model = model
    self.evaluations = 0

  def forward(self, x):
    self.evaluations += int(x.shape[0])
    return self.model(x)
