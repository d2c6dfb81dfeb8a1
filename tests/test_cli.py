"""The `pixeljax` command end to end, in subprocesses, on tiny settings.

The victim is the shipped SmallCNN when it is there, else a SmallCNN with
random weights saved to a temporary card (it fools nothing, but every code
path runs). Images come from the packaged sample: PIXELJAX_DATA is unset and
downloads are off. Compiled attacks are cached in a temporary PIXELJAX_CACHE
shared by the whole module, so later runs with the same shapes start fast.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

# 6 images x 2 pixel counts, 4 in flight at once: slow enough that a run can
# be killed half-way.
TINY = ["--images", "6", "--pixels", "1", "3", "--popsize", "12",
        "--maxiter", "40", "--slots", "4", "--no-download", "--quiet"]
FIELDS = {"image", "label", "target", "pixels", "success", "adv_label",
          "adv_prob", "true_prob", "perturbation", "queries", "generations",
          "seconds"}


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
  """The options that name the victim."""
  from pixeljax.models import weights
  if "smallcnn" in weights.shipped_models():
    return ["--model", "smallcnn"]
  from flax import nnx
  from pixeljax.models import registry
  model = registry.create_model("smallcnn", rngs=nnx.Rngs(0))
  card = weights.save_weights(model, tmp_path_factory.mktemp("weights"),
                              "random", architecture="smallcnn")
  return ["--weights", str(card)]


def pixeljax(*args, env):
  """Runs `python -m pixeljax.cli ARGS`; returns the CompletedProcess."""
  return subprocess.run([sys.executable, "-m", "pixeljax.cli", *map(str, args)],
                        env=env, capture_output=True, text=True, timeout=300)


def read_records(folder):
  lines = (pathlib.Path(folder) / "results.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def comparable(records):
  """Records keyed by attack, without the wall time."""
  return {(r["pixels"], r["image"], r["target"]):
          {k: v for k, v in r.items() if k != "seconds"} for r in records}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env, victim):
  """An uninterrupted run: (folder, CompletedProcess)."""
  out = tmp_path_factory.mktemp("runs") / "straight"
  done = pixeljax("attack", *victim, *TINY, "--out", out,
                  env=env)
  assert done.returncode == 0, done.stderr
  return out, done


def test_attack_writes_results_images_and_summary(straight):
  out, done = straight
  assert "packaged sample" in done.stderr
  assert "skipped" in done.stderr
  assert "success rate" in done.stdout and "images/s" in done.stdout
  records = read_records(out)
  assert len(records) == 12 and len(comparable(records)) == 12
  saved = np.load(out / "images.npz")
  for r in records:
    assert set(r) == FIELDS
    assert r["target"] is None
    assert len(r["perturbation"]) == r["pixels"]
    assert r["success"] == (r["adv_label"] != r["label"])
    assert r["queries"] == 12 * (r["generations"] + 1)
    png = out / "examples" / f"{r['pixels']}px" / f"{r['image']:05d}.png"
    assert Image.open(png).format == "PNG"
  # Only images the model got right were attacked.
  assert sorted({r["image"] for r in records}) == sorted(saved["index"])
  assert np.all(saved["clean_prob"] > 1.0 / 10)
  summary = json.loads((out / "summary.json").read_text())
  assert [row["pixels"] for row in summary["rows"]] == [1, 3]
  assert all(row["attacks"] == 6 for row in summary["rows"])
  for name in ("grid_1px", "class_pairs_3px", "success_vs_pixels"):
    assert (out / "figures" / f"{name}.png").is_file()


def test_resume_after_kill_loses_and_repeats_nothing(straight, env, victim,
                                                     tmp_path):
  out = tmp_path / "killed"
  command = [sys.executable, "-m", "pixeljax.cli", "attack", *victim, *TINY,
             "--out", str(out)]

  def start_and_stop(sig, lines_before):
    """Starts the run and sends ``sig`` once a new record is on disk."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
      if results.exists() and results.read_bytes().count(b"\n") > lines_before:
        break
      time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr

  code, _ = start_and_stop(signal.SIGKILL, 0)
  assert code == -signal.SIGKILL
  lines = len(read_records(out))
  assert 1 <= lines < 12, "the run ended before the kill: make it slower"
  # A kill in the middle of a write leaves a line without its newline.
  with open(out / "results.jsonl", "a") as f:
    f.write('{"image": 3, "label": 1, "tar')

  code, stderr = start_and_stop(signal.SIGINT, lines)
  assert code == 130, stderr
  assert "rerun" in stderr and "Traceback" not in stderr

  done = pixeljax("attack", *victim, *TINY, "--out", out,
                  env=env)
  assert done.returncode == 0, done.stderr
  assert "Resuming" in done.stderr
  records = read_records(out)
  assert len(records) == 12 == len(comparable(records))
  # Interrupted twice, with other attacks in flight beside it, every attack
  # found what the straight run found.
  expected = comparable(read_records(straight[0]))
  for key, record in comparable(records).items():
    for field in ("adv_prob", "true_prob"):
      assert record.pop(field) == pytest.approx(expected[key].pop(field),
                                                rel=1e-5)
    assert record == expected[key]


