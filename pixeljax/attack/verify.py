"""The last step of every search: decode the chosen candidate and re-check it.

The search's own success flag is never trusted: the chosen candidate is
decoded to integer pixels, written into the image, and the model is run on
exactly the uint8 image that is returned.
"""

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax.attack import criteria
from pixeljax.attack import evaluate
from pixeljax.attack import pixels as pixels_lib
from pixeljax.attack.result import AttackResult


def finalize(predict, best, images, labels, targets, batch_size: int):
  """Builds the adversarial images and their verdicts (traceable under jit).

  Args:
    predict: the model.
    best: float32 [N, L] the chosen candidate of each image.
    images: uint8 [N, H, W, C].
    labels: int32 [N].
    targets: int32 [N] or None.
    batch_size: images per model call.

  Returns:
    A dict with success bool [N], adv_images uint8 [N, H, W, C],
    perturbation int32 [N, d, 2 + C], adv_label int32 [N], adv_prob and
    true_prob float32 [N].
  """
  height, width, channels = images.shape[1:]
  perturbation = pixels_lib.decode(best, height, width, channels)
  adv_images = pixels_lib.inject(images, perturbation)
  probs = evaluate.predict_in_chunks(predict, adv_images.astype(jnp.float32),
                                     min(batch_size, images.shape[0]))
  adv_label = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  success = criteria.is_success(adv_label, labels, targets) & jnp.all(
      jnp.isfinite(probs), axis=-1)
  take = lambda cls: jnp.take_along_axis(probs, cls[:, None], 1)[:, 0]
  return dict(success=success, adv_images=adv_images,
              perturbation=perturbation, adv_label=adv_label,
              adv_prob=take(adv_label), true_prob=take(labels))


def to_result(fields: dict, clean_label, queries, generations) -> AttackResult:
  """An ``AttackResult`` of NumPy arrays from ``finalize``'s device fields."""
  fields = jax.device_get(fields)
  return AttackResult(
      clean_label=np.asarray(clean_label, np.int32),
      queries=np.asarray(queries, np.int32),
      generations=np.asarray(generations, np.int32),
      **{name: np.asarray(value) for name, value in fields.items()})
