"""The steps of a GPU session (issue 14), one command each, run as they are.

Here (CPU), before and after the GPU calls:
  prepare [--data PATH] [--splits test|all]
                         put CIFAR-10's test split (default; 3 MiB) or the
                         whole archive into .gpu/data/ and download the
                         peers' wheels into .gpu/wheels/; prints `carry`
  carry                  the `carry` list for the next call, checked against
                         the 64 MiB that may travel
  restore DIR...         unpack what calls returned (their files_at folders):
                         weights into .gpu/victims/, paper run folders into
                         .gpu/paper/, results into benchmarks/results/
On the GPU machine (`run` tool), each step checks the machine first (setup):
  setup                  device, versions, data, wheels (installed into
                         .gpu/site from the carried .gpu/wheels if missing)
  victims MODEL          train allconv, nin or vgg16 (minutes each on an
                         H100 or H200, bfloat16 compute, weights stored as
                         float16); resumes from the checkpoint of an earlier
                         call
  throughput [MODEL...]  benchmarks/throughput.py on the trained victims
  peers [MODEL...]       benchmarks/peers.py, torch on the GPU
  paper [MODEL...]       benchmarks/paper_table.py; resumes its run folders
  flush                  send what earlier steps could not fit in $OUT
Every device step stops its work in time (--minutes, default 9) to pack what
it made into $OUT: at most 8 files of 16 MiB, 64 MiB in all; what does not
fit waits in .gpu/outbox/ on the machine and goes with the next step's files
while the machine stays warm (30 s after a call). Larger results are .tgz
packs split into 15 MiB parts with a manifest (sha256 of each part and of the
whole); `restore` checks and unpacks them once every part is here.

GPU session plan. A session has 15 minutes of device time, counted from the
asking for a machine until it goes back: a cold start costs 1-2 minutes, a
machine stays warm 30 s after a call (make each call right after the last
one's reply), and no machine starts with less than 4 minutes left. So: few
calls, each with --minutes that leave a minute for the transfers, the sum
within the session. Here, once: `bash scripts/gpu_session.sh prepare --data
../shared/data/cifar10-jpeg.tar.gz` (the test split: the working tree, with
the shipped victims' weights, is over 50 MiB, and the whole archive, 18.5
MiB, would not travel with it). After each session, here: `bash
scripts/gpu_session.sh restore DIR...` with every reply's files_at, then
commit the results; `carry` prints the next carry list.
  The victims train on CPU and ship (pixeljax/weights/); the GPU's work is
  the paper's table at the paper's 500 images and the GPU benchmarks:
  1. run(command="bash scripts/gpu_session.sh paper --minutes 9",
         carry=[".gpu/data", ".gpu/wheels"], timeout_s=600): the paper's
     table on the shipped victims, 1-pixel non-targeted first
  2. run(command="bash scripts/gpu_session.sh throughput --minutes 4",
         same carry, timeout_s=300)
  Later sessions: `peers` (--minutes 6), then `paper` again until the table
  is complete (it resumes its run folders, which `carry` lists).
`victims MODEL` still trains a victim on the GPU (it needs `prepare --splits
all`, and room beside the tree for the 18.5 MiB archive). Its weights are
stored as float16 (VGG16: 38 MiB instead of 76; the card's accuracy is that
of the rounded network). AllConv's and NiN's checkpoints come back and
travel; VGG16's (152 MiB) stays on the machine, so a cut VGG16 run resumes
only while the machine is warm. Every duration is an estimate: nothing here
has run on a GPU yet.

PIXELJAX_GPU_TOY=1 selects a toy configuration (SmallCNN, a few images, no
GPU needed) for the tests; PIXELJAX_GPU_DIR and PIXELJAX_GPU_RESULTS move
.gpu/ and the restore target of results (default benchmarks/results/).
"""

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
MIB = 2**20
DATA_FILE = "cifar10-jpeg.tar.gz"
# Its test split alone (10,000 JPEGs, about 3 MiB): what the attacks and the
# benchmarks read, small enough to travel beside the tree.
TEST_DATA_FILE = "cifar10-jpeg-test.tar.gz"
# The sha256 that ../shared/data/README.md gives for the archive (18.5 MiB).
DATA_SHA256 = "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4"
# The versions the CPU CI tests; pure-Python wheels whose needs (torch,
# torchvision, scipy, scikit-learn, requests, six, tqdm) the GPU image has.
WHEELS = ("torchattacks==3.5.1", "adversarial-robustness-toolbox==1.20.1")
OUT_FILES, OUT_FILE_BYTES, OUT_BYTES = 8, 16 * MIB, 64 * MIB
LOG_RESERVE = 2 * MIB  # the step's log, which the wrapper's tee writes in $OUT
CARRY_BYTES, CARRY_PATHS = 64 * MIB, 8
CHECKPOINT_MAX = 45 * MIB  # a larger checkpoint (VGG16's) cannot come back
PACK_FORMAT = "pixeljax.gpu-pack/1"
VICTIMS = ("allconv", "nin", "vgg16")

