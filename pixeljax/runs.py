"""A resumable run folder: settings, the attacked images, streamed results.

Layout of a run folder:

    run.json        the settings that decide the results (checked on resume)
    images.npz      the attacked images and what the model said about them
    results.jsonl   one JSON record per finished attack, appended as they finish
    run.lock        held (flock) while a process writes the folder

Records are appended with flush + fsync as they come, so a run killed at any
moment (SIGKILL included) loses only the attacks in flight; a last line
cut short by the kill is dropped when the folder is opened again, and the
attacks it held are redone. Every other file is written whole or not at all
(a temporary file, fsync, then ``os.replace``). A write that fails (a full
disk, a folder made read-only) raises ``InputError`` naming the file; what
was written before stays as it was.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import tempfile
import zipfile

import numpy as np

from pixeljax import files
from pixeljax.errors import InputError
from pixeljax.errors import RunConflictError

SETTINGS_FILE = "run.json"
IMAGES_FILE = "images.npz"
RESULTS_FILE = "results.jsonl"
LOCK_FILE = "run.lock"
# The arrays of images.npz (``paths`` too, for a folder of the user's own).
IMAGE_ARRAYS = (
  "images",
  "index",
  "labels",
  "clean_prob",
  "class_names",
  "looked",
)


def _integer(value) -> bool:
  return type(value) is int


def _number(value) -> bool:
  return type(value) in (int, float)


def _string(value) -> bool:
  return isinstance(value, str)


def _perturbation(value) -> bool:
  """[[x, y, channel values...], ...]: one row of integers per pixel."""
  return isinstance(value, list) and all(
    isinstance(row, list) and all(map(_integer, row)) for row in value
  )


# What the records of a run hold: field -> (its check, whether required). A
# line that breaks its run's schema is damaged (edited by hand, or written by
# something else), never counted.
ATTACK_RECORD = dict(
  image=(_integer, True),
  label=(_integer, True),
  target=(lambda v: v is None or _integer(v), True),
  pixels=(_integer, True),
  success=(lambda v: type(v) is bool, True),
  adv_label=(_integer, True),
  adv_prob=(_number, True),
  true_prob=(_number, False),
  target_prob=(_number, False),
  perturbation=(_perturbation, True),
  queries=(_integer, True),
  generations=(_integer, False),
  seconds_share=(_number, False),
  seconds=(_number, False),  # its name in older run folders
  path=(_string, False),
)
EVAL_RECORD = dict(
  model=(_string, True),
  defence=(_string, True),
  image=(_integer, True),
  label=(_integer, True),
  clean_label=(_integer, True),
  min_pixels=(_integer, True),
  adv_label=(_integer, True),
  queries=(_integer, True),
  perturbation=(_perturbation, True),
)


def record_problem(record, schema: dict) -> str | None:
  """What is wrong with one parsed line of results.jsonl under ``schema``
  (``ATTACK_RECORD``, ``EVAL_RECORD``), or None."""
  if not isinstance(record, dict):
    return f"expected a JSON object, got {type(record).__name__}"
  for name, (check, required) in schema.items():
    if name not in record:
      if required:
        return f"no {name!r}"
    elif not check(record[name]):
      return f"{name!r} is {record[name]!r}"
  return None


class DamagedImagesError(InputError):
  """images.npz is missing, cut short or otherwise unreadable as arrays."""


def task_key(record) -> tuple:
  """What identifies one attack: (pixels, image index, target or None)."""
  return (record["pixels"], record["image"], record["target"])


@contextlib.contextmanager
def writing(path):
  """Turns an ``OSError`` raised inside (a full disk, a folder made
  read-only, ...) into an ``InputError`` (exit 3) naming ``path``."""
  try:
    yield
  except OSError as e:
    raise InputError(
      f"cannot write {path}: {e.strerror or e}; what was written before is "
      "kept: fix that (free some space, ...) and rerun the same command to "
      "resume"
    ) from None


def write_atomic(path, content):
  """Writes ``path`` so that a reader sees the old file or the whole new one.

  ``content``: bytes, or a function that writes them to the binary file it
  is given. Raises ``InputError`` if the write fails; no temporary file is
  left behind.
  """
  with writing(path):
    files.write_atomic(path, content)


def _make_dirs(directory: pathlib.Path) -> list:
  """Creates ``directory`` and its missing parents; returns those it made,
  deepest first."""
  missing = []
  for folder in [directory, *directory.parents]:
    if folder.exists():
      break
    missing.append(folder)
  directory.mkdir(parents=True, exist_ok=True)
  return missing


def check_writable(directory):
  """Raises ``InputError`` if ``directory`` could not be made or written in,
  as far as can be told without making anything (see ``ensure_writable``)."""
  directory = pathlib.Path(directory)
  for folder in [directory, *directory.parents]:
    if folder.exists():
      why = (
        "is not a folder"
        if not folder.is_dir()
        else "is not writable"
        if not os.access(folder, os.W_OK | os.X_OK)
        else None
      )
      if why:
        raise InputError(
          f"output folder {directory} cannot be written: "
          f"{folder} {why}; choose another with --out"
        )
      return


def ensure_writable(directory: pathlib.Path) -> list:
  """Creates ``directory`` if needed and checks that files can be made in it.

  Returns:
    The folders it created (``directory`` and missing parents), deepest first.
  """
  try:
    created = _make_dirs(directory)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise InputError(
      f"output folder {directory} cannot be written: "
      f"{e.strerror or e}; choose another with --out"
    ) from None
  return created


class RunStore:
  """One run folder. Open it with ``RunStore.create_or_resume`` to write,
  or ``RunStore.existing`` to read."""

  def __init__(self, directory, record_schema: dict = ATTACK_RECORD):
    self.directory = pathlib.Path(directory)
    self.record_schema = record_schema
    self._lock = None
    self._made = []  # what create_or_resume created: removed unless started
    self.resumed = False  # set by create_or_resume

  @property
  def results_path(self) -> pathlib.Path:
    return self.directory / RESULTS_FILE

  @classmethod
  def existing(cls, directory, record_schema=ATTACK_RECORD) -> "RunStore":
    """A finished or interrupted run folder, for reading."""
    store = cls(directory, record_schema)
    if not (store.directory / SETTINGS_FILE).is_file():
      raise InputError(
        f"{store.directory} is not a pixeljax run folder "
        f"(no {SETTINGS_FILE}); pass the --out folder of "
        "a `pixeljax attack` run"
      )
    return store

  @classmethod
  def create_or_resume(
    cls,
    directory,
    settings: dict,
    describe=lambda key: key,
    uncompared=(),
    record_schema=ATTACK_RECORD,
  ) -> "RunStore":
    """Opens ``directory`` for writing a run with ``settings``.

    A new folder is made ready; a folder with a run of the same settings is
    resumed (its cut-off last record, if any, is dropped); a folder with other
    settings is refused with ``RunConflictError`` naming each difference.
    ``describe`` turns a settings key into the option a person would change.
    ``uncompared`` names (key, sub-key) pairs of ``settings`` that describe
    rather than decide (where the data came from): they may differ on resume,
    and the saved ones are kept. ``record_schema`` is what its records hold.
    """
    store = cls(directory, record_schema)
    created = ensure_writable(store.directory)
    lock_path = store.directory / LOCK_FILE
    new_lock = not lock_path.exists()
    store._acquire_lock()
    store._made = [lock_path] * new_lock + created
    try:
      store._open(settings, describe, uncompared)
    except BaseException:
      store.close()
      raise
    return store

  def _open(self, settings, describe, uncompared):
    """Checks the saved settings against ``settings`` (see
    ``create_or_resume``)."""
    saved = (
      self.settings() if (self.directory / SETTINGS_FILE).is_file() else None
    )
    if saved is None:
      if self.results_path.exists():
        raise RunConflictError(
          f"{self.directory} holds {RESULTS_FILE} but no {SETTINGS_FILE}; "
          "use an empty folder for --out"
        )
      return
    saved, settings = (_without(s, uncompared) for s in (saved, settings))
    if saved != settings:
      keys = sorted(set(saved) | set(settings))
      diffs = [
        f"  {describe(k)}: saved {saved.get(k)!r}, now {settings.get(k)!r}"
        for k in keys
        if saved.get(k) != settings.get(k)
      ]
      raise RunConflictError(
        f"{self.directory} holds a run with other settings:\n"
        + "\n".join(diffs)
        + "\nRerun with the saved settings to resume "
        "it, or choose another --out folder."
      )
    self._drop_partial_line()
    self.resumed = True

  def _acquire_lock(self):
    self._lock = open(self.directory / LOCK_FILE, "a")
    try:
      fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._lock.close()
      self._lock = None
      raise RunConflictError(
        f"another process is writing {self.directory}; "
        "wait for it or choose another --out"
      ) from None

  def close(self):
    """Releases the folder's lock (also released when the process dies).

    A run that never started (no run.json: it failed or was interrupted
    before) leaves nothing behind: the lock file and the folders that
    ``create_or_resume`` made are removed if they hold nothing else. A folder
    that was there before, and anything else in it, is kept.
    """
    if self._lock is None:
      return
    if not (self.directory / SETTINGS_FILE).exists():
      # Removed while still held, so no other process can take it meanwhile.
      for path in self._made:
        try:
          path.unlink() if path.name == LOCK_FILE else path.rmdir()
        except OSError:  # not empty: something else is in it now
          break
    self._made = []
    self._lock.close()
    self._lock = None

  def start(self, settings: dict, images: dict):
    """Saves the images (a dict of arrays) then the settings, atomically."""
    self.save_images(images)
    self.write_settings(settings)

  def write_settings(self, settings: dict):
    """Writes run.json atomically: from then on the run has started."""
    write_atomic(
      self.directory / SETTINGS_FILE,
      (json.dumps(settings, indent=1) + "\n").encode(),
    )

  def save_images(self, images: dict):
    """Writes images.npz (see ``start``) atomically."""
    write_atomic(self.directory / IMAGES_FILE, lambda f: np.savez(f, **images))

  def settings(self) -> dict:
    """The saved settings (run.json)."""
    path = self.directory / SETTINGS_FILE
    try:
      return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise InputError(f"cannot read {path}: {e}") from None

  def images(self) -> dict:
    """The saved image arrays (see ``start``).

    Raises:
      DamagedImagesError: the file is missing, cut short, or lacks arrays.
      InputError: it cannot be read (no permission, ...).
    """
    path = self.directory / IMAGES_FILE
    try:
      with np.load(path) as z:
        arrays = {name: z[name] for name in z.files}
    except FileNotFoundError:
      raise DamagedImagesError(f"{path} is missing") from None
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
      raise DamagedImagesError(f"{path} is damaged: {e}") from None
    except OSError as e:
      raise InputError(f"cannot read {path}: {e}") from None
    count = len(arrays.get("index", ()))
    if any(name not in arrays for name in IMAGE_ARRAYS) or any(
      len(arrays[name]) != count for name in ("images", "labels", "clean_prob")
    ):
      raise DamagedImagesError(
        f"{path} is damaged: expected the arrays "
        f"{list(IMAGE_ARRAYS)}, one entry per image; "
        f"got {sorted(arrays)}"
      )
    return arrays

  def _drop_partial_line(self):
    """Cuts a last line that a kill left without its newline."""
    path = self.results_path
    if not path.exists():
      return
    with writing(path), open(path, "rb+") as f:
      data = f.read()
      keep = data.rfind(b"\n") + 1
      if keep < len(data):
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())

  def records(self) -> list:
    """Every finished attack's record, in the order written.

    A last line without its newline (a kill mid-write) is ignored; a damaged
    line before it (not JSON, or not a record of this run's schema) is an
    error naming it.
    """
    path = self.results_path
    if not path.exists():
      return []
    lines = path.read_bytes().split(b"\n")
    records = []
    # The element after the last newline is empty, or a cut-off record.
    for number, line in enumerate(lines[:-1], 1):
      try:
        record = json.loads(line)
      except ValueError as e:  # not UTF-8 (UnicodeDecodeError) or not JSON
        problem = str(e)
      else:
        problem = record_problem(record, self.record_schema)
      if problem is not None:
        raise InputError(
          f"{path} line {number} is damaged ({problem}); remove that "
          "line to redo its attack"
        )
      records.append(record)
    return records

  def append(self, records: list):
    """Appends records, one JSON line each, and forces them to disk.

    If that fails, the file is cut back to what it held before (a kill can
    still leave a last line cut short: the next ``create_or_resume`` drops
    it).
    """
    data = "".join(
      json.dumps(r, separators=(",", ":")) + "\n" for r in records
    ).encode()
    with writing(self.results_path):
      fd = os.open(
        self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666
      )
      try:
        size = os.fstat(fd).st_size
        try:
          written = 0
          while written < len(data):
            written += os.write(fd, data[written:])
          os.fsync(fd)
        except OSError:
          with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
          raise
      finally:
        os.close(fd)


def _without(settings: dict, uncompared) -> dict:
  """``settings`` less the (key, sub-key) pairs of ``uncompared``."""
  settings = dict(settings)
  for key, sub in uncompared:
    if isinstance(settings.get(key), dict):
      settings[key] = {k: v for k, v in settings[key].items() if k != sub}
  return settings
