"""Continuous batching: a fixed set of slots, refilled as images finish.

A long stream of images is attacked through ``slots`` image slots. Every
``refill_every`` rounds the host looks at which slots are done, hands their
results out, and loads the next images into them, so the device never works
for finished images and never waits for the slowest image of a batch. Each
image keeps its own random stream (``fold_in(key, image_id)``) and its own
round count, so its result is exactly what the method's own function gives
it. Any search runs this way (``method``; see ``methods``).
"""

from collections.abc import Iterator

import numpy as np

from pixeljax.attack import checks
from pixeljax.attack import defaults
from pixeljax.attack import driver
from pixeljax.attack import methods
from pixeljax.attack.result import AttackResult


def stream_attack(
  predict,
  images,
  labels,
  *,
  key,
  method="de",
  targets=None,
  slots=defaults.SLOTS,
  refill_every=defaults.REFILL_EVERY,
  image_ids=None,
  mesh=None,
  progress=None,
  **options,
) -> Iterator[tuple[np.ndarray, AttackResult]]:
  """Attacks images through ``slots`` slots, yielding results as they finish.

  Args:
    predict, images, labels, key, targets, image_ids, mesh: as for
      ``batched_attack``.
    method: the search: "de" (``batched_attack``), "seeded-de"
      (``seeded_attack``), "corner" (``corner_attack``), "corner-search"
      (``corner_search``) or "sparse-rs" (``corner_search`` with
      ``scan=False``).
    slots: images in flight at once (rounded up to a multiple of the devices).
    refill_every: rounds between looks at the slots (a host round trip each).
    progress: None, or a function called at every host round trip (also
      when no image finished) with one int: the model evaluations spent so
      far on this stream's images, finished and in flight. It is called
      before the round's results are yielded; at the end it is the sum of
      every result's ``queries``. The results do not depend on it.
    **options: the method's own keyword options (for "de": pixels,
      popsize, maxiter, ...; see ``methods.options_of``).

  Yields:
    (indices int [n], AttackResult of n images): positions in ``images`` of
    the images that finished since the last yield, and their results, the
    same as the method's own function with the same key and ids gives them.
  """
  images = checks.check_images(images)
  plan = methods.plan(method, images.shape[1:], **options)
  slots, refill_every, progress = driver.check_stream_options(
    slots, refill_every, progress
  )
  return driver.stream(
    plan,
    predict,
    images,
    labels,
    key=key,
    targets=targets,
    image_ids=image_ids,
    mesh=mesh,
    slots=slots,
    refill_every=refill_every,
    progress=progress,
  )