def test_figures_redraws_from_saved_results(straight, env):
  out, _ = straight
  for png in (out / "figures").iterdir():
    png.unlink()
  done = pixeljax("figures", out, env=env)
  assert done.returncode == 0, done.stderr
  paths = [pathlib.Path(p) for p in done.stdout.split()]
  assert {p.name for p in paths} == {
      "grid_1px.png", "grid_3px.png", "class_pairs_1px.png",
      "class_pairs_3px.png", "success_vs_pixels.png"}
  for path in paths:
    with Image.open(path) as image:
      assert image.format == "PNG" and min(image.size) > 100


def test_own_image_folder(env, victim, tmp_path):
  from pixeljax import data
  sample = data.load_cifar10_sample()
  for i in np.flatnonzero(np.isin(sample.labels, [7, 8]))[:40]:
    folder = tmp_path / "pictures" / sample.class_names[sample.labels[i]]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample.images[i]).save(folder / f"{i}.png")
  # TINY's shapes for one pixel: the compiled attack comes from the cache.
  done = pixeljax("attack", *victim, *TINY[:2], "--pixels", 1, *TINY[5:],
                  "--folder", tmp_path / "pictures", "--no-figures",
                  "--out", tmp_path / "out", env=env)
  assert done.returncode == 0, done.stderr
  records = read_records(tmp_path / "out")
  assert len(records) == 6
  assert {r["label"] for r in records} <= {7, 8}  # CIFAR-10 horse, ship
  for r in records:
    name = sample.class_names[r["label"]]
    assert r["path"].startswith(name + os.sep) and r["path"].endswith(".png")


def test_changed_settings_are_refused(straight, env, victim):
  out, _ = straight
  before = (out / "results.jsonl").read_bytes()
  done = pixeljax("attack", *victim, *TINY, "--popsize", 13, "--out", out,
                  env=env)
  assert done.returncode == 4
  assert "--popsize: saved 12, now 13" in done.stderr
  assert (out / "results.jsonl").read_bytes() == before


def _fails(done, code, *phrases):
  assert done.returncode == code, (done.returncode, done.stderr)
  assert "Traceback" not in done.stderr
  for phrase in phrases:
    assert phrase in done.stderr


def test_unknown_model(env, tmp_path):
  done = pixeljax("attack", "--model", "resnet", "--out", tmp_path, env=env)
  _fails(done, 3, "'resnet'", "known:")


def test_missing_data(env, victim, tmp_path):
  done = pixeljax("attack", *victim, "--data", tmp_path / "cifar",
                  "--out", tmp_path / "out", env=env)
  _fails(done, 3, "--data", "no such file")


# The cases below run in this process: the same main(), without paying for
# a new interpreter each.


@pytest.fixture
def main(monkeypatch, capsys):
  """Runs cli.main(ARGS) here; returns (exit code, stdout, stderr)."""
  from pixeljax import cli
  monkeypatch.delenv("PIXELJAX_DATA", raising=False)

  def run(*args):
    try:
      code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse: usage errors and --help
      code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err

  return run


def test_missing_weights_file(main, tmp_path):
  code, _, err = main("attack", "--weights", tmp_path / "none.json")
  assert code == 3 and "none.json" in err


def test_unreadable_image(main, victim, tmp_path):
  (tmp_path / "pictures" / "cat").mkdir(parents=True)
  (tmp_path / "pictures" / "cat" / "broken.png").write_bytes(b"not a png")
  code, _, err = main("attack", *victim, "--folder", tmp_path / "pictures",
                   "--out", tmp_path / "out")
  assert code == 3 and "broken.png" in err


def test_output_folder_not_writable(main, victim, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("a file where a folder should be")
  code, _, err = main("attack", *victim, "--out", blocker / "run")
  assert code == 3 and "cannot be written" in err


@pytest.mark.parametrize("args, phrase", [
    (["--popsize", "2"], "--popsize"),
    (["--pixels", "0"], "--pixels"),
    (["--mutation", "abc"], "--mutation"),
    (["--targeted", "--target", "cat"], "not allowed"),
])
def test_usage_errors(main, args, phrase):
  code, _, err = main("attack", *args)
  assert code == 2 and phrase in err


def test_unknown_target_class(main, victim, tmp_path):
  code, _, err = main("attack", *victim, "--target", "unicorn", "--no-download",
                   "--out", tmp_path)
  assert code == 2 and "'unicorn'" in err and "airplane" in err


def test_figures_of_a_folder_that_is_no_run(main, tmp_path):
  code, _, err = main("figures", tmp_path)
  assert code == 3 and "not a pixeljax run" in err


@pytest.mark.parametrize("command", ["attack", "figures", "train", "bench"])
def test_every_subcommand_has_help(main, command):
  code, out, _ = main(command, "--help")
  assert code == 0 and "usage" in out.lower()
