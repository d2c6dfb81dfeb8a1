"""Checks of the arguments every search shares, run before anything compiles.

``batched_attack`` checks its own; the corner searches and the seeded DE share
this one, built from ``checks``, so that their errors read alike.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
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
    clean_label: int32 [N]; the model's class for each clean image.
  """
  images: np.ndarray
  labels: np.ndarray
  targets: np.ndarray | None
  image_ids: np.ndarray
  clean_label: np.ndarray


@functools.partial(jax.jit, static_argnames=("predict", "batch_size"))
def _clean_probs(predict, images, batch_size):
  return evaluate.predict_in_chunks(predict, images.astype(jnp.float32),
                                    batch_size)


def check_inputs(predict, images, labels, targets, image_ids,
                 batch_size: int) -> Inputs:
  """Checks the shared arguments and scores the clean images once.

  Args:
    predict: ``predict(float32 [B, H, W, C]) -> logits [B, K]``.
    images: uint8 [N, H, W, C] (already through ``checks.check_images``).
    labels: int [N] true classes.
    targets: int [N] target classes, each different from its label, or None.
    image_ids: int [N] or None (then 0..N-1).
    batch_size: candidate images per model call (already checked).

  Returns:
    The checked ``Inputs``. Raises ``ValueError`` or ``TypeError`` naming the
    argument at fault, also when ``predict`` gives NaN or inf on a clean image.
  """
  num_images = images.shape[0]
  num_classes = checks.check_predict(predict, images.shape[1:], batch_size)
  labels = checks.check_classes("labels", labels, num_images, num_classes)
  if targets is not None:
    targets = checks.check_targets(targets, labels, num_classes)
  image_ids = checks.check_image_ids(image_ids, num_images)
  probs = np.asarray(_clean_probs(predict, images,
                                  min(batch_size, num_images)))
  checks.check_finite_logits(probs)
  return Inputs(images=images, labels=labels, targets=targets,
                image_ids=image_ids,
                clean_label=np.argmax(probs, -1).astype(np.int32))
