"""The one driver that runs every search, on every device and every host.

Given a ``Plan`` (a search of the ``search`` protocol with its settings), the
driver checks the inputs once, shards the image axis over a mesh, scores the
clean images, runs the search's rounds in one ``lax.while_loop`` per device
until every image is done, and re-checks each image's chosen candidate on
the returned uint8 image (``verify``). ``stream`` runs the same search
through a fixed set of slots, refilled as images finish.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax import xla_options
from pixeljax.attack import checks
from pixeljax.attack import evaluate
from pixeljax.attack import incremental_choice
from pixeljax.attack import search as search_lib
from pixeljax.attack import sharding
from pixeljax.attack import verify
from pixeljax.attack.result import AttackResult

# Candidate images per model call when batch_size is None: about 16 MiB of
# float32 input per chunk, a power of two, at most 1024.
_DEFAULT_CHUNK_BYTES = 2**24

# The key of searches that draw nothing at random (the corner scan).
_UNUSED_KEY = 0


class Plan(NamedTuple):
  """A search with its checked settings, ready for the driver.

  Attributes:
    search: the search (hashable; see ``search``).
    params: its numeric settings, a pytree of scalars.
    early_stop: stop each image at its first success.
    batch_size: candidates per model call, or None to choose.
    budget: the most model evaluations one image can cost.
    pixels: the most pixels one candidate changes.
    incremental: evaluate candidates incrementally (True), with full
      forward passes (False), or where it pays (None; see
      ``incremental_choice.resolve``).
    random: the search draws at random, so the caller must give a key.
  """

  search: object
  params: object
  early_stop: bool
  batch_size: int | None
  budget: int
  pixels: int
  incremental: bool | None = None
  random: bool = True


def check_incremental(incremental):
  """``incremental`` as True, False or None (automatic)."""
  return incremental_choice.check_mode(incremental)


def check_batch_size(batch_size):
  """``batch_size`` as an int of at least 1, or None."""
  if batch_size is None:
    return None
  return checks.check_int("batch_size", batch_size, minimum=1)


def default_batch_size(image_shape, round_size: int, num_images: int) -> int:
  """Candidates per model call when the caller gives none.

  About 16 MiB of float32 input per chunk, at most 1024 candidates, and a
  multiple or a divisor of ``round_size``, so that chunks hold whole rounds
  of an image (or split them evenly) and little of the last chunk of a round
  is padding.
  """
  per_image = 4 * int(np.prod(image_shape))
  cap = max(1, min(_DEFAULT_CHUNK_BYTES // per_image, 1024))
  if cap >= round_size:
    return min(cap // round_size, num_images) * round_size
  return max(d for d in range(1, cap + 1) if round_size % d == 0)


class Inputs(NamedTuple):
  """Checked arguments of an attack over N images.

  Attributes:
    problem: what candidates are scored against.
    images: uint8 [N, H, W, C].
    labels: int32 [N].
    targets: int32 [N]; the labels again for a non-targeted attack.
    image_ids: int32 [N].
    key: the PRNG key.
  """

  problem: search_lib.Problem
  images: np.ndarray
  labels: np.ndarray
  targets: np.ndarray
  image_ids: np.ndarray
  key: jax.Array


def check_inputs(
  plan: Plan, predict, images, labels, *, key, targets, image_ids, per_device
) -> Inputs:
  """Checks every argument the searches share, before anything compiles.

  Args:
    plan: the search and its settings.
    predict: ``predict(float32 [B, H, W, C]) -> logits [B, K]``.
    images: uint8 [N, H, W, C] (already through ``checks.check_images``).
    labels: int [N] true classes.
    key: a PRNG key; None only for a search that draws nothing at random
      (``plan.random`` False).
    targets: int [N] target classes, each different from its label, or None.
    image_ids: int [N] or None (then 0..N-1).
    per_device: the most images one device (or slot set) holds at once.

  Raises ``ValueError`` or ``TypeError`` naming the argument at fault.
  """
  num_images = images.shape[0]
  search = plan.search
  checks.check_int32_count(
    "the candidates of one round on one device (candidates per image and "
    "round times images per device)",
    max(search.round_sizes) * per_device,
  )
  batch_size = plan.batch_size or default_batch_size(
    images.shape[1:], search.default_round, per_device
  )
  if key is None and plan.random:
    # A hidden fixed key would give every call the same "random" search.
    raise TypeError(
      "key: this search draws at random; expected a PRNG key "
      "(jax.random.key(seed)), got None"
    )
  key = checks.check_key(jax.random.key(_UNUSED_KEY) if key is None else key)
  num_classes = checks.check_predict(
    predict,
    images.shape[1:],
    checks.model_batch_sizes(batch_size, search.round_sizes),
  )
  labels = checks.check_classes("labels", labels, num_images, num_classes)
  if targets is not None:
    targets = checks.check_targets(targets, labels, num_classes)
  problem = search_lib.Problem(
    predict=predict,
    batch_size=batch_size,
    targeted=targets is not None,
    early_stop=plan.early_stop,
    # One decision per attack, at the most pixels a candidate changes.
    incremental=incremental_choice.resolve(
      plan.incremental,
      predict,
      images.shape[1:],
      plan.pixels,
      plan.budget,
      num_images=num_images,
      batch_size=batch_size,
      round_size=search.default_round,
    ),
  )
  return Inputs(
    problem=problem,
    images=images,
    labels=labels,
    targets=labels if targets is None else targets,
    image_ids=checks.check_image_ids(image_ids, num_images),
    key=key,
  )


def _batch(images, labels, targets, image_ids, valid, key):
  return search_lib.Batch(
    images=images,
    labels=labels,
    targets=targets,
    keys=search_lib.image_keys(key, image_ids),
    valid=valid,
  )


def _clean_shard(predict, images):
  """Logits float32 [N, K] of one device's unperturbed uint8 images."""
  return evaluate.recheck_logits(predict, images)


