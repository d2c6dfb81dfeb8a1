"""scripts/gpu_session.py: every step of a GPU session, at toy scale on CPU.

The device steps run for real in the toy configuration (PIXELJAX_GPU_TOY=1:
SmallCNN, a 160-image CIFAR-shaped archive, tiny attacks) with a temporary
folder as $OUT; what they return is restored into another folder, as here
after a GPU call, and a paper run resumes on a "fresh machine" from what was
restored. The GPU configuration's own command lines are checked against the
parsers of the scripts they call, without running them.
"""

import argparse
import importlib.util
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest

from benchmarks import common
from pixeljax import data as data_lib
from pixeljax import train as train_lib

SCRIPT = pathlib.Path(common.REPO_ROOT) / "scripts" / "gpu_session.py"
spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
gs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gs)

PART = 50_000  # bytes: SmallCNN's float16 weights (0.46 MiB) come in 10 parts


def toy_archive(path: pathlib.Path):
  """A CIFAR-10-shaped .tar.gz: 10 train and 6 test PNGs per class."""
  rng = np.random.default_rng(0)
  with tarfile.open(path, "w:gz") as tar:
    for split, count in (("train", 10), ("test", 6)):
      for label, name in enumerate(data_lib.CIFAR10_CLASSES):
        for i in range(count):
          pixels = rng.normal(25 * label, 40, (32, 32, 3))
          buffer = io.BytesIO()
          Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            buffer, "PNG"
          )
          info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{i:04d}.png")
          info.size = len(buffer.getvalue())
          tar.addfile(info, io.BytesIO(buffer.getvalue()))


