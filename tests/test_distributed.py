"""Two processes x 2 CPU devices on localhost, joined by jax.distributed
(gloo collectives), give every search's single-process results."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import pytest

from pixeljax import distributed
from tests import distributed_worker

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_single_process_results(tmp_path):
  port, report = _free_port(), tmp_path / "report.json"
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
  )
  workers = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "tests.distributed_worker",
        str(i),
        "2",
        str(port),
        str(report),
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outputs = [w.communicate(timeout=400)[0] for w in workers]
  finally:
    for w in workers:
      w.kill()
  for w, output in zip(workers, outputs):
    assert w.returncode == 0, output[-3000:]
  found = json.loads(report.read_text())
  assert (found["processes"], found["devices"]) == (2, 4)
  runs = distributed_worker.DIRECT + distributed_worker.STREAMED
  assert len(found["same"]) == len(runs) * 11
  differ = [run for run, same in found["same"].items() if not same]
  assert not differ, differ


def test_the_command_line_runs_as_two_processes_and_one_writes(tmp_path, env):
  """`pixeljax attack --distributed` in 2 processes: process 0 writes the
  run folder, with the records a single process writes."""
  from tests.test_cli import comparable
  from tests.test_cli import read_records

  args = ["attack", "--model", "smallcnn", "--images", "3", "--pixels", "1"]
  args += ["--popsize", "8", "--maxiter", "2", "--no-examples", "--quiet"]
  args += ["--no-figures"]
  single = subprocess.run(
    [sys.executable, "-m", "pixeljax.cli", *args, "--out", tmp_path / "one"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  port = _free_port()
  workers = [
    subprocess.Popen(
      [sys.executable, "-m", "pixeljax.cli", *args]
      + ["--out", tmp_path / "two", "--distributed"]
      + ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
      + ["--process-id", str(i)],
      cwd=ROOT,
      env=dict(
        env,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
      ),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outputs = [w.communicate(timeout=400) for w in workers]
  finally:
    for w in workers:
      w.kill()
  for w, (_, err) in zip(workers, outputs):
    assert w.returncode == 0, err[-3000:]
  # Only process 0 prints the table (gloo prints its own lines in both).
  assert "attacks/s" in outputs[0][0] and "attacks/s" not in outputs[1][0]
  assert comparable(read_records(tmp_path / "two")) == comparable(
    read_records(tmp_path / "one")
  )


def test_initialize_wants_all_three_settings_or_none():
  with pytest.raises(ValueError, match="give all three or none"):
    distributed.initialize("localhost:1234")
  with pytest.raises(ValueError, match="expected HOST:PORT"):
    distributed.initialize("localhost", 2, 0)
  with pytest.raises(ValueError, match="process_id: expected 0..1"):
    distributed.initialize("localhost:1234", 2, 2)
  with pytest.raises(ValueError, match="timeout: expected seconds > 0"):
    distributed.initialize("localhost:1234", 2, 0, timeout=0)


@pytest.mark.parametrize("process_id", [0, 1])
def test_a_process_left_alone_gives_up_saying_what_it_waited_for(
  process_id, tmp_path
):
  """Process 0 with no peer, or process 1 with no coordinator: a message
  first, then exit 3 after --distributed-timeout, nothing written."""
  coordinator = f"127.0.0.1:{_free_port()}"
  done = subprocess.run(
    [
      *(sys.executable, "-m", "pixeljax.cli", "attack", "--distributed"),
      *("--coordinator", coordinator, "--num-processes", "2"),
      *("--process-id", str(process_id), "--distributed-timeout", "2"),
      *("--out", str(tmp_path / "run")),
    ],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 3, done.stderr[-2000:]
  assert f"Process {process_id} of 2" in done.stderr
  assert coordinator in done.stderr
  assert "gave up after 2 s" in done.stderr
  assert not (tmp_path / "run").exists()


def test_single_process_is_main_and_broadcast_returns_its_value():
  assert jax.process_count() == 1
  assert distributed.is_main_process()
  value = {"done": [1, 2]}
  assert distributed.broadcast(value) is value