def _rounds(search, problem, batch, params, state, max_rounds=None):
  """Runs rounds until every image is done (or ``max_rounds`` more rounds)."""
  limit = jnp.iinfo(jnp.int32).max if max_rounds is None else max_rounds

  def unfinished(carry):
    count, state = carry
    return jnp.any(~state.incumbent.done) & (count < limit)

  def advance(carry):
    count, state = carry
    return count + 1, search.step(problem, batch, params, state)

  _, state = jax.lax.while_loop(unfinished, advance, (0, state))
  return state


def _result_fields(search, problem, batch, state, clean_logits):
  """The ``AttackResult`` fields of one device's images, as a dict."""
  chosen = state.incumbent
  fields = verify.finalize(
    problem.predict,
    chosen.candidate,
    batch.images,
    batch.labels,
    problem.goal(batch),
    clean_logits=clean_logits,
  )
  return dict(
    fields,
    queries=chosen.queries,
    generations=search.generations(state),
    incremental=jnp.full(chosen.queries.shape, problem.incremental),
  )


def _attack_shard(
  search,
  problem,
  images,
  labels,
  targets,
  image_ids,
  valid,
  clean_logits,
  key,
  params,
):
  """The whole search on one device's images; ``valid`` False marks padding."""
  batch = _batch(images, labels, targets, image_ids, valid, key)
  state = _rounds(
    search, problem, batch, params, search.init(problem, batch, params)
  )
  return _result_fields(search, problem, batch, state, clean_logits)


def _mesh(mesh):
  return sharding.default_mesh() if mesh is None else sharding.check_mesh(mesh)


