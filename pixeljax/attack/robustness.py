"""L0 robustness: the fewest pixels that fool the model, per image.

Robustness to sparse changes is one number per budget k: the share of images
that no search fools with k pixels or fewer. Per image, the searches run
cheapest first and stop at the first success:

1. k = 0: the clean image; one the model already gets wrong needs nothing.
2. k = 1: the exhaustive one-pixel corner scan (``corner``), H x W x 2**C
   evaluations. On the shipped SmallCNN it fools as many images as the
   paper's DE with a fifth of its evaluations (benchmarks/results/search.md).
3. k = 2, 3, ..., K: the corner search (``corner_search``) over k-pixel
   combinations of the pixels the scan ranked best, ``queries_per_k``
   evaluations at each k; an image that k pixels do not fool goes on to
   k + 1, starting again from the k + 1 best-ranked pixels.
4. Where the budget allows (``de_maxiter``, off by default): the paper's DE
   with k pixels, k = 1..K, on each image that no cheaper search fooled with
   k pixels. The corner searches try extreme colours only; DE reaches any
   colour, at popsize x (maxiter + 1) evaluations per image and k.

All of it is one search of the driver (``corner.AfterScan`` of the scan and
a growing ``corner_search.LocalSearch``), so it compiles once, runs as one
``while_loop`` over every image, shards over devices and streams like any
attack. A success is the driver's, re-checked on the returned uint8 image;
its pixel count is the number of pixels that differ between that image and
the clean one. The searches are incomplete: ``min_pixels`` is the fewest
pixels found, an upper bound on the true minimum, and ``robust_accuracy`` an
upper bound on the true robust accuracy.
"""

from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax.attack import checks
from pixeljax.attack import corner
from pixeljax.attack import corner_search
from pixeljax.attack import defaults
from pixeljax.attack import driver
from pixeljax.attack import evaluate
from pixeljax.attack import evolution
from pixeljax.attack.result import AttackResult

NOT_FOOLED = -1


class L0Result(NamedTuple):
  """The fewest pixels found to fool the model (N images, K = max_pixels).

  Attributes:
    min_pixels: int32 [N]; the fewest pixels found that fool the model on
      the image: 0 where the clean image is already misclassified,
      ``NOT_FOOLED`` (-1) where no search fooled it with K pixels or fewer.
    robust_accuracy: float64 [K + 1]; index k is the share of the images
      not fooled with k pixels or fewer (index 0: the clean accuracy).
    adv_images: uint8 [N, H, W, C]; the fooling image (the clean one where
      ``min_pixels`` is 0; the most damaging K-pixel try where -1).
    perturbation: int32 [N, K, 2 + C]; the changed pixels as (x, y,
      colour...), a pixel repeated where fewer than K were changed.
    adv_label: int32 [N]; the model's class for ``adv_images``.
    clean_label: int32 [N]; its class for the clean image.
    queries: int32 [N]; model evaluations spent on the image (0 where the
      clean image is misclassified).
    budget: int64 [K]; index k - 1 is the most evaluations one image can
      cost at k pixels (the scan's at k = 1, ``queries_per_k`` rounded down
      to whole rounds above).
  """

  min_pixels: np.ndarray
  robust_accuracy: np.ndarray
  adv_images: np.ndarray
  perturbation: np.ndarray
  adv_label: np.ndarray
  clean_label: np.ndarray
  queries: np.ndarray
  budget: np.ndarray


def robust_accuracy(min_pixels, max_pixels: int) -> np.ndarray:
  """float64 [K + 1] shares of ``min_pixels`` (int [N]) not fooled with k
  pixels or fewer, k = 0..K; NaN for no images."""
  min_pixels = np.asarray(min_pixels)
  k = np.arange(max_pixels + 1)
  holds = (min_pixels[:, None] == NOT_FOOLED) | (min_pixels[:, None] > k)
  if not len(min_pixels):
    return np.full(max_pixels + 1, np.nan)
  return holds.mean(axis=0)


class CorrectState(NamedTuple):
  """The state of ``CorrectOnly``: its search's, and which rows it runs."""

  inner: object
  valid: jax.Array

  @property
  def incumbent(self):
    return self.inner.incumbent


class CorrectOnly(NamedTuple):
  """Runs ``search`` on the images the model classifies correctly; the
  others start done, with no evaluation spent."""

  search: object

  @property
  def round_sizes(self) -> tuple:
    return self.search.round_sizes

  @property
  def default_round(self) -> int:
    return self.search.default_round

  def init(self, problem, batch, params) -> CorrectState:
    logits = evaluate.recheck_logits(problem.predict, batch.images)
    valid = batch.valid & (jnp.argmax(logits, axis=-1) == batch.labels)
    batch = batch._replace(valid=valid)
    return CorrectState(self.search.init(problem, batch, params), valid)

  def step(self, problem, batch, params, state: CorrectState) -> CorrectState:
    batch = batch._replace(valid=state.valid)
    return state._replace(
      inner=self.search.step(problem, batch, params, state.inner)
    )

  def generations(self, state: CorrectState):
    return self.search.generations(state.inner)


