"""One attack run per tool on the same model, images and budget.

Each ``run_*`` function attacks uint8 images ``[N, H, W, C]`` with true labels
``[N]`` non-targeted, and returns a ``Run``: the adversarial images as uint8,
the wall time, and the model evaluations spent. ``verify`` then scores every
tool the same way, on the uint8 images it returned, with the JAX model.

The peers take float images in [0, 1], NCHW, and a torch model that rounds
them to 8-bit pixels (``torch_victims.Pixels01``); their evaluations are
counted at that model's forward (``torch_victims.CountingModule``).
"""

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import torch_victims
import pixeljax


class Run(NamedTuple):
  """What one tool did with the images.

  Attributes:
    adv_images: uint8 [N, H, W, C]; the returned images (the clean image where
      a tool returns nothing better).
    seconds: wall time of the attack call.
    evaluations: images the tool passed through the model, all calls included.
    first_call_seconds: wall time of the first call on these shapes: for
      pixeljax it includes jit compilation; the peers' only call.
  """

  adv_images: np.ndarray
  seconds: float
  evaluations: int
  first_call_seconds: float


def to_unit_nchw(images: np.ndarray) -> torch.Tensor:
  """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [0, 1]."""
  return torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)


def from_unit_nchw(images) -> np.ndarray:
  """Float [N, C, H, W] in [0, 1] (tensor or array) -> uint8 [N, H, W, C].

  Rounds like ``Pixels01``, so the result is the image the model scored.
  """
  images = np.asarray(
    images.detach().cpu() if torch.is_tensor(images) else images
  )
  pixels = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
  return pixels.transpose(0, 2, 3, 1)


def run_pixeljax(
  predict, images, labels, *, pixels: int, popsize: int, maxiter: int, seed: int
) -> Run:
  """``pixeljax.batched_attack`` with the paper's DE, all images at once.

  Called twice: the first call compiles, the second is timed. Each model
  call holds one image's population, so that no call is half padding when
  only a few images are attacked or left.
  """
  kwargs = dict(
    key=jax.random.key(seed),
    pixels=pixels,
    popsize=popsize,
    maxiter=maxiter,
    batch_size=popsize,
  )
  started = time.perf_counter()
  pixeljax.batched_attack(predict, images, labels, **kwargs)
  cold = time.perf_counter() - started
  started = time.perf_counter()
  result = pixeljax.batched_attack(predict, images, labels, **kwargs)
  seconds = time.perf_counter() - started
  # The clean images and the final re-check are model evaluations too.
  evaluations = int(result.queries.sum()) + 2 * len(images)
  return Run(result.adv_images, seconds, evaluations, cold)


def run_torchattacks(
  model, images, labels, *, pixels: int, popsize: int, maxiter: int, seed: int
) -> Run:
  """torchattacks ``OnePixel``, which attacks one image at a time.

  Its ``popsize`` is divided by the 5 * pixels genes (scipy's multiplier), so
  the population is ``popsize // (5 * pixels) * 5 * pixels``; ``inf_batch``
  is the whole population, one forward call per generation.

  Args:
    model: torch module on [0, 1] NCHW images (``Pixels01``).
  """
  import torchattacks

  counting = torch_victims.CountingModule(model).eval()
  attack = torchattacks.OnePixel(
    counting, pixels=pixels, steps=maxiter, popsize=popsize, inf_batch=popsize
  )
  # Its DE draws from NumPy's global generator.
  np.random.seed(seed)
  torch.manual_seed(seed)
  started = time.perf_counter()
  adv = attack(to_unit_nchw(images), torch.tensor(np.asarray(labels)))
  seconds = time.perf_counter() - started
  return Run(from_unit_nchw(adv), seconds, counting.evaluations, seconds)


def run_art(
  model,
  images,
  labels,
  *,
  pixels: int,
  maxiter: int,
  seed: int,
  num_classes: int,
  device_type: str = "cpu",
) -> Run:
  """ART ``PixelAttack`` with differential evolution (``es=1``).

  ART fixes the population at ``400 // (5 * pixels) * 5 * pixels`` and the
  prediction batch at 128; ``es=0`` would be CMA-ES instead.

  Args:
    model: torch module on [0, 1] NCHW images (``Pixels01``).
    device_type: ART's "cpu" or "gpu" (it moves the model to cuda:0).
  """
  from art.attacks.evasion import PixelAttack
  from art.estimators.classification import PyTorchClassifier

  counting = torch_victims.CountingModule(model).eval()
  classifier = PyTorchClassifier(
    model=counting,
    loss=torch.nn.CrossEntropyLoss(),
    input_shape=(images.shape[3],) + images.shape[1:3],
    nb_classes=num_classes,
    clip_values=(0.0, 1.0),
    channels_first=True,
    device_type=device_type,
  )
  attack = PixelAttack(
    classifier, th=pixels, es=1, max_iter=maxiter, targeted=False, verbose=False
  )
  np.random.seed(seed)  # its DE draws from NumPy's global generator
  started = time.perf_counter()
  adv = attack.generate(to_unit_nchw(images).numpy(), y=np.asarray(labels))
  seconds = time.perf_counter() - started
  return Run(from_unit_nchw(adv), seconds, counting.evaluations, seconds)


def verify(predict, images, adv_images, labels, pixels: int) -> dict:
  """Scores returned images alike for every tool.

  Success: the JAX model's class for the returned uint8 image differs from
  the label, and at most ``pixels`` pixels differ from the clean image.

  Returns:
    dict with ``success`` bool [N] and ``changed_pixels`` int [N] as lists.
  """
  logits = jax.jit(predict)(jnp.asarray(adv_images, jnp.float32))
  fooled = np.asarray(jnp.argmax(logits, -1)) != np.asarray(labels)
  changed = np.any(adv_images != images, axis=-1).sum(axis=(1, 2))
  success = fooled & (changed <= pixels)
  return {"success": success.tolist(), "changed_pixels": changed.tolist()}