def attack(
  plan: Plan, predict, images, labels, *, key, targets, image_ids, mesh
) -> AttackResult:
  """Runs ``plan`` on every image, sharded over ``mesh`` (None: every device).

  ``images`` must have been through ``checks.check_images``; the other
  arguments are those of ``batched_attack``.
  """
  mesh = _mesh(mesh)
  count = len(images)
  inputs = check_inputs(
    plan,
    predict,
    images,
    labels,
    key=key,
    targets=targets,
    image_ids=image_ids,
    per_device=-(-count // mesh.size),
  )
  placed, valid = sharding.place(
    mesh, inputs.images, inputs.labels, inputs.targets, inputs.image_ids
  )
  clean = sharding.run_sharded(mesh, _clean_shard, (predict,), placed[:1], ())
  checks.check_finite_logits(np.asarray(sharding.gather(clean))[:count])
  fields = sharding.run_sharded(
    mesh,
    _attack_shard,
    (plan.search, inputs.problem),
    (*placed, valid, clean),
    (inputs.key, plan.params),
    _options(inputs.problem),
  )
  fields = sharding.gather(fields)
  return AttackResult(**{name: value[:count] for name, value in fields.items()})


def _options(problem) -> tuple:
  """The XLA options of the programs that score ``problem``'s candidates."""
  return xla_options.attack_program_options(problem.incremental)


def _init_shard(
  search, problem, images, labels, targets, image_ids, valid, key, params
):
  batch = _batch(images, labels, targets, image_ids, valid, key)
  return search.init(problem, batch, params)


def _refill_shard(
  search,
  problem,
  state,
  refill,
  images,
  labels,
  targets,
  image_ids,
  key,
  params,
):
  """Fresh search state in the slots where ``refill`` (bool [S]) is set."""
  batch = _batch(images, labels, targets, image_ids, refill, key)
  fresh = search.init(problem, batch, params)

  def pick(new, old):
    return jnp.where(refill.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

  return jax.tree.map(pick, fresh, state)


def _advance_shard(
  search,
  problem,
  state,
  images,
  labels,
  targets,
  image_ids,
  valid,
  key,
  params,
  rounds,
):
  batch = _batch(images, labels, targets, image_ids, valid, key)
  return _rounds(search, problem, batch, params, state, max_rounds=rounds)


def _finish_shard(
  search,
  problem,
  state,
  images,
  labels,
  targets,
  image_ids,
  valid,
  clean_logits,
  key,
  params,
):
  del params
  batch = _batch(images, labels, targets, image_ids, valid, key)
  return _result_fields(search, problem, batch, state, clean_logits)


def check_stream_options(slots, refill_every, progress) -> tuple:
  """``slots`` and ``refill_every`` as ints of at least 1, and ``progress``
  a callable or None; raises naming the argument."""
  slots = checks.check_int("slots", slots, minimum=1)
  refill_every = checks.check_int("refill_every", refill_every, minimum=1)
  if progress is not None and not callable(progress):
    raise TypeError(f"progress must be callable or None, got {progress!r}")
  return slots, refill_every, progress


def stream(
  plan: Plan,
  predict,
  images,
  labels,
  *,
  key,
  targets,
  image_ids,
  mesh,
  slots: int,
  refill_every: int,
  progress,
):
  """Runs ``plan`` through ``slots`` slots; see ``stream_attack``.

  Checks every argument at once; the returned generator does the work.
  """
  mesh = _mesh(mesh)
  slots = -(-slots // mesh.size) * mesh.size
  inputs = check_inputs(
    plan,
    predict,
    images,
    labels,
    key=key,
    targets=targets,
    image_ids=image_ids,
    per_device=slots // mesh.size,
  )
  return _stream(plan, inputs, mesh, slots, refill_every, progress)


def _stream(plan, inputs, mesh, slots, refill_every, progress):
  static = (plan.search, inputs.problem)
  replicated = (inputs.key, plan.params)
  options = _options(inputs.problem)
  count = len(inputs.images)
  sources = (inputs.images, inputs.labels, inputs.targets, inputs.image_ids)
  # Host copy of what each slot holds; -1 marks an empty slot.
  held = np.full(slots, -1)
  slot_data = [np.zeros((slots, *a.shape[1:]), a.dtype) for a in sources]
  state = clean = None
  next_image = 0
  spent = 0  # evaluations of the images already handed out
  while True:
    refill = np.flatnonzero(held < 0)[: count - next_image]
    if refill.size:
      new = np.arange(next_image, next_image + refill.size)
      next_image += refill.size
      held[refill] = new
      for slot_array, source in zip(slot_data, sources):
        slot_array[refill] = source[new]
    if not np.any(held >= 0):
      return
    placed, _ = sharding.place(mesh, *slot_data)
    valid = sharding.place(mesh, held >= 0)[0][0]
    if refill.size:
      mask = np.zeros(slots, bool)
      mask[refill] = True
      if state is None:
        state = sharding.run_sharded(
          mesh, _init_shard, static, (*placed, valid), replicated, options
        )
      else:
        state = sharding.run_sharded(
          mesh,
          _refill_shard,
          static,
          (state, sharding.place(mesh, mask)[0][0], *placed),
          replicated,
          options,
        )
      clean = sharding.run_sharded(
        mesh, _clean_shard, (inputs.problem.predict,), placed[:1], ()
      )
      checks.check_finite_logits(
        np.asarray(sharding.gather(clean))[refill], first_index=int(new[0])
      )
    state = sharding.run_sharded(
      mesh,
      _advance_shard,
      static,
      (state, *placed, valid),
      replicated + (refill_every,),
      options,
    )
    done = np.asarray(sharding.gather(state.incumbent.done))
    finished = np.flatnonzero(done & (held >= 0))
    if progress is not None:
      queries = np.asarray(sharding.gather(state.incumbent.queries), np.int64)
      progress(spent + int(queries[held >= 0].sum()))
      spent += int(queries[finished].sum())
    if finished.size:
      fields = sharding.gather(
        sharding.run_sharded(
          mesh,
          _finish_shard,
          static,
          (state, *placed, valid, clean),
          replicated,
          options,
        )
      )
      yield (
        held[finished].copy(),
        AttackResult(
          **{name: value[finished] for name, value in fields.items()}
        ),
      )
      held[finished] = -1
