"""Continuous batching: a fixed set of slots, refilled as images finish.

A long stream of images is attacked through ``slots`` image slots. Every
``refill_every`` rounds the host looks at which slots are done, hands their
results out, and loads the next images into them, so the device never works
for finished images and never waits for the slowest image of a batch. Each
image keeps its own random stream (``fold_in(key, image_id)``) and its own
round count, so its result is exactly what ``batched_attack`` gives it.
"""

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax.attack import checks
from pixeljax.attack import engine
from pixeljax.attack import pixels as pixels_lib
from pixeljax.attack import sharding
from pixeljax.attack.result import AttackResult


def _advance_shard(
  config,
  state,
  images,
  labels,
  targets,
  image_ids,
  key,
  maxiter,
  mutation,
  crossover,
  rounds,
):
  return engine.run_rounds(
    config,
    state,
    images,
    labels,
    targets,
    engine.image_keys_for(key, image_ids),
    maxiter,
    mutation,
    crossover,
    max_rounds=rounds,
  )


def _reset_shard(popsize, length, state, refill):
  """Fresh search state in the slots where ``refill`` (bool [S]) is set."""
  fresh = engine.initial_state(refill.shape[0], popsize, length)

  def pick(new, old):
    return jnp.where(refill.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

  return jax.tree.map(pick, fresh, state)


def stream_attack(
  predict,
  images,
  labels,
  *,
  key,
  targets=None,
  slots=64,
  refill_every=5,
  pixels=1,
  popsize=400,
  maxiter=100,
  mutation=0.5,
  crossover=None,
  early_stop=True,
  batch_size=None,
  image_ids=None,
  mesh=None,
  progress=None,
) -> Iterator[tuple[np.ndarray, AttackResult]]:
  """Attacks images through ``slots`` slots, yielding results as they finish.

  Arguments are those of ``batched_attack``, plus:
    slots: images in flight at once (rounded up to a multiple of the devices).
    refill_every: rounds between looks at the slots (a host round trip each).
    progress: None, or a function called at every host round trip (also
      when no image finished) with one int: the model evaluations spent so
      far on this stream's images, finished and in flight. It is called
      before the round's results are yielded; at the end it is the sum of
      every result's ``queries``. The results do not depend on it.

  Yields:
    (indices int [n], AttackResult of n images): positions in ``images`` of
    the images that finished since the last yield, and their results, the
    same as ``batched_attack`` with the same key and ids would give them.
  """
  mesh = sharding.default_mesh() if mesh is None else sharding.check_mesh(mesh)
  slots = checks.check_int("slots", slots, minimum=1)
  slots = -(-slots // mesh.size) * mesh.size
  refill_every = checks.check_int("refill_every", refill_every, minimum=1)
  if progress is not None and not callable(progress):
    raise TypeError(f"progress must be callable or None, got {progress!r}")
  prepared = engine.prepare(
    predict,
    images,
    labels,
    key=key,
    targets=targets,
    pixels=pixels,
    popsize=popsize,
    maxiter=maxiter,
    mutation=mutation,
    crossover=crossover,
    early_stop=early_stop,
    batch_size=batch_size,
    image_ids=image_ids,
    images_per_device=slots // mesh.size,
  )
  return _run(mesh, slots, refill_every, prepared, progress)


def _run(mesh, slots, refill_every, prepared, progress):
  config = prepared.config
  count = len(prepared.images)
  length = pixels_lib.candidate_length(config.pixels, prepared.images.shape[-1])
  sources = (
    prepared.images,
    prepared.labels,
    prepared.targets,
    prepared.image_ids,
  )
  # Host copy of what each slot holds; -1 marks an empty slot.
  held = np.full(slots, -1)
  slot_data = [np.zeros((slots, *a.shape[1:]), a.dtype) for a in sources]
  state = engine.initial_state(
    slots, config.popsize, length, done=jnp.ones(slots, bool)
  )
  state = jax.tree.map(
    lambda a: sharding.place(mesh, np.asarray(a))[0][0], state
  )
  replicated = (
    prepared.key,
    prepared.maxiter,
    prepared.mutation,
    prepared.crossover,
  )
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
    if refill.size:
      mask = np.zeros(slots, bool)
      mask[refill] = True
      state = sharding.run_sharded(
        mesh,
        _reset_shard,
        (config.popsize, length),
        (state, sharding.place(mesh, mask)[0][0]),
        (),
      )
      logits = sharding.gather(
        sharding.run_sharded(
          mesh, engine.clean_logits_shard, (config.predict,), placed[:1], ()
        )
      )[refill]
      checks.check_finite_logits(logits, first_index=int(new[0]))
    state = sharding.run_sharded(
      mesh,
      _advance_shard,
      (config,),
      (state, *placed),
      replicated + (refill_every,),
    )
    done = np.asarray(sharding.gather(state.done))
    finished = np.flatnonzero(done & (held >= 0))
    if progress is not None:
      queries = np.asarray(sharding.gather(state.queries), np.int64)
      progress(spent + int(queries[held >= 0].sum()))
      spent += int(queries[finished].sum())
    if finished.size:
      fields = sharding.gather(
        sharding.run_sharded(
          mesh, engine.finalize, (config,), (state, *placed[:3]), ()
        )
      )
      yield (
        held[finished].copy(),
        AttackResult(
          **{name: value[finished] for name, value in fields.items()}
        ),
      )
      held[finished] = -1
