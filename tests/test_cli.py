"""The `pixeljax` command end to end, on tiny settings: in subprocesses where
the process matters (the entry point, a kill), else through cli.main here.

The victim is the shipped SmallCNN when it is there, else a SmallCNN with
random weights saved to a temporary card (it fools nothing, but every code
path runs). Images come from the packaged sample: PIXELJAX_DATA is unset and
downloads are off. Compiled attacks are cached in a temporary PIXELJAX_CACHE
shared by the whole module, so later runs with the same shapes start fast.
"""

import errno
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image
import pytest

# 6 images x 2 pixel counts, 4 in flight at once: several hand-backs each.
TINY = [
  "--images",
  "6",
  "--pixels",
  "1",
  "3",
  "--popsize",
  "12",
  "--maxiter",
  "40",
  "--slots",
  "4",
  "--no-download",
  "--quiet",
]
# Cheaper, for the runs in this process: 4 attacks of one generation, in
# the shapes of TINY's 1-pixel attack (compiled once, then from the cache).
CHEAP = [
  "--images",
  "4",
  "--pixels",
  "1",
  "--popsize",
  "12",
  "--maxiter",
  "1",
  "--slots",
  "4",
  "--no-download",
  "--no-figures",
  "--no-examples",
  "--quiet",
]
FIELDS = {
  "image",
  "label",
  "target",
  "pixels",
  "success",
  "adv_label",
  "adv_prob",
  "true_prob",
  "target_prob",
  "perturbation",
  "queries",
  "generations",
  "seconds_share",
}
# `pixeljax ARGS` (cli.main) that stops for good once its first records are
# on disk (appended and fsync'd), until the test kills or interrupts it: the
# signal always comes mid-run, however loaded the machine.
STOP_AFTER_FIRST_RECORDS = """
import signal, sys
from pixeljax import cli, runs
# Ctrl-C raises KeyboardInterrupt even when this test runs where SIGINT is
# ignored (a background job), which a child would otherwise inherit.
signal.signal(signal.SIGINT, signal.default_int_handler)
append = runs.RunStore.append
def append_then_stop(store, records):
  append(store, records)
  print("appended", flush=True)
  sys.stdin.read()  # returns only when the test ends the process
runs.RunStore.append = append_then_stop
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
  """The options that name the victim."""
  from pixeljax.models import weights

  if "smallcnn" in weights.shipped_models():
    return ["--model", "smallcnn"]
  from flax import nnx

  from pixeljax.models import registry

  model = registry.create_model("smallcnn", rngs=nnx.Rngs(0))
  card = weights.save_weights(
    model, tmp_path_factory.mktemp("weights"), "random", architecture="smallcnn"
  )
  return ["--weights", str(card)]


def pixeljax(*args, env):
  """Runs `python -m pixeljax.cli ARGS`; returns the CompletedProcess."""
  return subprocess.run(
    [sys.executable, "-m", "pixeljax.cli", *map(str, args)],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_program_sets_the_process_up_before_main(monkeypatch):
  """The `pixeljax` program (console script and python -m pixeljax.cli)
  restarts with huge pages where they pay (here only recorded: a restart
  would replace the test's process) and sets XLA's CPU option before main
  runs, and exits with main's code."""
  from pixeljax import cli
  from pixeljax.xla_options import NO_YNNPACK

  calls = []
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(
    cli,
    "restart_with_huge_pages",
    lambda: calls.append(("restart", os.environ.get("XLA_FLAGS"))),
  )
  monkeypatch.setattr(
    cli,
    "main",
    lambda: calls.append(("main", os.environ.get("XLA_FLAGS"))) or 3,
  )
  with pytest.raises(SystemExit) as exited:
    cli.program()
  assert exited.value.code == 3
  assert calls == [("restart", None), ("main", NO_YNNPACK)]


def read_records(folder):
  lines = (pathlib.Path(folder) / "results.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def comparable(records):
  """Records keyed by attack, without the wall time."""
  return {
    (r["pixels"], r["image"], r["target"]): {
      k: v for k, v in r.items() if k != "seconds_share"
    }
    for r in records
  }


def check_probabilities(records):
  """What target_prob must be next to adv_prob; each in [0, 1]."""
  for r in records:
    assert 0 <= r["target_prob"] <= r["adv_prob"] <= 1
    if r["target"] is None:
      assert r["success"] == (r["adv_label"] != r["label"])
    else:
      assert r["success"] == (r["adv_label"] == r["target"])
    if r["success"]:  # the class reached is the likeliest
      assert r["target_prob"] == r["adv_prob"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env, victim):
  """An uninterrupted run: (folder, CompletedProcess)."""
  out = tmp_path_factory.mktemp("runs") / "straight"
  done = pixeljax("attack", *victim, *TINY, "--out", out, env=env)
  assert done.returncode == 0, done.stderr
  return out, done


def test_attack_writes_results_images_and_summary(straight):
  out, done = straight
  assert "packaged sample" in done.stderr
  assert "skipped" in done.stderr
  assert "success rate" in done.stdout and "attacks/s" in done.stdout
  records = read_records(out)
  assert len(records) == 12 and len(comparable(records)) == 12
  saved = np.load(out / "images.npz")
  check_probabilities(records)
  for r in records:
    assert set(r) == FIELDS
    assert r["target"] is None
    assert len(r["perturbation"]) == r["pixels"]
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


def test_resume_after_kill_loses_and_repeats_nothing(
  straight, env, victim, tmp_path
):
  out = tmp_path / "killed"
  command = [
    sys.executable,
    "-c",
    STOP_AFTER_FIRST_RECORDS,
    "attack",
    *victim,
    *TINY,
    "--out",
    str(out),
  ]

  def stopped_mid_run(sig):
    """Starts the run, waits until it stops after its first records, and
    sends it ``sig``; returns (exit code, stderr)."""
    proc = subprocess.Popen(
      command,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], 280)
    line = proc.stdout.readline() if ready else "(no records in 280 s)"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert line == "appended\n", (line, stderr)
    return proc.returncode, stderr

  code, _ = stopped_mid_run(signal.SIGKILL)
  assert code == -signal.SIGKILL
  lines = len(read_records(out))
  assert 1 <= lines <= 4  # one hand-back of the 4 slots, of 12 attacks
  # A kill in the middle of a write leaves a line without its newline.
  with open(out / "results.jsonl", "a") as f:
    f.write('{"image": 3, "label": 1, "tar')

  code, stderr = stopped_mid_run(signal.SIGINT)
  assert code == 130, stderr
  assert "rerun" in stderr and "Traceback" not in stderr
  assert lines < len(read_records(out)) < 12

  done = pixeljax("attack", *victim, *TINY, "--out", out, env=env)
  assert done.returncode == 0, done.stderr
  assert "Resuming" in done.stderr
  records = read_records(out)
  assert len(records) == 12 == len(comparable(records))
  # Interrupted twice, with other attacks in flight beside it, every attack
  # found what the straight run found.
  expected = comparable(read_records(straight[0]))
  for key, record in comparable(records).items():
    for field in ("adv_prob", "true_prob", "target_prob"):
      assert record.pop(field) == pytest.approx(
        expected[key].pop(field), rel=1e-5
      )
    assert record == expected[key]


def test_figures_redraws_from_saved_results(straight, main):
  out, _ = straight
  for png in (out / "figures").iterdir():
    png.unlink()
  code, stdout, err = main("figures", out)
  assert code == 0, err
  paths = [pathlib.Path(p) for p in stdout.split()]
  assert {p.name for p in paths} == {
    "grid_1px.png",
    "grid_3px.png",
    "class_pairs_1px.png",
    "class_pairs_3px.png",
    "success_vs_pixels.png",
  }
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
  # Bad images, left out with --skip-bad-images: a corrupt one, and a bomb
  # (a PNG whose header claims 100000 x 100000 pixels).
  (tmp_path / "pictures" / "horse" / "broken.png").write_bytes(b"not a png")
  bomb = bytearray((folder / f"{i}.png").read_bytes())
  bomb[16:24] = struct.pack(">II", 100_000, 100_000)
  bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))
  (tmp_path / "pictures" / "ship" / "bomb.png").write_bytes(bytes(bomb))
  # TINY's shapes for one pixel: the compiled attack comes from the cache.
  done = pixeljax(
    "attack",
    *victim,
    *TINY[:2],
    "--pixels",
    1,
    *TINY[5:],
    "--folder",
    tmp_path / "pictures",
    "--no-figures",
    "--skip-bad-images",
    "--out",
    tmp_path / "out",
    env=env,
  )
  assert done.returncode == 0, done.stderr
  assert "Skipped 2 bad images" in done.stderr
  assert os.path.join("horse", "broken.png: not an image") in done.stderr
  assert os.path.join("ship", "bomb.png: ") in done.stderr
  records = read_records(tmp_path / "out")
  assert len(records) == 6
  assert {r["label"] for r in records} <= {7, 8}  # CIFAR-10 horse, ship
  for r in records:
    name = sample.class_names[r["label"]]
    assert r["path"].startswith(name + os.sep) and r["path"].endswith(".png")
    # The example is named after the image's file.
    assert (
      tmp_path / "out" / "examples" / "1px" / f"{r['path']}.png"
    ).is_file()


