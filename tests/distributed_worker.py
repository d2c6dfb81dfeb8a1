"""One of the processes of tests/test_distributed.py.

  python -m tests.distributed_worker PROCESS_ID NUM_PROCESSES PORT REPORT

Joins the others on localhost, runs every search over the mesh of all their
devices (the default), and compares each result with the stored
single-process one of tests/test_regression.py. Process 0 writes the
comparison as JSON to REPORT.
"""

import json
import pathlib
import sys

from pixeljax import distributed


def main(process_id, num_processes, port, report):
  distributed.initialize(f"localhost:{port}", num_processes, process_id)
  import jax
  import numpy as np

  from tests import test_regression as regression

  stored = np.load(regression.STORED)
  runs = {name: regression.run_case(name) for name in DIRECT}
  runs.update(
    {
      f"{name} streamed": regression.stream_case(name, slots=6, refill_every=2)
      for name in STREAMED
    }
  )
  same = {}
  for run, result in runs.items():
    name = run.split()[0]
    for field in regression.STORED_FIELDS:
      same[f"{run} {field}"] = regression.same_field(
        field, getattr(result, field), stored[f"{name}/{field}"]
      )
  if distributed.is_main_process():
    pathlib.Path(report).write_text(
      json.dumps(
        dict(
          devices=jax.device_count(),
          processes=jax.process_count(),
          same=same,
        )
      )
    )


# One case of every search, run directly, and one streamed.
DIRECT = (
  "de_1px",
  "corner",
  "corner_search_2px",
  "sparse_rs_3px_targeted",
  "seeded_3px_targeted",
)
STREAMED = ("de_3px_targeted_crossover_no_early_stop",)

if __name__ == "__main__":
  process_id, num_processes, port = map(int, sys.argv[1:4])
  main(process_id, num_processes, port, sys.argv[4])