class Plan(NamedTuple):
  """The driver's plan and the budget at each pixel count (int64 [K])."""

  plan: driver.Plan
  budget: np.ndarray


def plan(
  image_shape,
  *,
  max_pixels=defaults.L0_MAX_PIXELS,
  queries_per_k=defaults.L0_QUERIES_PER_K,
  proposals=defaults.PROPOSALS,
  top_pixels=None,
  block=None,
  batch_size=None,
  incremental=None,
) -> Plan:
  """The checked search of ``l0_robustness`` on images of ``image_shape``."""
  height, width, _ = image_shape
  max_pixels = checks.check_int(
    "max_pixels", max_pixels, minimum=1, maximum=height * width
  )
  proposals = checks.check_int("proposals", proposals, minimum=1)
  queries_per_k = checks.check_int(
    "queries_per_k",
    queries_per_k,
    minimum=proposals,
    maximum=checks.INT32_MAX,
  )
  block = corner.check_block(block, image_shape)
  if top_pixels is None:
    top_pixels = max(max_pixels, min(height * width, defaults.TOP_PIXELS_CAP))
  top_pixels = checks.check_int(
    "top_pixels", top_pixels, minimum=max_pixels, maximum=height * width
  )
  rounds = queries_per_k // proposals
  scan = corner.Scan(block=block, keep_table=max_pixels > 1)
  search, params = scan, None
  if max_pixels > 1:
    search = corner.AfterScan(
      scan=scan,
      then=corner_search.LocalSearch(
        pixels=max_pixels,
        top_pixels=top_pixels,
        proposals=proposals,
        use_scan=True,
        first_pixels=2,
      ),
    )
    params = corner_search.LocalParams(rounds=rounds)
  budget = np.array(
    [corner.scan_queries(image_shape, block)]
    + [rounds * proposals] * (max_pixels - 1),
    np.int64,
  )
  checks.check_int32_count(
    "the evaluations one image can cost (the budget at every k)",
    int(budget.sum()),
  )
  return Plan(
    plan=driver.Plan(
      search=CorrectOnly(search),
      params=params,
      early_stop=True,
      batch_size=driver.check_batch_size(batch_size),
      budget=int(budget.sum()),
      pixels=max_pixels,
      incremental=driver.check_incremental(incremental),
    ),
    budget=budget,
  )


def _l0_result(images, attack: AttackResult, budget) -> L0Result:
  """The ``L0Result`` of the driver's result on uint8 ``images``."""
  clean_wrong = attack.clean_success
  changed = np.any(attack.adv_images != images, axis=-1).sum(axis=(1, 2))
  min_pixels = np.where(
    clean_wrong, 0, np.where(attack.success, changed, NOT_FOOLED)
  ).astype(np.int32)
  # The search never ran on a misclassified image: report it unchanged.
  corner_pixel = np.concatenate(
    [np.zeros((len(images), 2), np.int32), images[:, 0, 0].astype(np.int32)],
    axis=-1,
  )
  unchanged = np.broadcast_to(corner_pixel[:, None], attack.perturbation.shape)
  return L0Result(
    min_pixels=min_pixels,
    robust_accuracy=robust_accuracy(min_pixels, len(budget)),
    adv_images=np.where(
      clean_wrong[:, None, None, None], images, attack.adv_images
    ),
    perturbation=np.where(
      clean_wrong[:, None, None], unchanged, attack.perturbation
    ),
    adv_label=np.where(clean_wrong, attack.clean_label, attack.adv_label),
    clean_label=attack.clean_label,
    queries=np.where(clean_wrong, 0, attack.queries).astype(np.int32),
    budget=budget,
  )