# The cases below run in this process: the same main(), without paying for
# a new interpreter each.


def test_changed_settings_are_refused(straight, main, victim):
  out, _ = straight
  before = (out / "results.jsonl").read_bytes()
  code, _, err = main("attack", *victim, *TINY, "--popsize", 13, "--out", out)
  assert code == 4
  assert "--popsize: saved 12, now 13" in err
  assert (out / "results.jsonl").read_bytes() == before


def test_unknown_model(main, tmp_path):
  code, _, err = main("attack", "--model", "resnet", "--out", tmp_path)
  assert code == 3 and "'resnet'" in err and "known:" in err


def test_missing_data(main, victim, tmp_path):
  code, _, err = main(
    "attack", *victim, "--data", tmp_path / "cifar", "--out", tmp_path / "out"
  )
  assert code == 3 and "--data" in err and "no such file" in err


@pytest.fixture
def main(monkeypatch, capsys, env):
  """Runs cli.main(ARGS) here; returns (exit code, stdout, stderr)."""
  from pixeljax import cli

  monkeypatch.delenv("PIXELJAX_DATA", raising=False)
  monkeypatch.setenv("PIXELJAX_CACHE", env["PIXELJAX_CACHE"])

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
  code, _, err = main(
    "attack",
    *victim,
    "--folder",
    tmp_path / "pictures",
    "--out",
    tmp_path / "out",
  )
  assert code == 3 and "broken.png" in err and "--skip-bad-images" in err