@pytest.fixture
def toy_env(tmp_path, monkeypatch):
  """Toy mode with .gpu/ and the results folder in ``tmp_path``."""
  monkeypatch.setenv("PIXELJAX_GPU_TOY", "1")
  monkeypatch.setenv("PIXELJAX_GPU_DIR", str(tmp_path / "device"))
  monkeypatch.setenv("PIXELJAX_GPU_RESULTS", str(tmp_path / "results"))
  monkeypatch.setenv("PIXELJAX_GPU_PART_BYTES", str(PART))
  monkeypatch.setenv("PIXELJAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("PIXELJAX_DATA", raising=False)
  # The benchmark steps set it for the driver's own process.
  monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
  return tmp_path


def call(step_argv, out=None, monkeypatch=None):
  """Runs one step in-process, with $OUT = ``out`` (made empty first)."""
  if out is not None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    monkeypatch.setenv("OUT", str(out))
  assert gs.main(step_argv) == 0


def check_out_limits(out: pathlib.Path):
  """What a call may return: <= 8 plain files, <= 16 MiB each, 64 MiB in all,
  names of letters, digits, '.', '_' and '-'."""
  files = [p for p in out.rglob("*") if p.is_file()]
  assert len(files) <= 8 and all(p.parent == out for p in files)
  assert all(p.stat().st_size <= 16 * 2**20 for p in files)
  assert sum(p.stat().st_size for p in files) <= 64 * 2**20
  assert all(
    set(p.name)
    <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    for p in files
  )
  return files


def test_a_session_end_to_end(toy_env, monkeypatch, capsys):
  tmp = toy_env
  device = tmp / "device"
  toy_archive(tmp / "toy.tar.gz")
  # The toy session trains a victim: it needs the whole archive.
  call(["prepare", "--data", str(tmp / "toy.tar.gz"), "--no-wheels"])
  call(
    ["prepare", "--data", str(tmp / "toy.tar.gz"), "--no-wheels"]
    + ["--splits", "all"]
  )
  assert not (device / "data" / gs.TEST_DATA_FILE).exists()
  assert (device / "data" / gs.DATA_FILE).read_bytes() == (
    tmp / "toy.tar.gz"
  ).read_bytes()
  assert "carry=[" in capsys.readouterr().out

  # victims: 10 parts + manifest do not fit 8 files: the rest waits.
  call(["victims", "smallcnn"], tmp / "out1", monkeypatch)
  first = check_out_limits(tmp / "out1")
  assert len(first) == 8 and "WAITING" in capsys.readouterr().out
  call(["victims", "smallcnn"], tmp / "out2", monkeypatch)  # trained: no-op
  assert "trained already" in capsys.readouterr().out
  assert check_out_limits(tmp / "out2")  # ...but the waiting parts went
  call(["throughput"], tmp / "out3", monkeypatch)
  call(["paper"], tmp / "out4", monkeypatch)
  call(["peers"], tmp / "out5", monkeypatch)
  for out in ("out3", "out4", "out5"):
    check_out_limits(tmp / out)

  # Here: restore into another .gpu/ and the results folder.
  here = tmp / "here"
  monkeypatch.setenv("PIXELJAX_GPU_DIR", str(here))
  call(["restore", *(str(tmp / f"out{i}") for i in range(1, 6))])
  restored = capsys.readouterr().out
  assert "waiting for" not in restored and "smallcnn: test accuracy" in restored
  for name in ("smallcnn.json", "smallcnn.safetensors"):
    assert (here / "victims" / "smallcnn" / name).read_bytes() == (
      device / "victims" / "smallcnn" / name
    ).read_bytes()
  results = sorted(p.name for p in (tmp / "results").iterdir())
  assert {
    "throughput_cpu_smallcnn.json",
    "throughput_cpu_smallcnn.md",
    "paper_table.json",
    "paper_table.md",
    "peers_cpu_smallcnn.json",
    "peers_cpu_smallcnn.png",
  } <= set(results)
  payload = json.loads(
    (tmp / "results" / "throughput_cpu_smallcnn.json").read_text()
  )
  assert set(payload["predict_images_per_second_variants"]) == {
    "float32_highest",
    "bfloat16",
  }
  assert payload["flops_per_image"] > 0 and payload["efficiency"] > 0
  carry = [line for line in restored.splitlines() if line.startswith("carry=")]
  assert str(here / "victims" / "smallcnn") in carry[-1]

  # A fresh machine gets what `carry` names, at the same paths: paper resumes.
  shutil.copytree(device / "data", here / "data")  # here, `prepare` made it
  shutil.rmtree(device)
  for name in ("data", "victims", "paper"):
    shutil.copytree(here / name, device / name)
  monkeypatch.setenv("PIXELJAX_GPU_DIR", str(device))
  call(["paper"], tmp / "out6", monkeypatch)
  sessions = (device / "paper" / "sessions.jsonl").read_text().splitlines()
  assert [json.loads(line)["new_attacks"] for line in sessions] == [2, 0]
  check_out_limits(tmp / "out6")
  table = json.loads(
    (device / "results" / "paper" / "paper_table.json").read_text()
  )
  assert [e["model"] for e in table["runs"]] == ["smallcnn"]
  # The run folders do not record the matmul precision: one per table.
  assert (device / "paper" / "matmul_precision").read_text() == "highest\n"
  assert gs.main(["paper", "--tf32"]) == 2
  assert "made at matmul precision 'highest'" in capsys.readouterr().err


def test_prepare_packs_the_test_split_that_victims_cannot_train_on(
  toy_env, capsys
):
  tmp = toy_env
  toy_archive(tmp / "toy.tar.gz")
  call(["prepare", "--data", str(tmp / "toy.tar.gz"), "--no-wheels"])
  packed = tmp / "device" / "data" / gs.TEST_DATA_FILE
  assert gs.data_path() == packed
  assert not (tmp / "device" / "data" / gs.DATA_FILE).exists()
  with tarfile.open(packed) as tar:
    names = tar.getnames()
  assert len(names) == 60 and all("/test/" in n for n in names)
  test = data_lib.load_cifar10("test", source=packed, download=False)
  assert test.images.shape == (60, 32, 32, 3)
  recorded = (packed.parent / "SHA256").read_text().split()
  assert recorded == [gs.sha256(packed), gs.TEST_DATA_FILE]
  with pytest.raises(gs.StepError, match="--splits all"):
    gs.train_victim("smallcnn", gs.Clock(1))
  assert "carry=[" in capsys.readouterr().out


def test_throughput_sweep_skips_what_its_budget_cannot_hold(monkeypatch):
  from benchmarks import throughput

  calls = []

  class Result:
    queries, success_rate = np.full(2, 10), 0.5

  def attack(predict, images, labels, **kwargs):
    calls.append(len(images))
    throughput.time.sleep(0.02 * len(images))  # time grows with N
    return Result()

  monkeypatch.setattr(throughput.pixeljax, "batched_attack", attack)
  throughput.jax.random.key(0)  # JAX started: not part of the budget
  pool = (np.zeros((6, 32, 32, 3), np.uint8), np.zeros(6, np.int64))
  rows, skipped = throughput.measure_images_per_second(
    None, [1, 2, 64, 4, 8], 16, 8, 2, pool=pool, budget=0.4
  )
  # 64: more than the pool; 8: projected past the budget after 1, 2 and 4.
  assert [r["images"] for r in rows] == [1, 2, 4] and skipped == [64, 8]
  assert calls == [1, 1, 2, 2, 4, 4]  # each size compiles, then is timed


def test_pack_waits_for_room_and_restore_checks_every_part(
  toy_env, monkeypatch
):
  tmp = toy_env
  source = tmp / "made"
  source.mkdir()
  rng = np.random.default_rng(0)
  (source / "big.bin").write_bytes(rng.bytes(5 * PART))  # incompressible
  (source / "small.json").write_text("{}")
  gs.pack(
    "thing",
    source,
    ["big.bin", "small.json"],
    root="gpu",
    dest="things",
    priority=0,
  )
  out = tmp / "out"
  out.mkdir()
  monkeypatch.setenv("OUT", str(out))
  (out / "gpu-step.log").write_bytes(b"x" * 100)
  monkeypatch.setattr(gs, "OUT_FILES", 4)  # the log + 3: manifest, 2 parts
  assert len(gs.flush()) == 4
  assert len(check_out_limits(out)) == 4
  here = tmp / "here"
  monkeypatch.setenv("PIXELJAX_GPU_DIR", str(here))
  gs.restore([out])
  assert not (here / "things").exists()  # parts missing: nothing unpacked
  monkeypatch.setenv("PIXELJAX_GPU_DIR", str(tmp / "device"))
  out2 = tmp / "out2"
  out2.mkdir()
  monkeypatch.setenv("OUT", str(out2))
  assert gs.flush() == []
  monkeypatch.setenv("PIXELJAX_GPU_DIR", str(here))
  part = next(out2.glob("*.part6"))
  part.write_bytes(part.read_bytes()[:-1] + b"!")  # a broken transfer
  with pytest.raises(gs.StepError, match="sha256 differs"):
    gs.restore([out2])
  (here / "inbox" / part.name).unlink()
  shutil.copyfile(tmp / "device" / "sent" / part.name, part)
  gs.restore([out2])
  assert (here / "things" / "big.bin").read_bytes() == (
    source / "big.bin"
  ).read_bytes()
  assert (here / "logs" / "gpu-step.log").exists()


def test_a_late_older_pack_keeps_the_newer_files(toy_env, monkeypatch):
  tmp = toy_env
  source = tmp / "made"
  source.mkdir()
  outs = []
  for i, text in enumerate(("old", "new")):
    (source / "checkpoint.json").write_text(text)
    gs.pack(
      "checkpoint-x",
      source,
      ["checkpoint.json"],
      root="gpu",
      dest="train/x",
      priority=1,
    )
    outs.append(tmp / f"out{i}")
    outs[-1].mkdir()
    monkeypatch.setenv("OUT", str(outs[-1]))
    gs.flush()
  monkeypatch.setenv("PIXELJAX_GPU_DIR", str(tmp / "here"))
  gs.restore([outs[1]])
  gs.restore([outs[0]])  # the older pack arrives last
  assert (tmp / "here" / "train" / "x" / "checkpoint.json").read_text() == "new"


def test_restore_refuses_to_write_outside_its_folders(toy_env):
  tmp = toy_env
  inbox = tmp / "device" / "inbox"
  inbox.mkdir(parents=True)
  payload = io.BytesIO()
  with tarfile.open(fileobj=payload, mode="w:gz") as tar:
    info = tarfile.TarInfo("../escape.txt")
    info.size = 2
    tar.addfile(info, io.BytesIO(b"hi"))
  (inbox / "bad.tgz.part1").write_bytes(payload.getvalue())
  part = dict(
    file="bad.tgz.part1",
    sha256=gs.sha256(inbox / "bad.tgz.part1"),
    bytes=len(payload.getvalue()),
  )
  manifest = dict(
    format=gs.PACK_FORMAT,
    name="bad",
    created="x",
    priority=0,
    root="gpu",
    dest="ok",
    files=[],
    parts=[part],
    sha256=part["sha256"],
    bytes=part["bytes"],
  )
  for dest, match in (
    ("../up", "not a folder under"),
    ("ok", "not a plain relative file"),
  ):
    (inbox / "bad.manifest.json").write_text(
      json.dumps({**manifest, "dest": dest})
    )
    with pytest.raises(gs.StepError, match=match):
      gs._unpack(inbox / "bad.manifest.json", inbox)
  assert not (tmp / "escape.txt").exists() and not (tmp / "up").exists()


def test_carry_leaves_out_what_cannot_travel(toy_env, capsys):
  tmp = toy_env
  device = tmp / "device"
  (device / "data").mkdir(parents=True)
  (device / "data" / gs.DATA_FILE).write_bytes(b"x")
  victim = device / "victims" / "smallcnn"
  victim.mkdir(parents=True)
  (victim / "smallcnn.json").write_text("{}")
  with open(victim / "smallcnn.safetensors", "wb") as f:
    f.truncate(70 * 2**20)  # sparse: 70 MiB that cost no disk
  assert gs.carry() == [str(device / "data")]
  assert "LEAVE" in capsys.readouterr().out


class Parsed(Exception):
  """Raised in place of running a script once its arguments are parsed."""


def parse_only(monkeypatch, main, argv):
  real = argparse.ArgumentParser.parse_args

  def parse(self, args=None, namespace=None):
    raise Parsed(real(self, args, namespace))

  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
  with pytest.raises(Parsed) as caught:
    main(argv)
  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real)
  return caught.value.args[0]


