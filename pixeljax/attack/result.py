"""The per-image result of an attack."""

from typing import NamedTuple

import numpy as np


class AttackResult(NamedTuple):
  """What an attack found, one entry per image (N images, d pixels, C channels).

  An image the model already gets wrong (``clean_success``: misclassified,
  or already classified as its target) counts as a success without any
  perturbation mattering; ``success_rate`` leaves such images out, as the
  paper does by attacking only correctly classified images.

  Attributes:
    success: bool [N]; re-checked on ``adv_images``, not taken from the search.
      Never True where the model's output on ``adv_images`` is not finite.
    adv_images: uint8 [N, H, W, C]; the original image with at most d pixels
      changed (the best candidate found, also when the attack failed; the
      unchanged image when the model gave NaN or inf on every candidate).
    perturbation: int32 [N, d, 2 + C]; each changed pixel as (x, y, colour...)
      with x the column and y the row.
    adv_label: int32 [N]; the model's class for ``adv_images``.
    adv_prob: float32 [N]; its probability (the attack's confidence).
    true_prob: float32 [N]; the probability of the true label on
      ``adv_images``.
    target_prob: float32 [N]; on ``adv_images``, the probability of the
      target class (targeted attacks) or of the likeliest class other than
      the true one (non-targeted attacks).
    clean_label: int32 [N]; the model's class for the unperturbed image.
    clean_success: bool [N]; the unperturbed image already meets the
      attack's criterion (misclassified, or classified as the target).
    queries: int32 [N]; candidate evaluations the search spent on the image.
    generations: int32 [N]; DE generations run after the initial population.
    incremental: bool [N]; the search scored candidates incrementally,
      recomputing only what their pixels touch (see ``batched_attack``).

  Every probability lies in [0, 1].
  """

  success: np.ndarray
  adv_images: np.ndarray
  perturbation: np.ndarray
  adv_label: np.ndarray
  adv_prob: np.ndarray
  true_prob: np.ndarray
  target_prob: np.ndarray
  clean_label: np.ndarray
  clean_success: np.ndarray
  queries: np.ndarray
  generations: np.ndarray
  incremental: np.ndarray

  @property
  def success_rate(self) -> float:
    """Fraction of the images the model got right that the attack fooled;
    NaN when it got none right."""
    attacked = ~self.clean_success
    if not np.any(attacked):
      return float("nan")
    return float(np.mean(self.success[attacked]))
