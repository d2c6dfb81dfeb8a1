"""Reruns the battery of bad and unusual inputs of issue 28 against this
checkout, as a new user would meet them, and writes the verdicts.

Each case runs in its own process under a time limit (a hang is a verdict,
not a stuck script): a command line of `pixeljax` or `pixeljax train`, or a
few lines of Python against the API. A case passes when it ends within the
limit with the exit code a user expects (0 for a correct result, 2 for usage,
3 for a bad model or file; a Python case exits 0 after catching the typed
error it expects), prints no traceback, and says what its pattern says.
Cases of several steps (a refused model, then the corrected command in the
same folder) pass when every step does.

  python scripts/edge_battery.py [--out benchmarks/results/edge_battery.md]
      [-k TEXT]  # only the cases whose name holds TEXT

Needs torch and onnxruntime (the `peers` and `onnx` extras); the training
cases read CIFAR-10 from PIXELJAX_DATA and are skipped without it. About 5
minutes on a 2-core CPU. Results: benchmarks/results/edge_battery.md.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import safetensors.numpy

REPO = pathlib.Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 120
# A run small enough to take seconds: the shipped SmallCNN, 2 images.
TINY_ATTACK = [
  "--images", "2", "--popsize", "10", "--maxiter", "2",
  "--no-download", "--no-figures", "--no-examples", "--quiet",
]  # fmt: skip
TINY_EVAL = [
  "--model", "smallcnn", "--images", "2", "--max-pixels", "1",
  "--no-download", "--no-figures", "--quiet",
]  # fmt: skip

FACTORY = '''\
"""Small torch models, each failing the way a user's model can."""
import torch


class Net(torch.nn.Module):
  """NHWC pixels 0..255 [B, 32, 32, 3] -> logits [B, 10]."""

  def __init__(self, scale=1.0, dropout=False):
    super().__init__()
    torch.manual_seed(0)
    self.conv = torch.nn.Conv2d(3, 8, 3)
    self.drop = torch.nn.Dropout(0.5) if dropout else torch.nn.Identity()
    self.head = torch.nn.Linear(8, 10)
    self.scale = scale

  def forward(self, x):
    y = torch.relu(self.conv(x.permute(0, 3, 1, 2) / 255.0)).mean(dim=(2, 3))
    return self.head(self.drop(y)) * self.scale


class FirstOnly(Net):
  def forward(self, x):
    return super().forward(x)[:1]


class OneAtATime(Net):
  def forward(self, x):
    if x.shape[0] != 1:
      raise RuntimeError(f"expected one image, got {x.shape[0]}")
    return super().forward(x)


class BatchOfOne(Net):
  """Its batch of 1 hard-coded in a reshape, as an export of x.view(1, -1)."""

  def __init__(self):
    super().__init__()
    self.flat = torch.nn.Linear(32 * 32 * 3, 10)

  def forward(self, x):
    return self.flat(x.reshape(1, -1) / 255.0)


def good():
  return Net().eval()


def nan_logits():
  return Net(scale=float("nan")).eval()


def dropout_in_training():
  module = Net(dropout=True).eval()
  module.drop.train()
  return module


def first_only():
  return FirstOnly().eval()


def one_at_a_time():
  return OneAtATime().eval()