# Per victim: epochs, batch 512, one-cycle Nesterov SGD, label smoothing 0.1,
# bfloat16 compute, float32 weights stored as float16 (half the bytes to bring
# back, carry and ship); crop + flip on the device (train.py).
# Chosen to reach 90% on the JPEG test split in a few H100 minutes: untested.
RECIPES = {
  "allconv": "--epochs 40 --batch-size 512 --lr 0.2 --weight-decay 5e-4 "
  "--schedule onecycle --label-smoothing 0.1 --bf16 --weights-dtype float16",
  "nin": "--epochs 60 --batch-size 512 --lr 0.2 --weight-decay 5e-4 "
  "--schedule onecycle --label-smoothing 0.1 --bf16 --weights-dtype float16",
  "vgg16": "--epochs 30 --batch-size 512 --lr 0.1 --weight-decay 5e-4 "
  "--schedule onecycle --label-smoothing 0.1 --bf16 --weights-dtype float16",
}
THROUGHPUT = (
  "--bf16 --batch 4000 --generations 20 --repeats 3 --maxiter 100 "
  "--sizes 1,4,16,64,256,1024,4096 --devices= --stream-images 256 "
  "--slots 64 --stream-maxiter 100"
)
PEERS = "--images 16 --pixels 1,3 --torch-device cuda"
PAPER = "--slots 256 --batch-size 4000 --quiet"
# The toy configuration (PIXELJAX_GPU_TOY=1): the same code paths in seconds.
TOY_VICTIMS = ("smallcnn",)
TOY_RECIPE = (
  "--epochs 1 --batch-size 32 --lr 0.05 --limit-train 96 "
  "--limit-test 64 --schedule onecycle --label-smoothing 0.1 "
  "--weights-dtype float16"
)
TOY_THROUGHPUT = (
  "--bf16 --batch 32 --popsize 8 --generations 1 --repeats 1 "
  "--sizes= --devices= --stream-images 0"
)
TOY_PEERS = (
  "--images 1 --pixels 1 --popsize 10 --maxiter 1 "
  "--forward-seconds 0 --tools pixeljax,art"
)
TOY_PAPER = (
  "--images 2 --popsize 8 --maxiter 2 --pixels 1 --targeted-pixels "
  "--slots 2 --batch-size 16 --no-download --quiet"
)


class StepError(Exception):
  """A problem the person running the step can act on."""


def toy() -> bool:
  return os.environ.get("PIXELJAX_GPU_TOY") == "1"


def gpu_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("PIXELJAX_GPU_DIR") or REPO / ".gpu")


def results_dir() -> pathlib.Path:
  return pathlib.Path(
    os.environ.get("PIXELJAX_GPU_RESULTS") or REPO / "benchmarks" / "results"
  )


def part_bytes() -> int:
  """Size of one part of a pack: under the 16 MiB a file of $OUT may have."""
  return int(os.environ.get("PIXELJAX_GPU_PART_BYTES") or 15 * MIB)


def victims() -> tuple:
  return TOY_VICTIMS if toy() else VICTIMS


def shown(path: pathlib.Path) -> str:
  """``path`` relative to the repository when inside it (commands run there,
  and run folders compare the data path as written)."""
  path = pathlib.Path(path).absolute()
  return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(MIB), b""):
      h.update(block)
  return h.hexdigest()


def tree_bytes(path: pathlib.Path) -> int:
  if path.is_file():
    return path.stat().st_size
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def data_path() -> pathlib.Path:
  """The data the device steps read: the whole archive if `prepare` put it
  there, else its test split."""
  folder = gpu_dir() / "data"
  test_only = folder / TEST_DATA_FILE
  return test_only if test_only.is_file() else folder / DATA_FILE


def _write_atomic(target: pathlib.Path, content):
  """``pixeljax.files.write_atomic``, making ``target``'s folder first."""
  from pixeljax.files import write_atomic  # pixeljax, and jax, when used

  target.parent.mkdir(parents=True, exist_ok=True)
  write_atomic(target, content)


def _copy_atomic(source: pathlib.Path, target: pathlib.Path):
  def copy(file):
    with open(source, "rb") as f:
      shutil.copyfileobj(f, file)

  _write_atomic(target, copy)


# ----------------------------------------------------------------------------
# Here: prepare, carry


