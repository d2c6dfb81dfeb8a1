"""benchmarks/paper_table.py end to end, in subprocesses, on tiny settings.

The victim is the shipped SmallCNN, the images come from the packaged sample
(PIXELJAX_DATA unset, downloads off), and compiled attacks are cached in a
temporary PIXELJAX_CACHE. The numbers of the table must be those of the run
folders' results.jsonl, and a rerun must redo nothing.
"""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import common
from benchmarks import paper_table
from pixeljax import runs
from pixeljax.models import weights

TINY = [
  "--images",
  "2",
  "--popsize",
  "8",
  "--maxiter",
  "2",
  "--pixels",
  "1",
  "--targeted-pixels",
  "1",
  "--no-download",
  "--quiet",
]

pytestmark = pytest.mark.skipif(
  "smallcnn" not in weights.shipped_models(),
  reason="the shipped SmallCNN is missing",
)


def paper(*args, env, out):
  """Runs the script into ``out``/runs and ``out``/results."""
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "benchmarks.paper_table",
      *map(str, args),
      "--out-dir",
      out / "runs",
      "--results-dir",
      out / "results",
    ],
    cwd=common.REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def read_records(run_dir):
  text = (pathlib.Path(run_dir) / "results.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def table(tmp_path_factory, env):
  """A finished tiny table: (folder, payload)."""
  out = tmp_path_factory.mktemp("paper")
  done = paper("--models", "smallcnn", *TINY, env=env, out=out)
  assert done.returncode == 0, done.stderr
  payload = json.loads((out / "results" / "paper_table.json").read_text())
  return out, payload


def test_one_run_folder_per_model_mode_and_pixels(table):
  out, payload = table
  assert [(e["model"], e["mode"], e["pixels"]) for e in payload["runs"]] == [
    ("smallcnn", "non-targeted", 1),
    ("smallcnn", "targeted", 1),
  ]
  assert sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) == [
    "smallcnn_targeted_1px",
    "smallcnn_untargeted_1px",
  ]
  assert payload["settings"]["popsize"] == 8
  assert "images 2 (paper: 500)" in payload["not_the_protocol"]


def test_numbers_are_those_of_the_records(table):
  _, payload = table
  for entry in payload["runs"]:
    records = read_records(entry["run_dir"])
    success = np.array([r["success"] for r in records])
    summary = entry["summary"]
    assert summary["attacks"] == len(records)
    assert summary["successes"] == success.sum()
    assert summary["success_rate"] == pytest.approx(success.mean())
    confidence = [r["adv_prob"] for r in records if r["success"]]
    assert summary["mean_confidence"] == (
      pytest.approx(np.mean(confidence)) if confidence else None
    )
    assert {r["pixels"] for r in records} == {entry["pixels"]}
    low, high = entry["success_rate_wilson95"]
    assert low <= summary["success_rate"] <= high
    assert 0 < high - low < 1


def test_a_partial_run_shows_a_lower_bound_not_a_rate():
  entry = dict(
    complete=False,
    expected_attacks=100,
    summary=dict(successes=12, attacks=12, success_rate=1.0),
  )
  assert paper_table._success_cell(entry) == "at least 12.0% (12 of 12 done)"
  entry.update(complete=True, success_rate_wilson95=[0.109, 0.256])
  entry["summary"].update(attacks=100, success_rate=0.17)
  assert paper_table._success_cell(entry) == "17.0% (10.9%-25.6%)"


def test_targeted_counts_every_other_class(table):
  _, payload = table
  entry = payload["runs"][1]
  records = read_records(entry["run_dir"])
  assert len(records) == 2 * 9
  reached = {}
  for image in {r["image"] for r in records}:
    mine = [r for r in records if r["image"] == image]
    assert sorted(r["target"] for r in mine) == sorted(
      set(range(10)) - {mine[0]["label"]}
    )
    reached[image] = sum(r["success"] for r in mine)
  expected = np.bincount(list(reached.values()), minlength=10)
  assert entry["targets_reached"] == expected.tolist()
  assert entry["incomplete_images"] == 0
  successes = np.array(entry["pair_successes"])
  attempts = np.array(entry["pair_attempts"])
  assert attempts.sum() == 18 and successes.sum() == sum(
    r["success"] for r in records
  )
  assert not np.diag(attempts).any()


