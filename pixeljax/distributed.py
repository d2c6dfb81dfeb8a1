"""Several processes, one attack: JAX's own multi-controller runtime.

Every process (one per host, or per GPU) runs the same program on the same
full arrays after ``initialize()``; the default mesh then spans every device
of every process, each device attacks its rows, and every process gets the
full results back. Only the main process should write files.
"""

import os
import sys
import threading

import jax
from jax.experimental import multihost_utils

from pixeljax import errors

# JAX's own wait for the processes to join (jax.distributed.initialize).
TIMEOUT_S = 300


def initialize(
  coordinator=None, num_processes=None, process_id=None, *, timeout=TIMEOUT_S
):
  """Joins this process to the others (``jax.distributed.initialize``).

  Call it first, before anything touches a device. With no arguments JAX
  finds the processes itself on SLURM, TPU pods and other clusters it knows;
  on one machine, or elsewhere, give all three. Says on stderr what it waits
  for. JAX ends a process that waits too long with a fatal error and a stack
  trace; after `timeout` seconds this ends it first, with exit code 3 and a
  message naming what did not come.

  Args:
    coordinator: "host:port" of process 0's coordination service.
    num_processes: how many processes take part.
    process_id: this process's index, 0..num_processes-1.
    timeout: seconds to wait for every process to join.
  """
  given = (coordinator, num_processes, process_id)
  if any(v is not None for v in given) and any(v is None for v in given):
    raise ValueError(
      "coordinator, num_processes and process_id go together: give all "
      f"three or none, got coordinator={coordinator!r}, "
      f"num_processes={num_processes!r}, process_id={process_id!r}"
    )
  if coordinator is not None:
    check_coordinator(coordinator)
    if not 0 <= process_id < num_processes:
      raise ValueError(
        f"process_id: expected 0..{num_processes - 1} for {num_processes} "
        f"processes, got {process_id}"
      )
  if not timeout > 0:
    raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
  waiting_for = _waiting_for(coordinator, num_processes, process_id)
  print(f"{waiting_for} (gives up after {timeout:g} s)", file=sys.stderr)
  watchdog = threading.Timer(timeout, _give_up, (waiting_for, timeout))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=num_processes,
      process_id=process_id,
      # Past ours, so that ours speaks first.
      initialization_timeout=int(timeout) + 60,
    )
  finally:
    watchdog.cancel()


def check_coordinator(coordinator: str) -> str:
  """`coordinator` if it reads "host:port" (port 1..65535), else ValueError."""
  host, _, port = str(coordinator).rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(
      f"coordinator: expected HOST:PORT (a port 1..65535), got {coordinator!r}"
    )
  return coordinator


def _waiting_for(coordinator, num_processes, process_id) -> str:
  if coordinator is None:
    return "Joining the processes that JAX finds in this cluster's environment"
  if process_id == 0:
    return (
      f"Process 0 of {num_processes}: serving {coordinator}, waiting for "
      f"the other {num_processes - 1} to join"
    )
  return (
    f"Process {process_id} of {num_processes}: joining the coordinator "
    f"{coordinator} (process 0) and the others"
  )


def _give_up(waiting_for: str, timeout: float) -> None:
  # A blocked jax.distributed.initialize cannot be interrupted: end the
  # process from this thread, as JAX itself would, but with a message.
  print(
    f"error: --distributed: gave up after {timeout:g} s. {waiting_for}, "
    "but not all of them came: start the same command in every process "
    "(process 0 first), check the coordinator's address and port, or wait "
    "longer (--distributed-timeout, timeout=).",
    file=sys.stderr,
    flush=True,
  )
  os._exit(errors.EXIT_INPUT)


def is_main_process() -> bool:
  """True in process 0, the one that writes files (always, single-process)."""
  return jax.process_index() == 0


def broadcast(tree):
  """Process 0's value of ``tree`` (NumPy arrays) in every process: for what
  only the main process reads, such as which results a run already has."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.broadcast_one_to_all(tree)