def prepare(data, wheels: bool, splits: str = "test"):
  """Puts the data archive, or its test split ("test"), into .gpu/data/;
  downloads the wheels."""
  source = data or os.environ.get("PIXELJAX_DATA")
  if not source or not pathlib.Path(source).is_file():
    raise StepError(
      f"--data: expected the CIFAR-10 archive {DATA_FILE} (or "
      f"set PIXELJAX_DATA), got {source!r}"
    )
  digest = sha256(pathlib.Path(source))
  if digest != DATA_SHA256 and not toy():
    raise StepError(
      f"--data: {source} has sha256 {digest}, not the "
      f"{DATA_SHA256} of {DATA_FILE}"
    )
  folder = gpu_dir() / "data"
  target = folder / (TEST_DATA_FILE if splits == "test" else DATA_FILE)
  # One archive in the folder, the one carried.
  for other in (DATA_FILE, TEST_DATA_FILE):
    if other != target.name:
      (folder / other).unlink(missing_ok=True)
  if splits == "test":
    _write_atomic(target, lambda file: _test_split(source, file))
    print(
      f"wrote the test split of {source} to {shown(target)} "
      f"({target.stat().st_size / MIB:.1f} MiB)"
    )
    digest = sha256(target)
  elif target.is_file() and sha256(target) == digest:
    print(f"{shown(target)}: already there")
  else:
    _copy_atomic(pathlib.Path(source), target)
    print(
      f"copied {source} to {shown(target)} "
      f"({target.stat().st_size / MIB:.1f} MiB)"
    )
  (folder / "SHA256").write_text(f"{digest}  {target.name}\n")
  if wheels:
    download_wheels(gpu_dir() / "wheels")
  carry()


def _test_split(source, file):
  """Writes the members of archive ``source`` under a test/ folder (and the
  folders above them), in order, as a .tar.gz into ``file``."""
  with tarfile.open(source) as archive:
    with tarfile.open(fileobj=file, mode="w:gz") as split:
      for member in archive:
        parts = member.name.split("/")
        if "test" in parts or (member.isdir() and "train" not in parts):
          extracted = archive.extractfile(member) if member.isfile() else None
          split.addfile(member, extracted)


def _wheel_names(folder: pathlib.Path) -> set:
  return {
    p.name.split("-")[0].replace("_", "-").lower() for p in folder.glob("*.whl")
  }


def download_wheels(folder: pathlib.Path):
  wanted = {w.split("==")[0].replace("_", "-") for w in WHEELS}
  if folder.is_dir() and wanted <= _wheel_names(folder):
    print(f"{shown(folder)}: wheels already there")
    return
  folder.mkdir(parents=True, exist_ok=True)
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--no-deps",
      "--only-binary=:all:",
      "--python-version",
      "3.12",
      "--implementation",
      "cp",
      "--platform",
      "manylinux2014_x86_64",
      "-d",
      str(folder),
      *WHEELS,
    ],
    check=True,
  )
  print(
    f"wheels in {shown(folder)}: "
    + ", ".join(sorted(p.name for p in folder.glob("*.whl")))
  )


def working_tree_bytes() -> int:
  """Bytes of what travels without `carry`: tracked files and untracked
  ones that git does not ignore."""
  listed = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd=REPO,
    capture_output=True,
    check=True,
  ).stdout.split(b"\0")
  files = {REPO / os.fsdecode(name) for name in listed if name}
  return sum(p.stat().st_size for p in files if p.is_file())


def carry_candidates() -> list:
  """(path, why) in order of need."""
  g = gpu_dir()
  found = [
    (g / "data", "CIFAR-10 archive (every device step)"),
    (g / "wheels", "torchattacks and ART wheels (peers)"),
  ]
  for model in victims():
    if (g / "victims" / model / f"{model}.json").is_file():
      found.append((g / "victims" / model, f"trained {model}"))
    elif (g / "train" / model / "checkpoint.json").is_file():
      found.append((g / "train" / model, f"{model} checkpoint (resume)"))
  found.append((g / "paper", "paper table run folders (resume)"))
  return [(path, why) for path, why in found if path.exists()]


def carry() -> list:
  """Prints and returns the carry list that fits the 64 MiB with the tree."""
  total = working_tree_bytes()
  print(
    f"working tree (tracked and untracked-not-ignored): {total / MIB:.1f} MiB"
  )
  chosen = []
  for path, why in carry_candidates():
    size = tree_bytes(path)
    fits = total + size <= CARRY_BYTES - MIB and len(chosen) < CARRY_PATHS
    print(
      f"  {'carry' if fits else 'LEAVE'} {shown(path)}: "
      f"{size / MIB:.1f} MiB, {why}"
      + ("" if fits else " (over the 64 MiB that may travel)")
    )
    if fits:
      chosen.append(shown(path))
      total += size
  print(f"carry={json.dumps(chosen)}  # {total / MIB:.1f} MiB travel in all")
  return chosen


# ----------------------------------------------------------------------------
# Packs: an outbox on the device, flushed into $OUT within its limits


def out_dir() -> pathlib.Path:
  out = os.environ.get("OUT")
  if not out or not pathlib.Path(out).is_dir():
    raise StepError(f"OUT: expected the folder the run tool sets, got {out!r}")
  return pathlib.Path(out)