def test_markdown_and_figures(table):
  out, payload = table
  results = out / "results"
  text = (results / "paper_table.md").read_text()
  assert "**Not the paper's protocol**" in text
  assert "(a smoke run: not the paper's search)" in text.splitlines()[0]
  assert "packaged CIFAR-10 test sample" in text
  assert "| smallcnn | non-targeted | 1 | 2 |" in text
  assert "| smallcnn | targeted | 1 | 18 |" in text
  assert "1710.08864" in text and "68.71%" in text
  for name in (
    "heatmap_smallcnn_1px",
    "success_vs_pixels_smallcnn",
    "figure1_smallcnn",
    "targets_reached",
  ):
    assert (results / f"paper_table_{name}.png").stat().st_size > 0
  assert payload["wall_time"]["attacks"] == 20


def test_rerun_redoes_nothing(table, env):
  out, payload = table
  before = {e["run_dir"]: read_records(e["run_dir"]) for e in payload["runs"]}
  done = paper("--models", "smallcnn", *TINY, env=env, out=out)
  assert done.returncode == 0, done.stderr
  assert "0 new attacks this session" in done.stdout
  for run_dir, records in before.items():
    assert read_records(run_dir) == records
  sessions = (out / "runs" / paper_table.SESSIONS_FILE).read_text()
  assert [json.loads(s)["new_attacks"] for s in sessions.splitlines()] == [
    20,
    0,
  ]
  again = json.loads((out / "results" / "paper_table.json").read_text())
  assert again["runs"] == payload["runs"]
  assert again["wall_time"]["sessions"] == 2


def test_model_without_weights_fails_clearly(tmp_path, monkeypatch, capsys):
  # As on a checkout where NiN does not ship.
  monkeypatch.setattr(
    paper_table.weights_lib, "shipped_models", lambda: ["smallcnn"]
  )
  argv = ["--models", "nin", *TINY, "--out-dir", str(tmp_path / "runs")]
  assert paper_table.main(argv + ["--results-dir", str(tmp_path)]) == 3
  assert "pixeljax train --model nin" in capsys.readouterr().err
  assert not (tmp_path / "runs").exists()


def test_a_victim_without_weights_keeps_its_earlier_rows(
  table, tmp_path, monkeypatch
):
  """As on a machine where NiN's weights are missing (not trained yet, or
  left behind) but its run folders came along: its rows stay in the table,
  and nothing runs for it."""
  out, _ = table
  runs = tmp_path / "runs"
  shutil.copytree(out / "runs", runs)
  shutil.copytree(runs / "smallcnn_untargeted_1px", runs / "nin_untargeted_1px")
  monkeypatch.setattr(
    paper_table.weights_lib, "shipped_models", lambda: ["smallcnn"]
  )
  monkeypatch.delenv("PIXELJAX_DATA", raising=False)
  monkeypatch.setenv("PIXELJAX_CACHE", str(tmp_path / "cache"))
  argv = ["--models", "smallcnn", "nin", *TINY, "--out-dir", str(runs)]
  assert paper_table.main(argv + ["--results-dir", str(tmp_path)]) == 0
  payload = json.loads((tmp_path / "paper_table.json").read_text())
  assert payload["shown_from_earlier_sessions"] == ["nin"]
  assert {(e["model"], e["mode"]) for e in payload["runs"]} == {
    ("smallcnn", "non-targeted"),
    ("smallcnn", "targeted"),
    ("nin", "non-targeted"),
  }
  assert read_records(runs / "nin_untargeted_1px") == read_records(
    out / "runs" / "smallcnn_untargeted_1px"
  )
  assert "nin" in (tmp_path / "paper_table.md").read_text()


