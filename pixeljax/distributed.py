"""Several processes, one attack: JAX's own multi-controller runtime.

Every process (one per host, or per GPU) runs the same program on the same
full arrays after ``initialize()``; the default mesh then spans every device
of every process, each device attacks its rows, and every process gets the
full results back. Only the main process should write files.
"""

import jax
from jax.experimental import multihost_utils


def initialize(coordinator=None, num_processes=None, process_id=None):
  """Joins this process to the others (``jax.distributed.initialize``).

  Call it first, before anything touches a device. With no arguments JAX
  finds the processes itself on SLURM, TPU pods and other clusters it knows;
  on one machine, or elsewhere, give all three.

  Args:
    coordinator: "host:port" of process 0's coordination service.
    num_processes: how many processes take part.
    process_id: this process's index, 0..num_processes-1.
  """
  given = (coordinator, num_processes, process_id)
  if any(v is not None for v in given) and any(v is None for v in given):
    raise ValueError(
      "coordinator, num_processes and process_id go together: give all "
      f"three or none, got coordinator={coordinator!r}, "
      f"num_processes={num_processes!r}, process_id={process_id!r}"
    )
  jax.distributed.initialize(
    coordinator_address=coordinator,
    num_processes=num_processes,
    process_id=process_id,
  )


def is_main_process() -> bool:
  """True in process 0, the one that writes files (always, single-process)."""
  return jax.process_index() == 0


def broadcast(tree):
  """Process 0's value of ``tree`` (NumPy arrays) in every process: for what
  only the main process reads, such as which results a run already has."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.broadcast_one_to_all(tree)