def test_the_gpu_command_lines_parse(tmp_path, monkeypatch):
  """The GPU configuration's options exist in the scripts they go to."""
  monkeypatch.delenv("PIXELJAX_GPU_TOY", raising=False)
  monkeypatch.setenv("PIXELJAX_GPU_DIR", str(tmp_path))
  for model in gs.VICTIMS:
    argv = [
      "--model",
      model,
      "--out",
      "x",
      *gs.RECIPES[model].split(),
      "--time-limit",
      "480",
      "--resume",
    ]
    cfg = train_lib.TrainConfig(
      **vars(train_lib._parser().parse_args(argv))
    ).resolved()
    assert cfg.bf16 and cfg.label_smoothing == 0.1 and cfg.batch_size == 512
    assert cfg.weights_dtype == "float16"
    (tmp_path / "victims" / model).mkdir(parents=True)
    (tmp_path / "victims" / model / f"{model}.json").write_text("{}")
  from benchmarks import paper_table
  from benchmarks import throughput

  parsed = parse_only(
    monkeypatch,
    throughput.main,
    gs.benchmark_args("throughput", ["allconv"], budget=100),
  )
  assert parsed.bf16 and parsed.devices == "" and parsed.budget_seconds == 100
  parsed = parse_only(
    monkeypatch, paper_table.main, gs.benchmark_args("paper", list(gs.VICTIMS))
  )
  assert parsed.models == list(gs.VICTIMS) and parsed.slots == 256
  pytest.importorskip("torch")
  from benchmarks import peers

  parsed = parse_only(
    monkeypatch, peers.main, gs.benchmark_args("peers", ["nin"])
  )
  assert parsed.torch_device == "cuda" and parsed.weights.endswith("nin.json")


def test_wrapper_logs_into_out_and_help_gives_the_plan(tmp_path):
  env = dict(
    os.environ,
    OUT=str(tmp_path),
    PYTHON=sys.executable,
    PIXELJAX_GPU_DIR=str(tmp_path / "g"),
  )
  done = subprocess.run(
    ["bash", str(SCRIPT.with_suffix(".sh")), "flush"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  assert (tmp_path / "gpu-flush.log").read_text() == done.stdout
  help_text = subprocess.run(
    ["bash", str(SCRIPT.with_suffix(".sh")), "--help"],
    env={k: v for k, v in env.items() if k != "OUT"},
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert "paper --minutes 9" in help_text and "carry=" in help_text