def test_killed_run_logs_its_session_and_resumes(env, tmp_path):
  args = [
    "--models",
    "smallcnn",
    "--images",
    "3",
    "--popsize",
    "8",
    "--maxiter",
    "300",
    "--pixels",
    "1",
    "--targeted-pixels",
    "--slots",
    "1",
    "--no-download",
    "--quiet",
  ]
  command = [
    sys.executable,
    "-m",
    "benchmarks.paper_table",
    *args,
    "--out-dir",
    tmp_path / "runs",
    "--results-dir",
    tmp_path / "results",
  ]
  run = tmp_path / "runs" / "smallcnn_untargeted_1px"
  process = subprocess.Popen(
    command,
    cwd=common.REPO_ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  while not (run / "run.json").exists():  # images chosen: attacking now
    assert process.poll() is None, process.stderr.read()
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=120) == 130
  sessions = (tmp_path / "runs" / paper_table.SESSIONS_FILE).read_text()
  assert len(sessions.splitlines()) == 1
  killed = json.loads((tmp_path / "results" / "paper_table.json").read_text())
  assert not killed["runs"][0]["complete"]
  assert "(partial)" in (tmp_path / "results" / "paper_table.md").read_text()

  done = paper(*args, env=env, out=tmp_path)
  assert done.returncode == 0, done.stderr
  records = read_records(run)
  assert (
    sorted(r["image"] for r in records) == sorted({r["image"] for r in records})
    and len(records) == 3
  )
  payload = json.loads((tmp_path / "results" / "paper_table.json").read_text())
  assert payload["runs"][0]["complete"]
  assert payload["wall_time"]["sessions"] == 2


def test_plan_puts_the_one_pixel_runs_first_and_targeted_last():
  plan = paper_table.make_plan(["allconv", "vgg16"], [3, 1], [1])
  assert plan == [
    ("allconv", False, 1),
    ("vgg16", False, 1),
    ("allconv", False, 3),
    ("vgg16", False, 3),
    ("allconv", True, 1),
    ("vgg16", True, 1),
  ]


def test_weights_dir_cards_win_over_shipped_weights(tmp_path):
  assert paper_table.find_weights("smallcnn", tmp_path) is None
  assert paper_table.find_weights("smallcnn", None) is None
  assert paper_table.find_weights("no-such-model", tmp_path) == ""
  (tmp_path / "smallcnn.json").write_text("{}")
  assert paper_table.find_weights("smallcnn", tmp_path) == str(
    tmp_path / "smallcnn.json"
  )


def test_targeted_attacks_take_the_first_images(tmp_path, env):
  """--targeted-images N: the targeted attacks take the first N of the
  images the non-targeted ones attack (the issue's 10 x 9 targets)."""
  done = paper(
    "--models", "smallcnn", *TINY, "--targeted-images", "1", env=env,
    out=tmp_path,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr
  payload = json.loads((tmp_path / "results" / "paper_table.json").read_text())
  untargeted, targeted = payload["runs"]
  assert (untargeted["images"], targeted["images"]) == (2, 1)
  chosen = runs.RunStore.existing(untargeted["run_dir"]).images()["index"]
  first = int(chosen[0])
  records = read_records(targeted["run_dir"])
  assert len(records) == 9 and {r["image"] for r in records} == {first}
  assert (
    "targeted attacks on 1 images (paper: 500)" in (payload["not_the_protocol"])
  )
  # The images line describes the larger, non-targeted selection.
  text = (tmp_path / "results" / "paper_table.md").read_text()
  looked = untargeted["looked"]
  assert f"Images attacked: smallcnn 2 (skipped {looked - 2} " in text


def test_more_targeted_images_than_images_is_refused(tmp_path, env):
  done = paper(
    "--models", "smallcnn", *TINY, "--targeted-images", "3", env=env,
    out=tmp_path,
  )  # fmt: skip
  assert done.returncode == 2
  assert "--targeted-images: expected 1..2 (--images), got 3" in done.stderr