def pack(
  name: str, source: pathlib.Path, files, *, root: str, dest: str, priority: int
) -> pathlib.Path:
  """Queues ``files`` (relative to ``source``) as a .tgz in the outbox, in
  parts of at most part_bytes(), with a manifest naming where `restore`
  puts them: ``dest`` under .gpu/ (root "gpu") or the results folder (root
  "results"). Returns the manifest's path."""
  outbox = gpu_dir() / "outbox"
  outbox.mkdir(parents=True, exist_ok=True)
  created = datetime.datetime.now(datetime.UTC)
  stem = f"{name}-{created:%Y%m%dT%H%M%S%f}"
  whole = outbox / f".{stem}.tgz"
  with tarfile.open(whole, "w:gz", compresslevel=6) as tar:
    for name_in in sorted(files):
      tar.add(source / name_in, arcname=name_in, recursive=False)
  parts, size = [], whole.stat().st_size
  with open(whole, "rb") as f:
    for index in range(1, max(1, -(-size // part_bytes())) + 1):
      part = outbox / f"{stem}.tgz.part{index}"
      part.write_bytes(f.read(part_bytes()))
      parts.append(
        dict(file=part.name, sha256=sha256(part), bytes=part.stat().st_size)
      )
  manifest = dict(
    format=PACK_FORMAT,
    name=name,
    created=created.isoformat(),
    priority=priority,
    root=root,
    dest=dest,
    files=sorted(files),
    sha256=sha256(whole),
    bytes=size,
    parts=parts,
  )
  whole.unlink()
  path = outbox / f"{stem}.manifest.json"
  path.write_text(json.dumps(manifest, indent=1) + "\n")
  print(
    f"packed {name}: {len(files)} files, {size / MIB:.1f} MiB in "
    f"{len(parts)} part(s)"
  )
  return path


def _queue() -> list:
  """Outbox files in sending order: by priority, then age; manifest first.
  A pack whose manifest went in an earlier call still has its parts here."""
  outbox, sent = gpu_dir() / "outbox", gpu_dir() / "sent"
  names = {p.name for d in (outbox, sent) for p in d.glob("*.manifest.json")}
  order = []
  for name in names:
    where = outbox / name if (outbox / name).is_file() else sent / name
    manifest = json.loads(where.read_text())
    files = [outbox / name] + [outbox / p["file"] for p in manifest["parts"]]
    order += [
      ((manifest["priority"], manifest["created"], i), f)
      for i, f in enumerate(files)
      if f.is_file()
    ]
  return [f for _, f in sorted(order, key=lambda t: t[0])]


def flush(again: bool = False) -> list:
  """Copies queued files into $OUT within its limits (the log's share kept
  free) and moves them to .gpu/sent/; returns those still waiting. With
  ``again``, what was sent before is queued anew first (a broken transfer)."""
  out = out_dir()
  present = [p for p in out.rglob("*") if p.is_file()]
  count, used = len(present), sum(p.stat().st_size for p in present)
  used += LOG_RESERVE
  outbox, sent_dir = gpu_dir() / "outbox", gpu_dir() / "sent"
  outbox.mkdir(parents=True, exist_ok=True)
  sent_dir.mkdir(parents=True, exist_ok=True)
  if again:
    for path in sent_dir.glob("*"):
      os.replace(path, outbox / path.name)
  waiting = []
  for path in _queue():
    size = path.stat().st_size
    if (
      count + 1 > OUT_FILES
      or used + size > OUT_BYTES
      or (size > OUT_FILE_BYTES)
    ):
      waiting.append(path)
      continue
    shutil.copyfile(path, out / path.name)
    os.replace(path, sent_dir / path.name)
    count, used = count + 1, used + size
  if waiting:
    print(
      f"WAITING in {shown(gpu_dir() / 'outbox')}: "
      f"{len(waiting)} file(s), "
      f"{sum(p.stat().st_size for p in waiting) / MIB:.1f} MiB; they go "
      "with the next step's files if the machine is still warm (run "
      "`bash scripts/gpu_session.sh flush` now)"
    )
  print(f"$OUT: {count} files, {(used - LOG_RESERVE) / MIB:.1f} MiB")
  return waiting


# ----------------------------------------------------------------------------
# Here: restore


def _safe_members(tar: tarfile.TarFile, where: str) -> list:
  members = tar.getmembers()
  for m in members:
    parts = pathlib.PurePosixPath(m.name).parts
    if not m.isfile() or m.name.startswith("/") or ".." in parts:
      raise StepError(
        f"{where}: member {m.name!r} is not a plain relative "
        "file; refusing to unpack"
      )
  return members


def _destination(manifest: dict, where: str) -> pathlib.Path:
  roots = {"gpu": gpu_dir(), "results": results_dir()}
  dest = pathlib.PurePosixPath(manifest.get("dest", ""))
  if (
    manifest.get("root") not in roots
    or dest.is_absolute()
    or (".." in dest.parts)
  ):
    raise StepError(
      f"{where}: root/dest {manifest.get('root')!r}/"
      f"{str(dest)!r} is not a folder under .gpu/ or the "
      "results folder"
    )
  return roots[manifest["root"]] / dest


def _unpack(manifest_path: pathlib.Path, inbox: pathlib.Path) -> bool:
  """Unpacks one complete pack; False when parts are still missing. A file
  that a newer pack wrote already is kept (a late part can complete an older
  pack): inbox/restored.json records which pack wrote each file."""
  manifest = json.loads(manifest_path.read_text())
  if manifest.get("format") != PACK_FORMAT:
    raise StepError(f"{manifest_path}: not a {PACK_FORMAT} manifest")
  missing = [
    p["file"] for p in manifest["parts"] if not (inbox / p["file"]).is_file()
  ]
  if missing:
    print(
      f"waiting for {len(missing)} of {len(manifest['parts'])} parts of "
      f"{manifest['name']} ({', '.join(missing)}): they are still in the "
      "device's outbox; a `flush` on the same warm machine sends them"
    )
    return False
  whole = inbox / f".{manifest_path.name}.tgz"
  try:
    with open(whole, "wb") as out:
      for part in manifest["parts"]:
        data = (inbox / part["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != part["sha256"]:
          raise StepError(
            f"{inbox / part['file']}: sha256 differs from its "
            "manifest; the transfer broke: `flush --again` on "
            "the same warm machine sends it again"
          )
        out.write(data)
    if sha256(whole) != manifest["sha256"]:
      raise StepError(
        f"{manifest_path}: the joined parts differ from the pack that was made"
      )
    dest = _destination(manifest, str(manifest_path))
    ledger_path = inbox / "restored.json"
    ledger = (
      json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    )
    with tarfile.open(whole, "r:gz") as tar:
      for member in _safe_members(tar, str(manifest_path)):
        target = dest / member.name
        if ledger.get(str(target), "") > manifest["created"]:
          print(f"  kept the newer {shown(target)}")
          continue
        existed = target.exists()
        _write_atomic(target, tar.extractfile(member).read())
        ledger[str(target)] = manifest["created"]
        print(f"  {'replaced' if existed else 'wrote'} {shown(target)}")
    ledger_path.write_text(json.dumps(ledger, indent=1) + "\n")
  finally:
    whole.unlink(missing_ok=True)
  done = inbox / "done"
  done.mkdir(exist_ok=True)
  for name in [manifest_path.name] + [p["file"] for p in manifest["parts"]]:
    os.replace(inbox / name, done / name)
  print(
    f"restored {manifest['name']} ({manifest['created']}) into {shown(dest)}"
  )
  return True


def restore(folders):
  """Unpacks the packs that ``folders`` (files_at of calls) complete."""
  inbox, logs = gpu_dir() / "inbox", gpu_dir() / "logs"
  inbox.mkdir(parents=True, exist_ok=True)
  logs.mkdir(parents=True, exist_ok=True)
  for folder in map(pathlib.Path, folders):
    if not folder.is_dir():
      raise StepError(f"restore: {folder} is not a folder")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
      is_pack = path.name.endswith(".manifest.json") or ".tgz.part" in path.name
      target = (inbox if is_pack else logs) / path.name
      if target.exists() or (inbox / "done" / path.name).exists():
        if is_pack:
          continue  # restored or queued already
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        target = logs / f"{stamp}-{path.name}"
      shutil.copyfile(path, target)
      if not is_pack:
        print(f"log: {shown(target)}")
  manifests = sorted(
    inbox.glob("*.manifest.json"),
    key=lambda p: json.loads(p.read_text())["created"],
  )
  for path in manifests:
    _unpack(path, inbox)
  for model in victims():
    card = gpu_dir() / "victims" / model / f"{model}.json"
    if card.is_file():
      meta = json.loads(card.read_text())
      print(
        f"{model}: test accuracy {meta['test_accuracy']:.4f} "
        f"({meta['param_count']:,} parameters, "
        f"{tree_bytes(card.parent) / MIB:.1f} MiB) in {shown(card.parent)}"
      )
  carry()


# ----------------------------------------------------------------------------
# On the device


class Clock:
  """The step's deadline: its work stops in time to pack and flush."""

  def __init__(self, minutes: float):
    self.deadline = time.monotonic() + 60 * minutes

  def left(self, reserve: float = 0.0) -> float:
    return self.deadline - time.monotonic() - reserve


def site_dir() -> pathlib.Path:
  return gpu_dir() / "site"


# The driver itself takes GPU memory as it needs it (see main): a benchmark
# it starts gets the usual share. This is the caller's own setting.
PREALLOCATE = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")


def child_env(**extra) -> dict:
  """Environment of the benchmark subprocesses: the repository and the
  installed wheels importable, the carried data set as PIXELJAX_DATA."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", PIXELJAX_DATA=shown(data_path()))
  env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
  if PREALLOCATE is not None:
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = PREALLOCATE
  paths = [str(REPO)] + ([str(site_dir())] if site_dir().is_dir() else [])
  env["PYTHONPATH"] = os.pathsep.join(
    paths + [p for p in [os.environ.get("PYTHONPATH")] if p]
  )
  env.update(extra)
  return env


def setup():
  """Prints the machine and versions; checks the data and the models."""
  import flax
  import jax  # here, not at the top: the steps run here need no jax
  import numpy
  import optax

  print(
    f"python {sys.version.split()[0]}, jax {jax.__version__}, flax "
    f"{flax.__version__}, optax {optax.__version__}, numpy "
    f"{numpy.__version__}; backend {jax.default_backend()}: "
    f"{[d.device_kind for d in jax.devices()]}"
  )
  if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi", "-L"], check=False)
  if jax.default_backend() != "gpu" and not toy():
    raise StepError(
      f"setup: JAX sees no GPU (backend "
      f"{jax.default_backend()}); is the CUDA plugin there?"
    )
  data = data_path()
  if not data.is_file():
    raise StepError(
      f"setup: {shown(data)} is missing: name "
      f"{shown(data.parent)} in `carry` (prepare puts it there)"
    )
  record = data.parent / "SHA256"  # written by prepare
  recorded = record.read_text().split()[0] if record.is_file() else DATA_SHA256
  if sha256(data) != recorded:
    raise StepError(
      f"setup: {shown(data)} has another sha256 than "
      f"{recorded}; the copy is damaged"
    )
  print(f"data: {shown(data)} ({data.stat().st_size / MIB:.1f} MiB), sha256 ok")
  from flax import nnx

  from pixeljax.models import create_model
  from pixeljax.models import param_count

  for model in victims():
    shape = nnx.eval_shape(lambda m=model: create_model(m, rngs=nnx.Rngs(0)))
    print(f"model {model}: {param_count(shape):,} parameters")


def install_wheels():
  """Makes torchattacks and ART importable: as installed, or from the
  carried wheels into .gpu/site (on the path of the benchmark steps)."""
  if site_dir().is_dir() and str(site_dir()) not in sys.path:
    sys.path.insert(0, str(site_dir()))
  if all(importlib.util.find_spec(m) for m in ("torchattacks", "art")):
    print("peers: torchattacks and ART importable")
    return
  wheels = sorted((gpu_dir() / "wheels").glob("*.whl"))
  if not wheels:
    print(
      f"peers: torchattacks/ART missing and no wheels in "
      f"{shown(gpu_dir() / 'wheels')}: name it in `carry` for `peers`"
    )
    return
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "-q",
      "--no-index",
      "--no-deps",
      "--no-compile",
      "--no-cache-dir",
      "--upgrade",
      "--target",
      str(site_dir()),
      *map(str, wheels),
    ],
    check=True,
  )
  sys.path.insert(0, str(site_dir()))
  importlib.invalidate_caches()
  print(
    f"peers: installed {', '.join(w.name for w in wheels)} into "
    f"{shown(site_dir())}"
  )


def card_of(model: str):
  """The weights card of a trained victim: .gpu/victims/, else shipped."""
  for card in (
    gpu_dir() / "victims" / model / f"{model}.json",
    REPO / "pixeljax" / "weights" / f"{model}.json",
  ):
    if card.is_file():
      return card
  return None


def _models(asked, step: str) -> list:
  """The models a benchmark step runs on: those asked, else every victim
  with trained weights; paper takes every victim (one without weights here
  keeps the rows of its earlier runs, see paper_table)."""
  models = list(asked) or [
    m for m in victims() if step == "paper" or card_of(m)
  ]
  missing = [m for m in models if not card_of(m)]
  if (missing and step != "paper") or len(missing) == len(models):
    raise StepError(
      f"models: no trained weights for {missing or 'any victim'}"
      "; train them with `victims MODEL` (or carry "
      ".gpu/victims/MODEL)"
    )
  return models


def train_victim(model: str, clock: Clock):
  """Trains ``model`` (or resumes it) until done or the clock says stop."""
  if model not in victims():
    raise StepError(
      f"victims: expected one of {list(victims())}, got {model!r}"
    )
  victim = gpu_dir() / "victims" / model
  if (victim / f"{model}.json").is_file():
    card = json.loads((victim / f"{model}.json").read_text())
    print(
      f"{model}: trained already (test accuracy "
      f"{card['test_accuracy']:.4f}); nothing to do"
    )
    return
  if data_path().name == TEST_DATA_FILE:
    raise StepError(
      f"victims: {shown(data_path())} holds the test split only; training "
      "needs the whole archive: `prepare --splits all` here, and carry "
      f"{shown(data_path().parent)}"
    )
  from pixeljax import train

  run = gpu_dir() / "train" / model
  reserve = 5 if toy() else 90  # float32 evaluation, saving, packing
  recipe = (TOY_RECIPE if toy() else RECIPES[model]).split()
  argv = [
    "--model",
    model,
    "--out",
    shown(run),
    *recipe,
    "--data",
    shown(data_path()),
    "--time-limit",
    str(max(1, int(clock.left(reserve)))),
    "--resume",
  ]
  print("python -m pixeljax.train " + " ".join(argv), flush=True)
  result = train.main(argv)
  if result.complete:
    card = json.loads(result.card_path.read_text())
    names = [result.card_path.name, *card["files"]] + (
      [card["index"]] if card.get("index") else []
    )
    if victim.exists():
      shutil.rmtree(victim)
    victim.mkdir(parents=True)
    for name in names:
      shutil.copyfile(run / name, victim / name)
    pack(
      f"victim-{model}",
      victim,
      names,
      root="gpu",
      dest=f"victims/{model}",
      priority=0,
    )
    print(
      f"{model}: DONE, test accuracy {result.test_accuracy:.4f} "
      f"(float32), {card['training']['train_seconds']:.0f} s of epochs"
    )
    return
  names = ["checkpoint.json", "checkpoint.safetensors"]
  size = sum((run / n).stat().st_size for n in names)
  print(
    f"{model}: PARTIAL, {len(result.history)} epochs, test accuracy "
    f"{result.test_accuracy:.4f}; `victims {model}` again resumes"
  )
  if size <= CHECKPOINT_MAX:
    pack(
      f"checkpoint-{model}",
      run,
      names,
      root="gpu",
      dest=f"train/{model}",
      priority=1,
    )
  else:
    print(
      f"{model}: the checkpoint ({size / MIB:.0f} MiB) cannot come back; "
      "it stays on this machine while it is warm"
    )


def run_until(
  command: list, seconds: float, *, env: dict, grace: float = 45.0
) -> int:
  """Runs ``command`` from the repository root; SIGTERM after ``seconds``
  (the benchmarks then write what they have), SIGKILL ``grace`` later."""
  print("$ " + shlex.join(command), flush=True)
  child = subprocess.Popen(command, cwd=REPO, env=env)
  try:
    return child.wait(timeout=max(1.0, seconds))
  except subprocess.TimeoutExpired:
    print(f"time is up ({seconds:.0f} s): SIGTERM", flush=True)
    child.send_signal(signal.SIGTERM)
    try:
      return child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
      child.kill()
      return child.wait()


def _results_snapshot(folder: pathlib.Path) -> dict:
  return {p.name: p.stat().st_mtime_ns for p in folder.glob("*") if p.is_file()}


def pack_results(step: str, folder: pathlib.Path, before: dict):
  """Queues the result files that ``step`` wrote or changed in ``folder``."""
  after = _results_snapshot(folder)
  names = [n for n, t in after.items() if before.get(n) != t]
  if names:
    pack(f"results-{step}", folder, names, root="results", dest=".", priority=1)
  else:
    print(f"{step}: no result files written")


MODULES = {
  "throughput": "benchmarks.throughput",
  "peers": "benchmarks.peers",
  "paper": "benchmarks.paper_table",
}


def benchmark_args(step: str, models: list, budget=None) -> list:
  """The arguments of one benchmark run (`python -m MODULES[step] ARGS`):
  paper takes every model at once, throughput and peers one."""
  folder = shown(gpu_dir() / "results" / step)
  if step == "paper":
    return [
      "--models",
      *models,
      "--weights-dir",
      shown(gpu_dir() / "weights"),
      "--data",
      shown(data_path()),
      "--out-dir",
      shown(gpu_dir() / "paper"),
      "--results-dir",
      folder,
      *(TOY_PAPER if toy() else PAPER).split(),
    ]
  (model,) = models
  settings = {
    "throughput": TOY_THROUGHPUT if toy() else THROUGHPUT,
    "peers": TOY_PEERS if toy() else PEERS,
  }[step]
  kind = "cpu" if toy() else "gpu"
  return (
    ["--weights", shown(card_of(model)), *settings.split()]
    + (["--budget-seconds", f"{budget:g}"] if budget else [])
    + ["--name", f"{step}_{kind}_{model}", "--results-dir", folder]
  )


def _link_weights(models: list):
  """.gpu/weights/: the cards and files of ``models`` in one folder, the
  form paper_table's --weights-dir takes."""
  weights = gpu_dir() / "weights"
  if weights.exists():
    shutil.rmtree(weights)
  weights.mkdir()
  for model in filter(card_of, models):
    card = card_of(model)
    meta = json.loads(card.read_text())
    for name in [card.name, *meta["files"]] + (
      [meta["index"]] if meta.get("index") else []
    ):
      try:
        os.link(card.parent / name, weights / name)  # VGG16: no 38 MiB copy
      except OSError:
        shutil.copyfile(card.parent / name, weights / name)


def benchmark(step: str, models, clock: Clock, *, tf32: bool = False):
  """throughput and peers: one subprocess per model, the time shared out;
  paper: one subprocess for all models. Packs what they wrote."""
  models = _models(models, step)
  folder = gpu_dir() / "results" / step
  folder.mkdir(parents=True, exist_ok=True)
  before = _results_snapshot(folder)
  python = [sys.executable, "-m", MODULES[step]]
  reserve = 20 if toy() else 90  # the benchmark's last words, packing
  if step == "paper":
    _link_weights(models)
    # One precision for every session of a table: the run folders do not
    # record it.
    precision = "default" if tf32 else "highest"
    mark = gpu_dir() / "paper" / "matmul_precision"
    if mark.is_file() and mark.read_text().strip() != precision:
      raise StepError(
        f"paper: the run folders were made at matmul precision "
        f"{mark.read_text().strip()!r}, not {precision!r}; "
        f"{'drop' if tf32 else 'pass'} --tf32 to resume them"
      )
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(precision + "\n")
    extra = {} if tf32 else {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    print(
      f"matmul precision: {precision}"
      + (" (TF32 on a recent GPU)" if tf32 else "")
    )
    status = run_until(
      python + benchmark_args(step, models),
      clock.left(reserve),
      env=child_env(**extra),
    )
    print(
      f"paper_table exit status {status} (130: cut short, partial table "
      "written; the next `paper` resumes)"
    )
    runs = gpu_dir() / "paper"
    if runs.is_dir():
      names = [
        str(p.relative_to(runs))
        for p in runs.rglob("*")
        if p.is_file() and p.name != "run.lock"
      ]
      pack("paper-runs", runs, names, root="gpu", dest="paper", priority=2)
  else:
    extra = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"} if step == "peers" else {}
    for i, model in enumerate(models):
      share = clock.left(reserve) / (len(models) - i)
      budget = round(0.4 * share) if step == "throughput" else None
      status = run_until(
        python + benchmark_args(step, [model], budget),
        share,
        env=child_env(**extra),
      )
      print(f"{step} {model}: exit status {status}")
  pack_results(step, folder, before)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="bash scripts/gpu_session.sh",
    description=__doc__.split("\n\n")[0],
    epilog=__doc__.split("\n\n", 1)[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  steps = parser.add_subparsers(dest="step", required=True)
  p = steps.add_parser("prepare", help="here: data and wheels into .gpu/")
  p.add_argument("--data", help="the CIFAR-10 archive (default PIXELJAX_DATA)")
  p.add_argument(
    "--splits",
    choices=("test", "all"),
    default="test",
    help="test: the test split only, all the attacks and benchmarks read "
    "(default); all: the whole archive, which `victims` needs",
  )
  p.add_argument("--no-wheels", dest="wheels", action="store_false")
  steps.add_parser("carry", help="here: the carry list for the next call")
  p = steps.add_parser("restore", help="here: unpack returned files")
  p.add_argument("folders", nargs="+", metavar="DIR")
  minutes = argparse.ArgumentParser(add_help=False)
  minutes.add_argument(
    "--minutes",
    type=float,
    default=9.0,
    help="wall time of the step, packing included "
    "(default 9: the run tool stops a command at 10)",
  )
  steps.add_parser("setup", parents=[minutes], help="device: check the machine")
  p = steps.add_parser(
    "victims", parents=[minutes], help="device: train a victim (or resume it)"
  )
  p.add_argument("model", help=f"one of {', '.join(VICTIMS)}")
  for name in ("throughput", "peers", "paper"):
    p = steps.add_parser(
      name, parents=[minutes], help=f"device: python -m {MODULES[name]}"
    )
    p.add_argument(
      "models",
      nargs="*",
      metavar="MODEL",
      help=(
        "default: every victim (one without weights here keeps the rows of "
        "its earlier runs)"
        if name == "paper"
        else "default: every victim with trained weights"
      ),
    )
    if name == "paper":
      p.add_argument(
        "--tf32",
        action="store_true",
        help="JAX's default float32 precision (TF32 on the GPU: "
        "faster) instead of full float32",
      )
  p = steps.add_parser(
    "flush", parents=[minutes], help="device: send the outbox"
  )
  p.add_argument(
    "--again",
    action="store_true",
    help="send again what was sent before (a broken transfer)",
  )
  args = parser.parse_args(argv)
  try:
    if args.step == "prepare":
      prepare(args.data, args.wheels, args.splits)
    elif args.step == "carry":
      carry()
    elif args.step == "restore":
      restore(args.folders)
    else:
      device_step(args)
  except StepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def device_step(args):
  """Runs a step on the device. What earlier steps left in the outbox goes
  into $OUT first (it comes back even if this step is killed), what this
  one makes at the end, whatever happens in between."""
  clock = Clock(args.minutes)
  flush(getattr(args, "again", False))
  try:
    if args.step in MODULES:
      # JAX would take 75% of the GPU at its first use here, and the
      # benchmark subprocess would find too little left.
      os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if args.step != "flush":
      setup()
    if args.step in ("setup", "peers"):
      install_wheels()
    if args.step == "victims":
      train_victim(args.model, clock)
    elif args.step in MODULES:
      benchmark(
        args.step, args.models, clock, tf32=getattr(args, "tf32", False)
      )
  finally:
    if args.step != "flush":
      flush()


if __name__ == "__main__":
  sys.exit(main())
