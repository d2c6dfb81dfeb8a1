"""A resumable run folder: settings, the attacked images, streamed results.

Layout of a run folder:

    run.json        the settings that decide the results (checked on resume)
    images.npz      the attacked images and what the model said about them
    results.jsonl   one JSON record per finished attack, appended as they finish
    run.lock        held (flock) while a process writes the folder

Records are appended with flush + fsync as they come, so a run killed at any
moment (SIGKILL included) loses only the attacks in flight; a last line
cut short by the kill is dropped when the folder is opened again, and the
attacks it held are redone.
"""

import fcntl
import json
import os
import pathlib
import tempfile

import numpy as np

from pixeljax.errors import InputError
from pixeljax.errors import RunConflictError

SETTINGS_FILE = "run.json"
IMAGES_FILE = "images.npz"
RESULTS_FILE = "results.jsonl"
LOCK_FILE = "run.lock"


def task_key(record) -> tuple:
  """What identifies one attack: (pixels, image index, target or None)."""
  return (record["pixels"], record["image"], record["target"])


def _write_atomic(path: pathlib.Path, data: bytes):
  """Writes ``path`` so that a reader sees the old file or the whole new one."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def ensure_writable(directory: pathlib.Path):
  """Creates ``directory`` if needed and checks that files can be made in it."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise InputError(f"output folder {directory} cannot be written: "
                     f"{e.strerror or e}; choose another with --out") from None


class RunStore:
  """One run folder. Open it with ``RunStore.create_or_resume`` to write,
  or ``RunStore.existing`` to read."""

  def __init__(self, directory):
    self.directory = pathlib.Path(directory)
    self._lock = None
    self.resumed = False  # set by create_or_resume

  @property
  def results_path(self) -> pathlib.Path:
    return self.directory / RESULTS_FILE

  @classmethod
  def existing(cls, directory) -> "RunStore":
    """A finished or interrupted run folder, for reading."""
    store = cls(directory)
    if not (store.directory / SETTINGS_FILE).is_file():
      raise InputError(f"{store.directory} is not a pixeljax run folder "
                       f"(no {SETTINGS_FILE}); pass the --out folder of "
                       "a `pixeljax attack` run")
    return store

  @classmethod
  def create_or_resume(cls, directory, settings: dict,
                       describe=lambda key: key) -> "RunStore":
    """Opens ``directory`` for writing a run with ``settings``.

    A new folder is made ready; a folder with a run of the same settings is
    resumed (its cut-off last record, if any, is dropped); a folder with other
    settings is refused with ``RunConflictError`` naming each difference.
    ``describe`` turns a settings key into the option a person would change.
    """
    store = cls(directory)
    ensure_writable(store.directory)
    store._acquire_lock()
    saved = store.settings() if (
        store.directory / SETTINGS_FILE).is_file() else None
    if saved is None:
      if store.results_path.exists():
        raise RunConflictError(
            f"{store.directory} holds {RESULTS_FILE} but no {SETTINGS_FILE}; "
            "use an empty folder for --out")
    elif saved != settings:
      keys = sorted(set(saved) | set(settings))
      diffs = [f"  {describe(k)}: saved {saved.get(k)!r}, "
               f"now {settings.get(k)!r}"
               for k in keys if saved.get(k) != settings.get(k)]
      raise RunConflictError(
          f"{store.directory} holds a run with other settings:\n"
          + "\n".join(diffs) + "\nRerun with the saved settings to resume "
          "it, or choose another --out folder.")
    else:
      store._drop_partial_line()
      store.resumed = True
    return store

  def _acquire_lock(self):
    self._lock = open(self.directory / LOCK_FILE, "a")
    try:
      fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._lock.close()
      raise RunConflictError(f"another process is writing {self.directory}; "
                             "wait for it or choose another --out") from None

  def close(self):
    """Releases the folder's lock (also released when the process dies)."""
    if self._lock is not None:
      self._lock.close()
      self._lock = None

  def start(self, settings: dict, images: dict):
    """Saves the images (a dict of arrays) then the settings, atomically."""
    path = self.directory / IMAGES_FILE
    tmp = path.with_name(f".{IMAGES_FILE}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **images)
    os.replace(tmp, path)
    _write_atomic(self.directory / SETTINGS_FILE,
                  (json.dumps(settings, indent=1) + "\n").encode())

  def settings(self) -> dict:
    """The saved settings (run.json)."""
    path = self.directory / SETTINGS_FILE
    try:
      return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise InputError(f"cannot read {path}: {e}") from None

  def images(self) -> dict:
    """The saved image arrays (see ``start``)."""
    path = self.directory / IMAGES_FILE
    try:
      with np.load(path) as z:
        return {name: z[name] for name in z.files}
    except (OSError, ValueError) as e:
      raise InputError(f"cannot read {path}: {e}") from None

  def _drop_partial_line(self):
    """Cuts a last line that a kill left without its newline."""
    path = self.results_path
    if not path.exists():
      return
    with open(path, "rb+") as f:
      data = f.read()
      keep = data.rfind(b"\n") + 1
      if keep < len(data):
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())

  def records(self) -> list:
    """Every finished attack's record, in the order written.

    A last line without its newline (a kill mid-write) is ignored; a damaged
    line before it is an error.
    """
    path = self.results_path
    if not path.exists():
      return []
    lines = path.read_bytes().split(b"\n")
    records = []
    # The element after the last newline is empty, or a cut-off record.
    for number, line in enumerate(lines[:-1], 1):
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        raise InputError(f"{path} line {number} is damaged; remove that "
                         "line to redo its attack") from None
    return records

  def append(self, records: list):
    """Appends records, one JSON line each, and forces them to disk."""
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n"
                   for r in records)
    with open(self.results_path, "a") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