def test_output_folder_not_writable(main, victim, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("a file where a folder should be")
  code, _, err = main("attack", *victim, "--out", blocker / "run")
  assert code == 3 and "cannot be written" in err


@pytest.mark.parametrize(
  "args, phrase",
  [
    (["--popsize", "2"], "--popsize"),
    (["--pixels", "0"], "--pixels"),
    (["--mutation", "abc"], "--mutation"),
    (["--targeted", "--target", "cat"], "not allowed"),
    (["--onnx", "m.onnx", "--torch", "f.py:g"], "not allowed"),
    (
      ["--onnx", "m.onnx", "--torch-weights", "w.pt"],
      "--torch-weights: only with --torch",
    ),
    (["--nchw"], "--nchw: only with --onnx or --torch"),
    (["--method", "pgd"], "invalid choice"),
    (["--method", "corner", "--pixels", "1", "3"], "--pixels 1 only"),
    (
      ["--method", "sparse-rs", "--popsize", "10"],
      "--popsize: not an option of --method sparse-rs",
    ),
    (["--max-queries", "99"], "--max-queries: not an option of --method de"),
    (["--coordinator", "localhost:1"], "only with --distributed"),
    (["--distributed-timeout", "5"], "only with --distributed"),
    (["--distributed", "--coordinator", "nohost"], "expected HOST:PORT"),
    (["--distributed", "--coordinator", "h:0"], "expected HOST:PORT"),
    (["--seed", str(2**32)], "--seed: expected at most 4294967295"),
    (["--seed", "-1"], "--seed: expected at least 0"),
    (["--size", "100000"], "--size: expected at most 1024"),
  ],
)
def test_usage_errors(main, args, phrase):
  code, _, err = main("attack", *args)
  assert code == 2 and phrase in err


@pytest.mark.parametrize(
  "method, options, budget",
  [
    ("corner", ["--block", "512"], 32 * 32 * 8),
    ("corner-search", ["--max-queries", str(8192 + 64)], 8192 + 64),
    ("sparse-rs", ["--max-queries", "128", "--proposals", "32"], 128),
    ("seeded-de", ["--popsize", "8", "--maxiter", "1"], 8192 + 16),
  ],
)
def test_every_method_runs_from_the_command_line(
  main, victim, tmp_path, monkeypatch, method, options, budget
):
  pixels = "1" if method in ("corner", "seeded-de") else "2"
  args = ["attack", *victim, "--method", method, *options, "--images", "2"]
  args += ["--pixels", pixels, "--no-examples", "--no-figures", "--quiet"]
  code, out, err = main(*args, "--out", tmp_path / "run")
  assert code == 0, err
  records = read_records(tmp_path / "run")
  assert len(records) == 2
  assert all(0 < r["queries"] <= budget for r in records)
  assert all(len(r["perturbation"]) == int(pixels) for r in records)
  check_probabilities(records)
  settings = json.loads((tmp_path / "run" / "run.json").read_text())
  assert settings["method"] == method
  assert ("popsize" in settings) == (method == "seeded-de")
  assert f"method {method}" in out
  if method != "corner":
    return
  # The default folder is named after the method; a rerun resumes it.
  monkeypatch.chdir(tmp_path)
  code, _, err = main(*args)
  assert code == 0, err
  [folder] = (tmp_path / "pixeljax-runs").iterdir()
  assert f"_{method}_" in folder.name
  code, _, err = main(*args)
  assert code == 0 and "Resuming: 2 of 2 attacks" in err


def test_unknown_target_class(main, victim, tmp_path):
  code, _, err = main(
    "attack", *victim, "--target", "unicorn", "--no-download", "--out", tmp_path
  )
  assert code == 2 and "'unicorn'" in err and "airplane" in err


def test_figures_of_a_folder_that_is_no_run(main, tmp_path):
  code, _, err = main("figures", tmp_path)
  assert code == 3 and "not a pixeljax run" in err


@pytest.mark.parametrize("command", ["attack", "eval", "figures", "train"])
def test_every_subcommand_has_help(main, command):
  code, out, _ = main(command, "--help")
  assert code == 0 and "usage" in out.lower()


def sample_pictures(folder, per_class, classes=range(10)):
  """Packaged sample images as folder/<class name>/<index>.png."""
  from pixeljax import data

  sample = data.load_cifar10_sample()
  for c in classes:
    for i in np.flatnonzero(sample.labels == c)[:per_class]:
      path = folder / sample.class_names[c] / f"{i}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(sample.images[i]).save(path)


def test_damaged_images_are_rebuilt_on_resume(main, victim, tmp_path):
  out = tmp_path / "run"
  run = ("attack", *victim, *CHEAP, "--out", out)
  code, _, err = main(*run)
  assert code == 0, err
  with np.load(out / "images.npz") as z:
    original = dict(z)
  whole = (out / "images.npz").read_bytes()
  (out / "images.npz").write_bytes(whole[: len(whole) // 2])
  code, _, err = main(*run)
  assert code == 0 and "Rebuilt" in err and "Resuming: 4 of 4" in err, err
  with np.load(out / "images.npz") as z:
    assert set(z.files) == set(original)
    for name in original:
      np.testing.assert_array_equal(z[name], original[name])
  # Images chosen again that are not those of the records: refused.
  lines = (out / "results.jsonl").read_text().splitlines()
  lines[0] = json.dumps(dict(json.loads(lines[0]), image=99999))
  (out / "results.jsonl").write_text("\n".join(lines) + "\n")
  (out / "images.npz").write_bytes(b"")
  code, _, err = main(*run)
  assert code == 3 and "do not match" in err and "image 99999" in err


def test_a_full_disk_is_exit_3_and_the_next_run_resumes(
  main, victim, tmp_path, monkeypatch
):
  import matplotlib.figure

  if not os.path.isdir("/proc/self/fd"):
    pytest.skip("needs /proc to name a file descriptor's file")
  out = tmp_path / "run"
  run = ("attack", *victim, *CHEAP, "--target", "cat", "--out", out)
  fsync = os.fsync

  def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def full_disk(what, *args, patch=None):
    """Runs ``args`` on a disk that is full for ``what``."""
    with monkeypatch.context() as m:
      m.setattr(
        os,
        "fsync",
        lambda fd: (
          no_space()
          if what in os.readlink(f"/proc/self/fd/{fd}")
          else fsync(fd)
        ),
      )
      if patch:
        m.setattr(*patch, no_space)
      code, _, err = main(*args)
    assert code == 3, err
    assert "No space left on device" in err and "Traceback" not in err
    assert what in err, err
    return len(read_records(out)) if (out / "results.jsonl").exists() else 0

  # Nothing written, nothing left: not even the folder.
  assert full_disk("images.npz", *run) == 0 and not out.exists()
  assert full_disk("results.jsonl", *run) == 0
  assert (out / "run.json").is_file() and (out / "images.npz").is_file()
  examples = [a for a in run if a != "--no-examples"]
  assert full_disk("examples", *examples, patch=(Image.Image, "save")) == 0
  assert full_disk("summary.json", *run) == 4
  figures = [a for a in run if a != "--no-figures"]
  assert (
    full_disk("figures", *figures, patch=(matplotlib.figure.Figure, "savefig"))
    == 4
  )
  code, _, err = main(*run)
  assert code == 0 and "Resuming: 4 of 4" in err, err
  records = read_records(out)
  assert len(comparable(records)) == len(records) == 4
  assert {r["target"] for r in records} == {3}
  check_probabilities(records)


def test_a_refused_setting_writes_nothing(main, victim, tmp_path):
  out = tmp_path / "new" / "run"
  code, _, err = main("attack", *victim, *CHEAP, "--pixels", 2000, "--out", out)
  assert code == 2 and "pixels" in err and "2000" in err, err
  assert not (tmp_path / "new").exists()
  code, _, err = main("attack", *victim, *CHEAP, "--out", out)
  assert code == 0, err


def test_the_same_data_named_otherwise_resumes(
  main, victim, tmp_path, monkeypatch
):
  sample_pictures(tmp_path / "data" / "test", per_class=2)
  shutil.copytree(tmp_path / "data", tmp_path / "copy")
  (tmp_path / "link").symlink_to(tmp_path / "data")
  monkeypatch.chdir(tmp_path)
  run = ("attack", *victim, *CHEAP, "--out", "run", "--data")
  code, _, err = main(*run, "data")
  assert code == 0, err
  for other in (tmp_path / "data", "link", "copy/"):
    code, _, err = main(*run, other)
    assert code == 0 and "Resuming: 4 of 4" in err, err
  # Other images are other data.
  dog = next((tmp_path / "copy" / "test" / "dog").iterdir())
  shutil.copy(dog, tmp_path / "copy" / "test" / "cat" / "extra.png")
  code, _, err = main(*run, "copy")
  assert code == 4 and "data" in err


def test_the_readme_commands_get_a_folder_each(
  main, victim, tmp_path, monkeypatch
):
  """`pixeljax attack`, then `pixeljax attack --folder my_pictures/`."""
  sample_pictures(tmp_path / "my_pictures", per_class=3, classes=(7, 8))
  monkeypatch.chdir(tmp_path)
  code, _, err = main("attack", *victim, *CHEAP)
  assert code == 0, err
  shown = [a for a in CHEAP if a != "--quiet"]  # the progress bar
  code, _, err = main("attack", *victim, *shown, "--folder", "my_pictures/")
  assert code == 0, err
  assert "fooled 1px" in err and "evaluations" in err
  code, _, err = main("attack", *victim, *CHEAP, "--folder", "my_pictures")
  assert code == 0 and "Resuming: 4 of 4" in err, err
  names = sorted(p.name for p in (tmp_path / "pixeljax-runs").iterdir())
  assert len(names) == 2, names
  assert "_my_pictures-" in names[0] and "_sample-" in names[1]


def test_train_help_names_the_command_and_each_option(main, monkeypatch):
  command = "train"
  import argparse

  parsers = []
  parse_args = argparse.ArgumentParser.parse_args

  def keep(parser, *args, **kwargs):
    parsers.append(parser)
    return parse_args(parser, *args, **kwargs)

  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", keep)
  code, out, _ = main(command, "--help")
  assert code == 0 and out.startswith(f"usage: pixeljax {command} ")
  [parser] = parsers
  for action in parser._actions:
    assert action.help, f"{command} {action.option_strings}: no help"


def test_the_package_never_imports_the_benchmarks():
  """benchmarks/ lives in the repository only: an installed pixeljax has
  none, so nothing in the package may import it."""
  import ast

  package = pathlib.Path(__file__).resolve().parent.parent / "pixeljax"
  for path in package.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      assert not any(n.split(".")[0] == "benchmarks" for n in names), path
    assert "sys.path" not in path.read_text(), path


def test_run_folders_are_not_for_git():
  root = pathlib.Path(__file__).resolve().parent.parent
  if not (root / ".git").exists():
    pytest.skip("not a git checkout")
  check = subprocess.run(
    ["git", "check-ignore", "-q", "pixeljax-runs/smallcnn/run.json"], cwd=root
  )
  assert check.returncode == 0


# Models from outside pixeljax (pixeljax.adapters): the shipped SmallCNN
# rebuilt in PyTorch (benchmarks/torch_victims.py), as an ONNX file and as a
# --torch factory. Cheaper still than CHEAP: the model runs on the host.
EXTERNAL = [
  "--images",
  "2",
  "--popsize",
  "8",
  "--maxiter",
  "1",
  "--no-download",
  "--no-figures",
  "--no-examples",
  "--quiet",
]
FACTORIES = """
import torch
from flax import nnx

from benchmarks import torch_victims
from pixeljax.models import registry


def smallcnn():
  # Random weights: --torch-weights brings the trained ones.
  model = registry.create_model("smallcnn", rngs=nnx.Rngs(0))
  return torch_victims.to_torch(model)


def images_out():  # [B, H, W, C] back: not logits [B, K]
  return torch.nn.Identity()


def three_classes():
  return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 3))
"""


@pytest.fixture(scope="module")
def torch_smallcnn():
  """The shipped SmallCNN as a torch module on NCHW pixels."""
  pytest.importorskip("torch")
  torch_victims = pytest.importorskip("benchmarks.torch_victims")
  from pixeljax.models import weights

  if "smallcnn" not in weights.shipped_models():
    pytest.skip("needs the shipped SmallCNN")
  return torch_victims.to_torch(weights.load_victim("smallcnn"))


@pytest.fixture
def factories(tmp_path):
  """The path of a file of --torch factories (FACTORIES)."""
  path = tmp_path / "factories.py"
  path.write_text(FACTORIES)
  return path


def attacked_as_jax(main, records, tmp_path):
  """Checks ``records`` against the same run on the JAX SmallCNN."""
  code, _, err = main(
    "attack", "--model", "smallcnn", *EXTERNAL, "--out", tmp_path / "jax"
  )
  assert code == 0, err
  want = comparable(read_records(tmp_path / "jax"))
  got = comparable(records)
  assert len(got) == 2 and got.keys() == want.keys()
  for key, record in got.items():
    for field in ("adv_prob", "true_prob", "target_prob"):
      assert record.pop(field) == pytest.approx(want[key].pop(field), abs=1e-5)
    assert record == want[key]


def only_run(folder):
  [run] = (folder / "pixeljax-runs").iterdir()
  return run


def test_onnx_model(main, torch_smallcnn, tmp_path, monkeypatch):
  pytest.importorskip("onnxruntime")
  from tests.test_adapters import _export

  model = _export(torch_smallcnn, tmp_path / "smallcnn.onnx")
  monkeypatch.chdir(tmp_path)
  code, _, err = main("attack", "--onnx", model, *EXTERNAL)
  assert code == 0, err
  run = only_run(tmp_path)
  # Named after the file's stem and a hash of the model's identity.
  assert re.fullmatch(r"smallcnn-[0-9a-f]{8}_sample-.*", run.name), run.name
  attacked_as_jax(main, read_records(run), tmp_path)
  settings = json.loads((run / "run.json").read_text())
  assert settings["model"]["files"] == {
    "smallcnn.onnx": hashlib.sha256(model.read_bytes()).hexdigest()
  }
  code, _, err = main("attack", "--onnx", model, *EXTERNAL)
  assert code == 0 and "Resuming: 2 of 2" in err, err
  # Another model in the same file: another run.
  _export(torch_smallcnn, model, dynamic_batch=False)
  code, _, err = main("attack", "--onnx", model, *EXTERNAL)
  assert code == 0 and "Resuming" not in err, err
  names = sorted(p.name for p in (tmp_path / "pixeljax-runs").iterdir())
  assert len(names) == 2 and names[0][:18] != names[1][:18], names


def test_torch_factory_with_weights(
  main, torch_smallcnn, factories, tmp_path, monkeypatch
):
  import torch

  torch.save(torch_smallcnn.state_dict(), tmp_path / "trained.pt")
  monkeypatch.chdir(tmp_path)
  factory = f"{factories}:smallcnn"
  code, _, err = main(
    "attack",
    "--torch",
    factory,
    "--torch-weights",
    "trained.pt",
    "--nchw",
    *EXTERNAL,
  )
  assert code == 0, err
  run = only_run(tmp_path)
  assert re.fullmatch(r"smallcnn-[0-9a-f]{8}_sample-.*", run.name), run.name
  model = json.loads((run / "run.json").read_text())["model"]
  assert model["architecture"] == "torch:factories.py:smallcnn"
  assert set(model["files"]) == {"factories.py", "trained.pt"}
  attacked_as_jax(main, read_records(run), tmp_path)
  # Without the trained weights: another model, another run.
  code, _, err = main("attack", "--torch", factory, "--nchw", *EXTERNAL)
  assert code == 0 and "Resuming" not in err, err
  assert len(list((tmp_path / "pixeljax-runs").iterdir())) == 2


@pytest.mark.parametrize(
  "function, phrase",
  [
    (
      "images_out",
      r"--torch \S+:images_out: expected logits \[B, K\] .* "
      r"got an output of shape \(1, 32, 32, 3\)",
    ),
    ("three_classes", r"the model has 3 classes, the data 10"),
    (
      "smallcnn",
      r"--torch \S+:smallcnn: cannot load or run the model: "
      r"RuntimeError: .*needs --nchw",
    ),  # an NCHW module given NHWC
    ("nothing", r"has no function 'nothing'"),
  ],
)
def test_a_model_that_does_not_fit_is_exit_3(
  main, factories, tmp_path, function, phrase
):
  pytest.importorskip("torch")
  code, _, err = main(
    "attack",
    "--torch",
    f"{factories}:{function}",
    *EXTERNAL,
    "--out",
    tmp_path / "out",
  )
  assert code == 3 and re.search(phrase, err), err
  assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_missing_model_files(main, factories, tmp_path):
  pytest.importorskip("torch")
  missing = tmp_path / "none"
  for args, phrase in [
    (["--onnx", f"{missing}.onnx"], "no such ONNX file"),
    (["--torch", f"{missing}.py:build"], "no such file"),
    (
      ["--torch", f"{factories}:smallcnn", "--torch-weights", f"{missing}.pt"],
      f"--torch-weights {missing}.pt: no such file",
    ),
  ]:
    if args[0] == "--onnx" and importlib.util.find_spec("onnxruntime") is None:
      continue
    code, _, err = main("attack", *args, *EXTERNAL, "--out", tmp_path / "out")
    assert code == 3 and phrase in err and "none." in err, err


# Models refused at the door: before anything is written, exit 3.
BAD_FACTORIES = """
import torch


def nan_logits():
  linear = torch.nn.Linear(3072, 10)
  torch.nn.init.constant_(linear.weight, float("nan"))
  return torch.nn.Sequential(torch.nn.Flatten(), linear)


def one_image_only():
  class OneImage(torch.nn.Module):
    def forward(self, x):
      return x.reshape(1, -1)[:, :10]

  return OneImage()


def raises_beyond_one():
  class RaisesBeyondOne(torch.nn.Module):
    def forward(self, x):
      if x.shape[0] > 1:
        raise RuntimeError("one image at a time")
      return x.reshape(1, -1)[:, :10]

  return RaisesBeyondOne()
"""


def nan_weights_card(folder):
  """A SmallCNN card whose parameters are all NaN."""
  from flax import nnx
  import jax
  import jax.numpy as jnp

  from pixeljax.models import registry
  from pixeljax.models import weights

  model = registry.create_model("smallcnn", rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params))
  return weights.save_weights(model, folder, "nan", architecture="smallcnn")


@pytest.mark.parametrize("source", ["weights", "torch", "onnx"])
def test_a_model_with_nan_logits_is_exit_3_and_writes_nothing(
  main, victim, tmp_path, source
):
  if source == "weights":
    model = ["--weights", nan_weights_card(tmp_path / "card")]
  else:
    pytest.importorskip("torch")
    (tmp_path / "bad.py").write_text(BAD_FACTORIES)
    model = ["--torch", f"{tmp_path / 'bad.py'}:nan_logits"]
  if source == "onnx":
    pytest.importorskip("onnxruntime")
    import warnings

    import torch

    from pixeljax import adapters

    module = adapters._torch_module(model[1], None)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      torch.onnx.export(
        module,
        (torch.zeros(1, 32, 32, 3),),
        str(tmp_path / "nan.onnx"),
        dynamo=False,
      )
    model = ["--onnx", tmp_path / "nan.onnx"]
  out = tmp_path / "new" / "run"
  code, _, err = main("attack", *model, *CHEAP, "--out", out)
  assert code == 3 and "NaN or inf logits" in err, err
  assert "Traceback" not in err and not (tmp_path / "new").exists()
  if source == "weights":  # the corrected command gets the folder
    code, _, err = main("attack", *victim, *CHEAP, "--out", out)
    assert code == 0, err


@pytest.mark.parametrize(
  "function, phrase",
  [
    (
      "one_image_only",
      r"one_image_only: expected logits \[B, K\] for images of shape "
      r"\(2, 32, 32, 3\) \(NHWC\), got an output of shape \(1, 10\)",
    ),
    (
      "raises_beyond_one",
      r"raises_beyond_one: cannot load or run the model: RuntimeError: one "
      r"image at a time \(on images \[B, H, W, C\] = \[2, 32, 32, 3\]\)",
    ),
  ],
)
def test_a_torch_model_of_one_image_only_is_exit_3(
  main, tmp_path, function, phrase
):
  pytest.importorskip("torch")
  (tmp_path / "bad.py").write_text(BAD_FACTORIES)
  code, _, err = main(
    "attack",
    "--torch",
    f"{tmp_path / 'bad.py'}:{function}",
    *EXTERNAL,
    "--out",
    tmp_path / "out",
  )
  assert code == 3 and re.search(phrase, err), err
  assert "Traceback" not in err and "--nchw" not in err
  assert not (tmp_path / "out").exists()


def test_a_model_file_that_does_not_load_is_exit_3(main, tmp_path):
  pytest.importorskip("torch")
  (tmp_path / "broken.py").write_text("import torch\n\ndef build(:\n  pass\n")
  cases = [
    (
      ["--torch", f"{tmp_path / 'broken.py'}:build"],
      r"--torch \S+: \S+broken\.py, line 3: SyntaxError",
    )
  ]
  if importlib.util.find_spec("onnxruntime") is not None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("not an ONNX model")
    cases += [
      (["--onnx", tmp_path / name], rf"{name} is not an ONNX model")
      for name in ("empty.onnx", "text.onnx")
    ]
  for args, phrase in cases:
    code, _, err = main("attack", *args, *EXTERNAL, "--out", tmp_path / "out")
    assert code == 3 and re.search(phrase, err), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
