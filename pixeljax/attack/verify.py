"""The last step of every search: decode the chosen candidate and re-check it.

The search's own success flag is never trusted: the chosen candidate is
decoded to integer pixels, written into the image, and the model is run on
exactly the uint8 image that is returned. The clean images are scored in the
same pass, so every search reports which images the model already got wrong.
"""

import jax.numpy as jnp

from pixeljax.attack import criteria
from pixeljax.attack import evaluate
from pixeljax.attack import pixels as pixels_lib


def unchanged_candidates(images, pixels: int):
  """float32 [N, d * (2 + C)] candidates that leave each image as it is.

  Each of the d pixels rewrites the top-left pixel with its own colour.
  """
  corner = images[:, 0, 0, :].astype(jnp.float32)  # [N, C]
  one = jnp.concatenate([jnp.zeros((images.shape[0], 2)), corner], axis=-1)
  return jnp.tile(one, (1, pixels))


def finalize(predict, best, images, labels, targets, clean_logits=None):
  """Builds the adversarial images and their verdicts (traceable under jit).

  Where the model's output on the chosen candidate is not finite (NaN or
  inf logits), the image is returned unchanged, as a failure: such an output
  is never a success, and every reported probability lies in [0, 1].

  Args:
    predict: the model.
    best: float32 [N, L] the chosen candidate of each image.
    images: uint8 [N, H, W, C].
    labels: int32 [N].
    targets: int32 [N] or None.
    clean_logits: float32 [N, K] the clean images' logits from
      ``evaluate.recheck_logits``, when already computed; None to compute.

  Returns:
    A dict with success bool [N], adv_images uint8 [N, H, W, C],
    perturbation int32 [N, d, 2 + C], adv_label int32 [N], adv_prob,
    true_prob and target_prob float32 [N], clean_label int32 [N] and
    clean_success bool [N] (see ``AttackResult``).
  """
  height, width, channels = images.shape[1:]
  if clean_logits is None:
    clean_logits = evaluate.recheck_logits(predict, images)
  clean = evaluate.probabilities(clean_logits)
  perturbation = pixels_lib.decode(best, height, width, channels)
  adv_images = pixels_lib.inject(images, perturbation)
  probs = evaluate.probabilities(evaluate.recheck_logits(predict, adv_images))
  finite = jnp.all(jnp.isfinite(probs), axis=-1)
  unchanged = pixels_lib.decode(
    unchanged_candidates(images, best.shape[-1] // (2 + channels)),
    height,
    width,
    channels,
  )
  perturbation = jnp.where(finite[:, None, None], perturbation, unchanged)
  adv_images = jnp.where(finite[:, None, None, None], adv_images, images)
  probs = jnp.where(finite[:, None], probs, clean)

  adv_label = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  clean_label = jnp.argmax(clean, axis=-1).astype(jnp.int32)

  def take(p, cls):
    return jnp.take_along_axis(p, cls[:, None], 1)[:, 0]

  if targets is None:
    # The "target" of a non-targeted attack: the likeliest wrong class.
    wrong = probs.at[jnp.arange(len(labels)), labels].set(-1.0)
    target_prob = jnp.max(wrong, axis=-1)
  else:
    target_prob = take(probs, targets)
  return dict(
    success=finite & criteria.is_success(adv_label, labels, targets),
    adv_images=adv_images,
    perturbation=perturbation,
    adv_label=adv_label,
    adv_prob=take(probs, adv_label),
    true_prob=take(probs, labels),
    target_prob=target_prob,
    clean_label=clean_label,
    clean_success=criteria.is_success(clean_label, labels, targets),
  )