def l0_robustness(
  predict,
  images,
  labels,
  *,
  key,
  max_pixels=defaults.L0_MAX_PIXELS,
  queries_per_k=defaults.L0_QUERIES_PER_K,
  proposals=defaults.PROPOSALS,
  top_pixels=None,
  block=None,
  de_popsize=defaults.POPSIZE,
  de_maxiter=None,
  batch_size=None,
  image_ids=None,
  mesh=None,
  incremental=None,
) -> L0Result:
  """The fewest pixels that fool ``predict`` on each image, and the robust
  accuracy at every k up to ``max_pixels`` (non-targeted).

  Args:
    predict: pure jittable ``predict(images) -> logits``; images float32
      [B, H, W, C] holding raw pixel values 0..255, logits float [B, K].
      Wrap it in a defence (``pixeljax.defences``) to evaluate the defence:
      the searches query the wrapped model, so they adapt to it.
    images: uint8 [N, H, W, C], or floats holding integers 0..255.
    labels: int [N] true classes.
    key: a JAX PRNG key; image i draws from ``fold_in(key, image_ids[i])``.
    max_pixels: K, the most pixels changed per image.
    queries_per_k: evaluations per image at each k from 2 on (rounded down
      to whole rounds of ``proposals``); k = 1 is the exhaustive scan.
    proposals: candidates per image and round of the k-pixel search.
    top_pixels: how many of the scan's best pixels the k-pixel search draws
      from; default ``min(H * W, 128)``, at least ``max_pixels``.
    block: scan candidates per image and round (see ``corner_attack``).
    de_popsize: the population of the paper's DE, when it runs.
    de_maxiter: None: no DE. Otherwise, after the corner searches, the
      paper's DE with k pixels and this many generations runs for each k =
      1..K on the images no search fooled with k pixels (its stream for k
      is ``fold_in(key, k)``); that adds ``de_popsize * (de_maxiter + 1)``
      to the budget at every k.
    batch_size: candidate images per model call on each device; chosen when
      None.
    image_ids: int [N] ids seeding each image's stream; default 0..N-1.
    mesh: a ``jax.sharding.Mesh`` to shard the images over; None for every
      device.
    incremental: evaluate candidates incrementally (True), in full (False),
      or where it pays (None; decided at ``max_pixels``, and for each DE
      run at its k); see ``batched_attack``.

  Returns:
    An ``L0Result`` of NumPy arrays.
  """
  images = checks.check_images(images)
  l0 = plan(
    images.shape[1:],
    max_pixels=max_pixels,
    queries_per_k=queries_per_k,
    proposals=proposals,
    top_pixels=top_pixels,
    block=block,
    batch_size=batch_size,
    incremental=incremental,
  )
  if de_maxiter is not None:  # checked now, not after the corner searches
    evolution.plan(
      images.shape[1:],
      pixels=l0.budget.size,
      popsize=de_popsize,
      maxiter=de_maxiter,
      batch_size=batch_size,
    )
  attack = driver.attack(
    l0.plan,
    predict,
    images,
    labels,
    key=key,
    targets=None,
    image_ids=image_ids,
    mesh=mesh,
  )
  result = _l0_result(images, attack, l0.budget)
  if de_maxiter is None:
    return result
  ids = np.arange(len(images)) if image_ids is None else np.asarray(image_ids)
  return _with_de(
    predict,
    images,
    labels,
    result,
    key=key,
    image_ids=ids,
    popsize=de_popsize,
    maxiter=de_maxiter,
    batch_size=batch_size,
    mesh=mesh,
    incremental=incremental,
  )


def _with_de(
  predict, images, labels, l0, *, key, image_ids, popsize, maxiter, **common
) -> L0Result:
  """``l0`` after the paper's DE at each k on the images not yet fooled with
  k pixels (see ``l0_robustness``)."""
  max_pixels = l0.budget.size
  fields = {name: np.array(value) for name, value in l0._asdict().items()}
  for k in range(1, max_pixels + 1):
    reached = fields["min_pixels"]
    todo = np.flatnonzero((reached == NOT_FOOLED) | (reached > k))
    if not todo.size:
      break
    attack = evolution.batched_attack(
      predict,
      images[todo],
      labels[todo],
      key=jax.random.fold_in(key, k),
      pixels=k,
      popsize=popsize,
      maxiter=maxiter,
      image_ids=image_ids[todo],
      **common,
    )
    fields["queries"][todo] += attack.queries
    won = attack.success
    fooled = todo[won]
    changed = np.any(attack.adv_images != images[todo], axis=-1)
    fields["min_pixels"][fooled] = changed.sum(axis=(1, 2))[won]
    fields["adv_images"][fooled] = attack.adv_images[won]
    fields["adv_label"][fooled] = attack.adv_label[won]
    # K pixels as the corner searches give them: the first one repeated.
    perturbation = attack.perturbation[won]
    fields["perturbation"][fooled] = np.concatenate(
      [perturbation] + [perturbation[:, :1]] * (max_pixels - k),
      axis=1,
    )
  fields["budget"] = l0.budget + popsize * (maxiter + 1)
  fields["robust_accuracy"] = robust_accuracy(fields["min_pixels"], max_pixels)
  return L0Result(**fields)


def stream_l0_robustness(
  predict,
  images,
  labels,
  *,
  key,
  slots=defaults.SLOTS,
  refill_every=defaults.REFILL_EVERY,
  image_ids=None,
  mesh=None,
  progress=None,
  **options,
) -> Iterator[tuple[np.ndarray, L0Result]]:
  """``l0_robustness`` through ``slots`` slots, yielding images as they
  finish (see ``stream_attack``): (indices int [n], ``L0Result`` of those n
  images, its ``robust_accuracy`` over them alone). The same results as
  ``l0_robustness`` with the same key and ids."""
  images = checks.check_images(images)
  l0 = plan(images.shape[1:], **options)
  slots, refill_every, progress = driver.check_stream_options(
    slots, refill_every, progress
  )
  finished = driver.stream(
    l0.plan,
    predict,
    images,
    labels,
    key=key,
    targets=None,
    image_ids=image_ids,
    mesh=mesh,
    slots=slots,
    refill_every=refill_every,
    progress=progress,
  )
  # Checked above, when called; the work is done as the caller iterates.
  return (
    (indices, _l0_result(images[indices], attack, l0.budget))
    for indices, attack in finished
  )