'''

API_PRELUDE = """\
import re
import jax, jax.numpy as jnp, numpy as np, pixeljax
from pixeljax import adapters, defences
from pixeljax.data import load_cifar10_sample
from pixeljax.models.weights import load_predict
sample = load_cifar10_sample()
images, labels = sample.images[:2], sample.labels[:2]
predict = load_predict("smallcnn")
def expect(error, pattern, call):
  try:
    call()
  except error as e:
    assert re.search(pattern, str(e)), str(e)
    print(type(e).__name__ + ":", e)
  else:
    raise SystemExit("no error")
"""


@dataclasses.dataclass
class Step:
  """One process: `argv` after `python -m`, or Python `code`."""

  argv: list[str] | None = None
  code: str | None = None
  exits: tuple[int, ...] = (0,)
  says: str = ""  # a regex its output must match
  before: object = None  # a callable run first (damages a folder, ...)


@dataclasses.dataclass
class Case:
  group: str
  name: str
  steps: list[Step]
  needs_data: bool = False


def _cli(*args, **kw) -> Step:
  return Step(argv=["pixeljax.cli", *map(str, args)], **kw)


def _train(*args, **kw) -> Step:
  """`python -m pixeljax.train --model smallcnn ARGS`."""
  return Step(
    argv=["pixeljax.train", "--model", "smallcnn", *map(str, args)], **kw
  )


def _api(code: str, **kw) -> Step:
  return Step(code=API_PRELUDE + textwrap.dedent(code), **kw)


def _fixtures(root: pathlib.Path) -> None:
  """Writes the factory, ONNX files, damaged cards and checkpoints."""
  import torch

  sys.path.insert(0, str(root))
  (root / "factory.py").write_text(FACTORY)
  (root / "broken.py").write_text("import torch\n\ndef build(:\n  pass\n")
  factory = __import__("factory")

  def export(module, name):
    torch.onnx.export(
      module,
      (torch.zeros(1, 32, 32, 3),),
      str(root / name),
      dynamo=False,
      input_names=["pixels"],
      dynamic_axes={"pixels": {0: "batch"}},
    )

  export(factory.good(), "good.onnx")
  export(factory.nan_logits(), "nan.onnx")
  export(factory.BatchOfOne().eval(), "batch_of_one.onnx")
  (root / "not.onnx").write_text("not a graph\n")
  (root / "empty.onnx").write_bytes(b"")

  # Cards of the shipped SmallCNN with NaN weights, in three folders: two
  # to be mended in place, one left as it is.
  card = REPO / "pixeljax" / "weights" / "smallcnn"
  arrays = safetensors.numpy.load_file(card.with_suffix(".safetensors"))
  arrays = {k: v * np.nan for k, v in arrays.items()}
  for folder in ("nan", "attack_card", "eval_card"):
    (root / folder).mkdir()
    shutil.copy(card.with_suffix(".json"), root / folder / "smallcnn.json")
    safetensors.numpy.save_file(arrays, root / folder / "smallcnn.safetensors")
    _reseal(root / folder / "smallcnn.json")


def _reseal(card: pathlib.Path) -> None:
  """Writes the sha256 of the card's weights file into the card, as
  `pixeljax train` would have: the weights are then the card's own."""
  meta = json.loads(card.read_text())
  weights = card.with_suffix(".safetensors")
  digest = hashlib.sha256(weights.read_bytes()).hexdigest()
  meta["files"] = {weights.name: digest}
  card.write_text(json.dumps(meta, indent=1))


def _mend(folder: pathlib.Path) -> None:
  """Puts the shipped SmallCNN's weights back into a card's folder."""
  card = REPO / "pixeljax" / "weights" / "smallcnn.safetensors"
  shutil.copy(card, folder / "smallcnn.safetensors")
  _reseal(folder / "smallcnn.json")


def _damaged_checkpoint(root: pathlib.Path, kind: str) -> pathlib.Path:
  """A checkpoint folder whose files are damaged as `kind` says."""
  out = root / f"ckpt_{kind.replace(' ', '_')}"
  out.mkdir()
  meta = dict(
    epoch=1,
    step=3,
    config=dict(model="smallcnn", epochs=2, batch_size=16),
    history=[dict(epoch=1, loss=2.3, test_acc=0.1, seconds=1.0)],
  )
  text = json.dumps(meta)
  tensors = safetensors.numpy.save({"params['w']": np.zeros(64, np.float32)})
  if kind == "no config":
    text = json.dumps({k: v for k, v in meta.items() if k != "config"})
  elif kind == "truncated json":
    text = text[: len(text) // 2]
  elif kind == "truncated arrays":
    tensors = tensors[: len(tensors) // 2]
  (out / "checkpoint.json").write_text(text)
  (out / "checkpoint.safetensors").write_bytes(tensors)
  return out


def _replaced(pattern: bytes, new: bytes, line: bytes) -> bytes:
  """`line` with `pattern` replaced; an error if it does not occur."""
  edited, count = re.subn(pattern, new, line)
  if not count:
    raise AssertionError(f"no {pattern!r} in {line!r}")
  return edited


def _edit_first_record(folder: pathlib.Path, edit) -> None:
  path = folder / "results.jsonl"
  lines = path.read_bytes().splitlines(keepends=True)
  lines[0] = edit(lines[0])
  path.write_bytes(b"".join(lines))


def _cases(root: pathlib.Path) -> list[Case]:
  t = root
  fx = f"{t}/factory.py"
  ds = ["--distributed-timeout", "8", "--num-processes", "2"]
  cases = [
    # Silent wrong results.
    Case(
      "silent",
      "from_torch, a submodule in training mode",
      [
        _api(f"""\
        import sys
        sys.path.insert(0, "{t}")
        import factory
        expect(ValueError, "training mode",
               lambda: adapters.from_torch(factory.dropout_in_training()))
        """),
      ],
    ),
    Case(
      "silent",
      "--torch, a submodule in training mode: the loader sets eval mode",
      [
        _cli(
          "attack",
          "--torch",
          f"{fx}:dropout_in_training",
          "--out",
          t / "a1",
          *TINY_ATTACK,
        ),
      ],
    ),
    Case(
      "silent",
      "eval --defence bits:200",
      [
        _cli(
          "eval",
          "--defence",
          "bits:200",
          "--out",
          t / "e1",
          *TINY_EVAL,
          exits=(2,),
          says=r"bits",
        ),
      ],
    ),
    Case(
      "silent",
      "defences.bit_depth(predict, 200) in Python",
      [
        _api(
          "expect(ValueError, 'bits', lambda: defences.bit_depth(predict, 200))"
        ),
      ],
    ),
    *[
      Case(
        "silent",
        f"train {option} {value}",
        [_train(option, value, "--out", t / "t1", exits=(2,), says=says)],
      )
      for option, value, says in (
        ("--lr", "nan", r"lr"),
        ("--lr", "-1", r"lr"),
        ("--time-limit", "nan", r"time-limit|time_limit"),
      )
    ],
    Case(
      "silent",
      'a record edited to "success": "maybe"',
      [
        _cli("attack", "--model", "smallcnn", "--out", t / "r1", *TINY_ATTACK),
        _cli(
          "attack",
          "--model",
          "smallcnn",
          "--out",
          t / "r1",
          *TINY_ATTACK,
          exits=(3,),
          says=r"results.jsonl line 1 is damaged.*remove that line",
          before=lambda: _edit_first_record(
            t / "r1",
            lambda b: _replaced(rb'"success": ?\w+', b'"success": "maybe"', b),
          ),
        ),
      ],
    ),
    Case(
      "silent",
      "a byte of invalid UTF-8 in results.jsonl",
      [
        _cli("attack", "--model", "smallcnn", "--out", t / "r2", *TINY_ATTACK),
        _cli(
          "attack",
          "--model",
          "smallcnn",
          "--out",
          t / "r2",
          *TINY_ATTACK,
          exits=(3,),
          says=r"results.jsonl line 1 is damaged.*remove that line",
          before=lambda: _edit_first_record(
            t / "r2", lambda b: b[:5] + b"\xff" + b[6:]
          ),
        ),
      ],
    ),
    # Stuck folders: refused, then the corrected command in the same folder.
    Case(
      "stuck",
      "--onnx with NaN logits, then a good file",
      [
        _cli(
          "attack",
          "--onnx",
          t / "model.onnx",
          "--out",
          t / "s1",
          *TINY_ATTACK,
          exits=(3,),
          says=r"NaN",
          before=lambda: shutil.copy(t / "nan.onnx", t / "model.onnx"),
        ),
        _cli(
          "attack",
          "--onnx",
          t / "model.onnx",
          "--out",
          t / "s1",
          *TINY_ATTACK,
          before=lambda: shutil.copy(t / "good.onnx", t / "model.onnx"),
        ),
      ],
    ),
    Case(
      "stuck",
      "--torch with NaN logits, then a good factory",
      [
        _cli(
          "attack",
          "--torch",
          f"{fx}:nan_logits",
          "--out",
          t / "s2",
          *TINY_ATTACK,
          exits=(3,),
          says=r"NaN",
        ),
        _cli(
          "attack", "--torch", f"{fx}:good", "--out", t / "s2", *TINY_ATTACK
        ),
      ],
    ),
    *[
      Case(
        "stuck",
        f"{cmd} --weights card of NaN weights, mended",
        [
          _cli(
            cmd,
            "--weights",
            t / folder / "smallcnn.json",
            "--out",
            t / f"s_{cmd}",
            *tiny,
            exits=(3,),
            says=r"NaN|finite",
          ),
          _cli(
            cmd,
            "--weights",
            t / folder / "smallcnn.json",
            "--out",
            t / f"s_{cmd}",
            *tiny,
            before=lambda folder=folder: _mend(t / folder),
          ),
        ],
      )
      for cmd, folder, tiny in (
        ("attack", "attack_card", TINY_ATTACK),
        ("eval", "eval_card", TINY_EVAL[2:]),
      )
    ],
    Case(
      "stuck",
      "eval --defence bits:2000, then bits:4",
      [
        _cli(
          "eval",
          "--defence",
          "bits:2000",
          "--out",
          t / "s5",
          *TINY_EVAL,
          exits=(2,),
          says=r"bits",
        ),
        _cli("eval", "--defence", "bits:4", "--out", t / "s5", *TINY_EVAL),
      ],
    ),
    # Hangs and unbounded memory.
    Case(
      "hang",
      "defences.median_filter(predict, 999)",
      [
        _api(
          "expect(ValueError, 'size', "
          "lambda: defences.median_filter(predict, 999))"
        ),
      ],
    ),
    Case(
      "hang",
      "a 33x33 median on 4x4 images",
      [
        _api("""\
      expect(ValueError, 'size', lambda: defences.median_filter(
        lambda x: x.mean((1, 2)), 33)(jnp.zeros((1, 4, 4, 3))))
      m = defences.median_filter(lambda x: x.mean((1, 2)), 9)
      expect(ValueError, 'larger|window|image',
             lambda: m(jnp.zeros((1, 4, 4, 3))))
      """),
      ],
    ),
    Case(
      "hang",
      "eval --defence median:999",
      [
        _cli(
          "eval",
          "--defence",
          "median:999",
          "--out",
          t / "h1",
          *TINY_EVAL,
          exits=(2,),
          says=r"median",
        ),
      ],
    ),
    Case(
      "hang",
      "eval --defence blur:1e4",
      [
        _cli(
          "eval",
          "--defence",
          "blur:1e4",
          "--out",
          t / "h2",
          *TINY_EVAL,
          exits=(2,),
          says=r"blur",
        ),
      ],
    ),
    Case(
      "hang",
      "eval --defence median:9 runs",
      [
        _cli("eval", "--defence", "median:9", "--out", t / "h3", *TINY_EVAL),
      ],
    ),
    Case(
      "hang",
      "eval --defence median:11",
      [
        _cli(
          "eval",
          "--defence",
          "median:11",
          "--out",
          t / "h4",
          *TINY_EVAL,
          exits=(2,),
          says=r"median",
        ),
      ],
    ),
    Case(
      "hang",
      "attack --folder --size 100000",
      [
        _cli(
          "attack",
          "--folder",
          t,
          "--size",
          "100000",
          "--out",
          t / "h5",
          *TINY_ATTACK,
          exits=(2,),
          says=r"size",
        ),
      ],
    ),
    Case(
      "hang",
      "attack --folder --size 2000",
      [
        _cli(
          "attack",
          "--folder",
          t,
          "--size",
          "2000",
          "--out",
          t / "h6",
          *TINY_ATTACK,
          exits=(2,),
          says=r"size",
        ),
      ],
    ),
    Case(
      "hang",
      "--distributed, coordinator unreachable",
      [
        _cli(
          "attack",
          "--distributed",
          "--coordinator",
          "nohost.invalid:1",
          "--process-id",
          "0",
          *ds,
          "--out",
          t / "d1",
          *TINY_ATTACK,
          exits=(3,),
          says=r"gave up after 8 s|coordinator",
        ),
      ],
    ),
    Case(
      "hang",
      "--distributed, process 0 whose peer never starts",
      [
        _cli(
          "attack",
          "--distributed",
          "--coordinator",
          "127.0.0.1:29517",
          "--process-id",
          "0",
          *ds,
          "--out",
          t / "d2",
          *TINY_ATTACK,
          exits=(3,),
          says=r"gave up after 8 s",
        ),
      ],
    ),
    Case(
      "hang",
      "--distributed, process 1 started alone",
      [
        _cli(
          "attack",
          "--distributed",
          "--coordinator",
          "127.0.0.1:29518",
          "--process-id",
          "1",
          *ds,
          "--out",
          t / "d3",
          *TINY_ATTACK,
          exits=(3,),
          says=r"gave up after 8 s",
        ),
      ],
    ),
    # Tracebacks from the command line.
    *[
      Case(
        "traceback",
        f"eval --defence {spec}",
        [
          _cli(
            "eval",
            "--defence",
            spec,
            "--out",
            t / "x",
            *TINY_EVAL,
            exits=(2,),
            says=spec.split(":")[0],
          ),
        ],
      )
      for spec in (
        "median:0",
        "median:-1",
        "bits:0",
        "blur:0",
        "blur:inf",
        "blur:nan",
      )
    ],
    Case(
      "traceback",
      "attack --seed 2**63",
      [
        _cli(
          "attack",
          "--seed",
          "9223372036854775808",
          "--out",
          t / "x",
          *TINY_ATTACK,
          exits=(2,),
          says=r"seed",
        ),
      ],
    ),
    Case(
      "traceback",
      "eval --seed 2**63",
      [
        _cli(
          "eval",
          "--seed",
          "9223372036854775808",
          "--out",
          t / "x",
          *TINY_EVAL,
          exits=(2,),
          says=r"seed",
        ),
      ],
    ),
    Case(
      "traceback",
      "train --seed 2**63",
      [
        _train(
          "--seed",
          "9223372036854775808",
          "--out",
          str(t / "x"),
          exits=(2,),
          says=r"seed",
        ),
      ],
    ),
    Case(
      "traceback",
      "--distributed --coordinator garbage",
      [
        _cli(
          "attack",
          "--distributed",
          "--coordinator",
          "garbage",
          *ds,
          "--process-id",
          "0",
          "--out",
          t / "x",
          *TINY_ATTACK,
          exits=(2,),
          says=r"coordinator",
        ),
      ],
    ),
    Case(
      "traceback",
      "--torch factory with a syntax error",
      [
        _cli(
          "attack",
          "--torch",
          f"{t}/broken.py:build",
          "--out",
          t / "x",
          *TINY_ATTACK,
          exits=(3,),
          says=r"broken\.py.*line 3|line 3",
        ),
      ],
    ),
    Case(
      "traceback",
      "--torch module returning [1, K] whatever the batch",
      [
        _cli(
          "attack",
          "--torch",
          f"{fx}:first_only",
          "--out",
          t / "x",
          *TINY_ATTACK,
          exits=(3,),
          says=r"\[B, K\]",
        ),
      ],
    ),
    Case(
      "traceback",
      "--torch module raising at batch > 1",
      [
        _cli(
          "attack",
          "--torch",
          f"{fx}:one_at_a_time",
          "--out",
          t / "x1",
          *TINY_ATTACK,
          exits=(3,),
          says=r"batch",
        ),
      ],
    ),
    *[
      Case(
        "traceback",
        f"train --resume over {kind}",
        [
          _train(
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--quiet",
            "--resume",
            "--out",
            str(t / f"ckpt_{kind.replace(' ', '_')}"),
            exits=(3,),
            says=r"checkpoint.*(start over|without --resume)",
            before=lambda kind=kind: _damaged_checkpoint(t, kind),
          ),
        ],
        needs_data=True,
      )
      for kind in ("truncated arrays", "no config", "truncated json")
    ],
    Case(
      "traceback",
      "incremental=True, predict untraceable at batch 1",
      [
        _api("""\
      def picky(x):
        if x.shape[0] == 1:
          raise ValueError("needs a batch of several images")
        return predict(x)
      expect(ValueError, 'incremental', lambda: pixeljax.batched_attack(
        picky, images, labels, key=jax.random.key(0), popsize=8, maxiter=2,
        incremental=True))
      """),
      ],
    ),
    Case(
      "traceback",
      "--onnx graph dynamic in name only (runs batch 1 only)",
      [
        _cli(
          "attack",
          "--onnx",
          t / "batch_of_one.onnx",
          "--out",
          t / "o1",
          *TINY_ATTACK,
          says=r"one image per call|batch_size=1|batch 1",
        ),
      ],
    ),
    # Raw or misfiled errors.
    Case(
      "misfiled",
      "from_onnx on a file that is not ONNX",
      [
        _api(
          f"expect(ValueError, 'not.onnx', "
          f"lambda: adapters.from_onnx('{t}/not.onnx'))"
        ),
      ],
    ),
    Case(
      "misfiled",
      "from_onnx on an empty file",
      [
        _api(
          f"expect(ValueError, 'empty.onnx', "
          f"lambda: adapters.from_onnx('{t}/empty.onnx'))"
        ),
      ],
    ),
    Case(
      "misfiled",
      "--weights NaN card leaves nothing behind",
      [
        _cli(
          "attack",
          "--weights",
          t / "nan" / "smallcnn.json",
          "--out",
          t / "m1",
          *TINY_ATTACK,
          exits=(3,),
          says=r"NaN|finite",
        ),
        Step(
          code=f"import os, sys; d = '{t}/m1'; left = os.listdir(d) if "
          "os.path.isdir(d) else []; print('left:', left); "
          "sys.exit(1 if {'images.npz', 'run.json'} & set(left) "
          "else 0)"
        ),
      ],
    ),
    Case(
      "misfiled",
      "train --init with a bad card",
      [
        _train(
          "--init",
          str(t / "not.onnx"),
          "--epochs",
          "1",
          "--quiet",
          "--out",
          str(t / "t4"),
          exits=(3,),
          says=r"not\.onnx",
        ),
      ],
      needs_data=True,
    ),
    Case(
      "misfiled",
      "batched_attack(key=None), a random search",
      [
        _api(
          "expect(TypeError, 'key', lambda: pixeljax.batched_attack("
          "predict, images, labels, key=None, popsize=8, maxiter=2))"
        ),
      ],
    ),
  ]
  return cases


def _run(step: Step, env: dict) -> tuple[int | None, str, float]:
  """(exit code or None on time-out, output, seconds) of one step."""
  if step.before is not None:
    step.before()
  argv = (
    [sys.executable, "-m", *step.argv]
    if step.argv
    else [sys.executable, "-c", step.code]
  )
  start = time.perf_counter()
  try:
    done = subprocess.run(
      argv,
      capture_output=True,
      env=env,
      cwd=REPO,
      timeout=TIME_LIMIT_S,
      stdin=subprocess.DEVNULL,
    )
  except subprocess.TimeoutExpired as e:
    output = (e.stdout or b"") + (e.stderr or b"")
    return None, output.decode(errors="replace"), time.perf_counter() - start
  output = (done.stdout + done.stderr).decode(errors="replace")
  return done.returncode, output, time.perf_counter() - start


def _verdict(step: Step, code, output: str) -> str:
  if code is None:
    return f"hang (past {TIME_LIMIT_S} s)"
  if "Traceback (most recent call last)" in output:
    return f"traceback (exit {code})"
  if code not in step.exits:
    return f"exit {code}, expected {'/'.join(map(str, step.exits))}"
  if step.says and not re.search(step.says, output, re.IGNORECASE):
    return f"says nothing matching {step.says!r}"
  return "ok"


def _message(output: str, root: pathlib.Path) -> str:
  """The output's most telling line, with the scratch folder shortened."""
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if re.search(r"error", line, re.I)]
  quiet = [line for line in lines if not re.search(r"warn", line, re.I)]
  line = (errors or quiet or lines or [""])[-1]
  line = re.sub(r"^\S+\.py:\d+: ", "", line)  # a warning's source file
  return line.replace(str(root), "$TMP")[:160].replace("|", "\\|")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--out", default="benchmarks/results/edge_battery.md", type=pathlib.Path
  )
  parser.add_argument(
    "-k", default="", help="only the cases whose name holds this text"
  )
  args = parser.parse_args(argv)
  env = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "JAX_PLATFORMS": "cpu",
    "TQDM_DISABLE": "1",
  }
  has_data = bool(os.environ.get("PIXELJAX_DATA"))
  rows, failures = [], 0
  with tempfile.TemporaryDirectory(prefix="edge_battery_") as scratch:
    root = pathlib.Path(scratch)
    _fixtures(root)
    for case in _cases(root):
      if args.k not in case.name:
        continue
      if case.needs_data and not has_data:
        rows.append((case, "skipped (no PIXELJAX_DATA)", 0.0, ""))
        continue
      verdict, seconds, message = "ok", 0.0, ""
      for step in case.steps:
        code, output, took = _run(step, env)
        seconds += took
        verdict = _verdict(step, code, output)
        message = _message(output, root)
        if verdict != "ok":
          break
      failures += verdict != "ok"
      rows.append((case, verdict, seconds, message))
      print(f"{verdict:>10}  {seconds:5.1f} s  {case.group}: {case.name}")
  lines = [
    "# Edge-case battery (issue 28)",
    "",
    f"`python scripts/edge_battery.py`: {len(rows)} cases, {failures} not as "
    f"expected; each case in its own process, {TIME_LIMIT_S} s at most.",
    "",
    "| group | case | verdict | s | what the user reads (last error line) |",
    "|---|---|---|---:|---|",
    *[
      f"| {c.group} | {c.name} | {v} | {s:.1f} | `{m}` |" for c, v, s, m in rows
    ],
    "",
  ]
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text("\n".join(lines))
  print(f"{failures} of {len(rows)} cases not as expected; wrote {args.out}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
