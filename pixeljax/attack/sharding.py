"""The image axis over devices, with JAX's own sharding: no scheduler here.

Every attack function in this package works on one device's share of the
images and needs nothing from the others, so ``shard_map`` runs it on every
device of a ``Mesh`` at once: one CPU, several GPUs, or a TPU pod or GPU
cluster after ``jax.distributed.initialize()`` (each host passes the same
full arrays; each device takes its rows).
"""

import functools

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

AXIS = "images"


def default_mesh() -> Mesh:
  """A one-axis mesh over every device JAX sees, on every host."""
  return Mesh(np.array(jax.devices()), (AXIS,))


def check_mesh(mesh) -> Mesh:
  """Returns ``mesh`` if it is a ``Mesh`` with at least one device."""
  if not isinstance(mesh, Mesh):
    raise TypeError(
      f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}"
    )
  if mesh.size == 0:
    raise ValueError(
      f"mesh must hold at least one device, got a mesh of "
      f"shape {dict(mesh.shape)}"
    )
  return mesh


def _rows(mesh: Mesh) -> PartitionSpec:
  """Leading axis split over all of the mesh's axes."""
  return PartitionSpec(mesh.axis_names)


def place(mesh: Mesh, *arrays):
  """Pads host arrays to a multiple of the device count and shards them.

  Args:
    mesh: the devices.
    *arrays: NumPy arrays sharing their leading length N.

  Returns:
    (the arrays as global jax.Arrays of length N', bool [N'] valid rows),
    with N' the next multiple of ``mesh.size``; padded rows are zeros.
  """
  count = len(arrays[0])
  padded = -(-count // mesh.size) * mesh.size
  sharding = NamedSharding(mesh, _rows(mesh))

  def to_global(array):
    array = np.asarray(array)
    array = np.pad(array, [(0, padded - count)] + [(0, 0)] * (array.ndim - 1))
    return jax.make_array_from_callback(
      array.shape, sharding, lambda index: array[index]
    )

  return (tuple(to_global(a) for a in arrays), to_global(np.ones(count, bool)))


@functools.lru_cache(maxsize=64)
def _compiled(
  mesh: Mesh,
  function,
  static: tuple,
  sharded: int,
  replicated: int,
  options: tuple,
):
  rows, everything = _rows(mesh), PartitionSpec()
  mapped = jax.shard_map(
    functools.partial(function, *static),
    mesh=mesh,
    in_specs=(rows,) * sharded + (everything,) * replicated,
    out_specs=rows,
    check_vma=False,
  )
  return jax.jit(mapped, compiler_options=dict(options) or None)


def run_sharded(
  mesh: Mesh,
  function,
  static: tuple,
  sharded: tuple,
  replicated: tuple,
  options: tuple = (),
):
  """Runs ``function(*static, *sharded, *replicated)`` on every device.

  ``function`` is a module-level function and ``static`` hashable, so the
  compiled program is cached across calls. Sharded arguments and every output
  are split along their leading axis; replicated ones are whole on each
  device. ``options``: XLA compiler options of this program, (name, value)
  pairs (``xla_options.attack_program_options``).
  """
  compiled = _compiled(
    mesh, function, static, len(sharded), len(replicated), options
  )
  return compiled(*sharded, *replicated)


def gather(tree):
  """Brings sharded outputs to every host as NumPy arrays."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
