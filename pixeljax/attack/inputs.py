"""Checks of the arguments every search shares, run before the search compiles.

``batched_attack`` checks its own; the corner searches and the seeded DE share
this one, built from ``checks``, so that their errors read alike.
"""

import functools
from typing import NamedTuple

import jax
import numpy as np

from pixeljax.attack import checks
from pixeljax.attack import evaluate


class Inputs(NamedTuple):
  """Checked arguments of a search over N images.

  Attributes:
    images: uint8 [N, H, W, C].
    labels: int32 [N].
    targets: int32 [N], or None for a non-targeted attack.
    image_ids: int32 [N].
  """

  images: np.ndarray
  labels: np.ndarray
  targets: np.ndarray | None
  image_ids: np.ndarray


@functools.partial(jax.jit, static_argnames=("predict",))
def _clean_logits(predict, images):
  return evaluate.recheck_logits(predict, images)


def check_inputs(
  predict,
  images,
  labels,
  targets,
  image_ids,
  batch_size: int,
  round_sizes: tuple,
) -> Inputs:
  """Checks the shared arguments and the model on the clean images.

  Args:
    predict: ``predict(float32 [B, H, W, C]) -> logits [B, K]``.
    images: uint8 [N, H, W, C] (already through ``checks.check_images``).
    labels: int [N] true classes.
    targets: int [N] target classes, each different from its label, or None.
    image_ids: int [N] or None (then 0..N-1).
    batch_size: candidate images per model call (already checked).
    round_sizes: the candidates per image and round of each of the search's
      phases (see ``checks.model_batch_sizes``).

  Returns:
    The checked ``Inputs``. Raises ``ValueError`` or ``TypeError`` naming the
    argument at fault, also when ``predict`` gives NaN or inf on a clean image.
  """
  num_images = images.shape[0]
  num_classes = checks.check_predict(
    predict, images.shape[1:], checks.model_batch_sizes(batch_size, round_sizes)
  )
  labels = checks.check_classes("labels", labels, num_images, num_classes)
  if targets is not None:
    targets = checks.check_targets(targets, labels, num_classes)
  image_ids = checks.check_image_ids(image_ids, num_images)
  checks.check_finite_logits(np.asarray(_clean_logits(predict, images)))
  return Inputs(
    images=images, labels=labels, targets=targets, image_ids=image_ids
  )
