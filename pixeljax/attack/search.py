"""The search protocol: what every search gives the driver.

A search is a hashable object (a ``NamedTuple`` of static settings, part of
the compiled function) with three pure, traceable methods over one device's
images, in the manner of optax's ``init``/``update`` pairs:

  ``init(problem, batch, params) -> state``
      Fresh state for every row of ``batch``; rows whose ``batch.valid`` is
      False hold no image and start done.
  ``step(problem, batch, params, state) -> state``
      One round: scores candidates of the images not yet done (through
      ``Problem.score``, so that done images cost nothing) and updates the
      shared incumbent (``incumbent.update`` and ``incumbent.finish``).
  ``generations(state) -> int32 [N]``
      The rounds to report per image (DE generations, scan blocks, ...).

``state.incumbent`` is the shared ``incumbent.Incumbent``: the driver runs
``step`` while any image is not done, then re-checks each incumbent
candidate on the returned uint8 image. ``params`` is a pytree of the
search's numeric settings (traced: changing them does not recompile), and
``round_sizes`` the candidates per image and round of each of the search's
phases (every size the model will see). Each search also has a ``length``,
the candidate vector's length, and ``default_round``, the round size the
default model batch is fitted to.
"""

from typing import NamedTuple

import jax

from pixeljax.attack import evaluate


class Problem(NamedTuple):
  """What every candidate is scored against (static, hashable).

  Attributes:
    predict: the model, float32 [B, H, W, C] -> logits [B, K].
    batch_size: candidates per model call.
    targeted: targets are the goal; otherwise any wrong class.
    early_stop: an image stops at its first success.
    incremental: candidates recompute only the windows their pixels touch
      (see incremental.py).
  """

  predict: object
  batch_size: int
  targeted: bool
  early_stop: bool
  incremental: bool = False

  def goal(self, batch):
    """The targets the criteria take: None for a non-targeted attack."""
    return batch.targets if self.targeted else None

  def score(self, batch, candidates, active):
    """Fitness float32 [N, P] and success bool [N, P] of every active image's
    candidates float32 [N, P, L] (see ``evaluate.score_candidates``)."""
    return evaluate.score_candidates(
      self.predict,
      batch.images,
      batch.labels,
      self.goal(batch),
      candidates,
      active,
      self.batch_size,
      self.incremental,
    )


class Batch(NamedTuple):
  """One device's share of the images (traced arrays, N rows).

  Attributes:
    images: uint8 [N, H, W, C].
    labels: int32 [N].
    targets: int32 [N]; the labels again for a non-targeted attack.
    keys: [N] PRNG keys, ``fold_in(key, image_id)`` per image.
    valid: bool [N]; False for rows that hold no image (padding).
  """

  images: jax.Array
  labels: jax.Array
  targets: jax.Array
  keys: jax.Array
  valid: jax.Array


def image_keys(key, image_ids):
  """Each image's key, ``fold_in(key, image_id)``: independent of its batch."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, image_ids)
