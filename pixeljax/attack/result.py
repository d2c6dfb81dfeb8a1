"""The per-image result of an attack."""

from typing import NamedTuple

import numpy as np


class AttackResult(NamedTuple):
  """What an attack found, one entry per image (N images, d pixels, C channels).

  Attributes:
    success: bool [N]; re-checked on ``adv_images``, not taken from the search.
    adv_images: uint8 [N, H, W, C]; the original image with at most d pixels
      changed (the best candidate found, also when the attack failed).
    perturbation: int32 [N, d, 2 + C]; each changed pixel as (x, y, colour...)
      with x the column and y the row.
    adv_label: int32 [N]; the model's class for ``adv_images``.
    adv_prob: float32 [N]; its probability (the attack's confidence).
    true_prob: float32 [N]; the probability of the true label on
      ``adv_images``.
    clean_label: int32 [N]; the model's class for the unperturbed image.
    queries: int32 [N]; candidate evaluations the search spent on the image.
    generations: int32 [N]; DE generations run after the initial population.
  """
  success: np.ndarray
  adv_images: np.ndarray
  perturbation: np.ndarray
  adv_label: np.ndarray
  adv_prob: np.ndarray
  true_prob: np.ndarray
  clean_label: np.ndarray
  queries: np.ndarray
  generations: np.ndarray

  @property
  def success_rate(self) -> float:
    """Fraction of images fooled."""
    return float(np.mean(self.success)) if len(self.success) else 0.0
