"""The run folder (pixeljax.runs) and the pieces of `pixeljax attack` around
it that need no attack: folder names, the progress bar, old records."""

import errno
import os
import pathlib

import jax
import numpy as np
import pytest

from pixeljax import metrics
from pixeljax import runs
from pixeljax.cli import images as images_lib
from pixeljax.cli import naming
from pixeljax.cli import run as run_lib
from pixeljax.cli import victims
from pixeljax.cli.progress import Progress
from pixeljax.cli.settings import AttackSettings
from pixeljax.errors import InputError
from pixeljax.errors import RunConflictError

SETTINGS = dict(
  model=dict(name="toy"),
  seed=0,
  data=dict(source="data/cifar", count=3, sha256="ab" * 8),
)


def images(count=2):
  return dict(
    images=np.zeros((count, 4, 4, 3), np.uint8),
    index=np.arange(count),
    labels=np.zeros(count, np.int64),
    clean_prob=np.ones(count, np.float32),
    class_names=np.array(["a", "b"]),
    looked=np.int64(count),
  )


def test_every_file_reaches_the_disk_before_it_replaces_the_old(
  tmp_path, monkeypatch
):
  if not os.path.isdir("/proc/self/fd"):
    pytest.skip("needs /proc to name a file descriptor's file")
  calls = []
  fsync, replace = os.fsync, os.replace

  def logged_fsync(fd):
    calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
    fsync(fd)

  def logged_replace(source, target):
    calls.append(("replace", os.path.realpath(source)))
    replace(source, target)

  monkeypatch.setattr(os, "fsync", logged_fsync)
  monkeypatch.setattr(os, "replace", logged_replace)
  store = runs.RunStore.create_or_resume(tmp_path / "run", SETTINGS)
  store.start(SETTINGS, images())
  runs.write_atomic(tmp_path / "run" / "summary.md", b"# summary\n")
  replaced = [
    (n, path) for n, (op, path) in enumerate(calls) if op == "replace"
  ]
  assert len(replaced) == 3  # images.npz, run.json, summary.md
  for n, path in replaced:
    assert ("fsync", path) in calls[:n], path


def test_a_run_that_never_started_leaves_nothing_behind(tmp_path):
  # A folder it made, and the parents it made, go.
  store = runs.RunStore.create_or_resume(tmp_path / "a" / "b" / "run", SETTINGS)
  assert (tmp_path / "a" / "b" / "run" / runs.LOCK_FILE).exists()
  store.close()
  assert list(tmp_path.iterdir()) == []
  # A folder that was there, and what the user keeps in it, stay.
  mine = tmp_path / "mine"
  (mine / "notes").mkdir(parents=True)
  (mine / "notes" / "todo.txt").write_text("keep me")
  runs.RunStore.create_or_resume(mine / "notes", SETTINGS).close()
  runs.RunStore.create_or_resume(mine, SETTINGS).close()
  store = runs.RunStore.create_or_resume(mine / "new", SETTINGS)
  (mine / "new" / "later.txt").write_text("written meanwhile")
  store.close()
  assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == [
    "new",
    "new/later.txt",
    "notes",
    "notes/todo.txt",
  ]


def test_a_started_run_is_kept(tmp_path):
  store = runs.RunStore.create_or_resume(tmp_path / "run", SETTINGS)
  store.start(SETTINGS, images())
  store.close()
  assert {p.name for p in (tmp_path / "run").iterdir()} == {
    runs.SETTINGS_FILE,
    runs.IMAGES_FILE,
    runs.LOCK_FILE,
  }


def test_data_is_compared_by_content_not_by_where_it_came_from(tmp_path):
  runs.RunStore.create_or_resume(tmp_path, SETTINGS).start(SETTINGS, images())
  moved = dict(SETTINGS, data=dict(SETTINGS["data"], source="/elsewhere"))
  store = runs.RunStore.create_or_resume(
    tmp_path, moved, uncompared=run_lib.UNCOMPARED
  )
  assert store.resumed
  store.close()
  assert store.settings()["data"]["source"] == "data/cifar"  # the first kept
  other = dict(moved, data=dict(moved["data"], sha256="cd" * 8))
  with pytest.raises(RunConflictError, match="sha256"):
    runs.RunStore.create_or_resume(
      tmp_path, other, uncompared=run_lib.UNCOMPARED
    )


def test_damaged_images_are_told_apart_from_unreadable_ones(tmp_path):
  store = runs.RunStore.create_or_resume(tmp_path, SETTINGS)
  with pytest.raises(runs.DamagedImagesError, match="missing"):
    store.images()
  store.start(SETTINGS, images())
  whole = (tmp_path / runs.IMAGES_FILE).read_bytes()
  for damaged in (whole[: len(whole) // 2], b""):
    (tmp_path / runs.IMAGES_FILE).write_bytes(damaged)
    with pytest.raises(runs.DamagedImagesError, match="damaged"):
      store.images()
  store.save_images({k: v for k, v in images().items() if k != "labels"})
  with pytest.raises(runs.DamagedImagesError, match="labels"):
    store.images()


def test_a_full_disk_is_an_input_error_and_keeps_what_was_written(
  tmp_path, monkeypatch
):
  store = runs.RunStore.create_or_resume(tmp_path, SETTINGS)
  store.start(SETTINGS, images())
  store.append([dict(image=1)])
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", full)
  for write in (
    lambda: store.append([dict(image=2)]),
    lambda: store.start(SETTINGS, images(3)),
    lambda: runs.write_atomic(tmp_path / "summary.md", b"x"),
  ):
    with pytest.raises(InputError, match="No space left on device") as error:
      write()
    assert str(tmp_path) in str(error.value)
  monkeypatch.undo()
  # No temporary file, no record of the failed append, the rest unchanged.
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


ATTACK = dict(
  image=7,
  label=3,
  target=None,
  pixels=1,
  success=True,
  adv_label=5,
  adv_prob=0.6,
  true_prob=0.3,
  target_prob=0.6,
  perturbation=[[1, 2, 255, 0, 0]],
  queries=400,
)


@pytest.mark.parametrize(
  "line, problem",
  [
    (b'{"success": "maybe"', "Expecting"),
    (b'{"path": "\xff"}', "utf-8"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"image": 7}', "no 'label'"),
  ]
  + [
    (runs.json.dumps(dict(ATTACK, **{name: value})).encode(), name)
    for name, value in [
      ("success", "maybe"),
      ("success", 1),
      ("image", 7.5),
      ("pixels", True),
      ("target", "cat"),
      ("adv_prob", "high"),
      ("perturbation", [[1, 2, "red"]]),
    ]
  ],
)
def test_a_damaged_record_is_never_counted(tmp_path, line, problem):
  store = runs.RunStore.create_or_resume(tmp_path, SETTINGS)
  store.start(SETTINGS, images())
  store.append([ATTACK])
  with open(store.results_path, "ab") as f:
    f.write(line + b"\n")
  store.close()
  again = runs.RunStore.existing(tmp_path)
  with pytest.raises(InputError, match="line 2 is damaged") as error:
    again.records()
  assert problem in str(error.value)


def test_records_are_read_by_their_run_schema(tmp_path):
  record = dict(
    model="m",
    defence="none",
    image=1,
    label=2,
    clean_label=2,
    min_pixels=3,
    adv_label=4,
    queries=50,
    perturbation=[[0, 0, 1, 2, 3]],
  )
  store = runs.RunStore.create_or_resume(
    tmp_path, SETTINGS, record_schema=runs.EVAL_RECORD
  )
  store.start(SETTINGS, images())
  store.append([record])
  assert store.records() == [record]
  store.close()
  with pytest.raises(InputError, match="line 1 is damaged .no 'target'"):
    runs.RunStore.existing(tmp_path).records()
  old = dict(ATTACK, seconds=1.5, path="cat/1.png")
  assert runs.record_problem(old, runs.ATTACK_RECORD) is None


def _victim(name="smallcnn", files=None):
  return victims.Victim(
    None,
    10,
    dict(
      name=name,
      architecture="smallcnn",
      files=files or {"w.safetensors": "0" * 64},
    ),
  )


def _pool(source="folder /x", sha256="0123456789abcdef"):
  return images_lib.Pool(
    None, None, ("cat", "dog"), dict(source=source, count=3, sha256=sha256)
  )


@pytest.mark.parametrize(
  "name",
  [
    "/tmp/elsewhere",
    "../../up",
    "..",
    ".hidden",
    "a/b\\c",
    "",
    "x" * 300,
    "sp ace\n",
  ],
)
def test_the_default_folder_is_one_plain_name_under_pixeljax_runs(name):
  options = AttackSettings(weights="card.json", folder="../pics/")
  out = pathlib.PurePath(
    naming.default_out(options, _victim(name), _pool(), None)
  )
  assert out.parts[0] == "pixeljax-runs" and len(out.parts) == 2
  assert not out.name.startswith(".") and len(out.name) <= 200
  assert set(out.name) <= set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+_-"
  )


def test_the_default_folder_follows_the_data_and_the_weights():
  options = AttackSettings(weights="card.json")
  out = naming.default_out(options, _victim(), _pool(), None)
  assert out == naming.default_out(options, _victim(), _pool(), None)
  others = {
    naming.default_out(options, _victim(), _pool(sha256="f" * 16), None),
    naming.default_out(options, _victim(files={"w": "1" * 64}), _pool(), None),
    naming.default_out(AttackSettings(), _victim(), _pool(), None),
    naming.default_out(options, _victim(), _pool(), 1),
  }
  assert out not in others and len(others) == 4
  assert "_to-dog_" in naming.default_out(options, _victim(), _pool(), 1)
  sample = _pool(source=images_lib.SAMPLE_SOURCE)
  assert "_sample-01234567_" in naming.default_out(
    AttackSettings(model="smallcnn"), _victim(), sample, None
  )


def test_progress_moves_with_evaluations_before_any_attack_finishes(capsys):
  budgets = {1: 100, 3: 100}  # popsize 10, maxiter 9
  tasks = [(d, position, None) for d in (1, 3) for position in range(2)]
  done = dict(pixels=1, success=True, queries=20)
  progress = Progress(budgets, tasks, [done], enabled=True)
  with progress.bar:
    assert progress.bar.n == 100 and progress.bar.total == 400
    progress.stream(1)
    progress.evaluated(30)  # the image in flight: nothing finished yet
    assert progress.bar.n == 130
    progress.evaluated(70)
    assert progress.bar.n == 170
    progress.finished([dict(pixels=1, success=False, queries=70)])
    assert progress.bar.n == 200  # credited its whole budget
    progress.stream(3)
    progress.evaluated(40)
    progress.finished([dict(pixels=3, success=True, queries=40)])
    assert progress.bar.n == 300
  assert "fooled 1px 1/2, 3px 1/1; 110 evaluations" in capsys.readouterr().err


def test_records_of_earlier_versions_still_summarize():
  old = dict(pixels=1, success=True, adv_prob=0.5, queries=10, seconds=2.0)
  new = dict(old, seconds_share=1.0)
  del new["seconds"]
  [row] = metrics.summarize([old, new])
  assert row["seconds"] == 3.0 and row["attacks_per_second"] == 2 / 3.0
  assert "attacks/s" in metrics.format_table([row])


def test_images_the_model_gives_nan_for_are_refused_not_labelled():
  """NaN logits would argmax to class 0 and pass as a correct image."""
  images = np.zeros((6, 4, 4, 3), np.uint8)
  images[4, 0, 0, 0] = 7

  def predict(x):
    logits = jax.numpy.zeros((x.shape[0], 2)).at[:, 1].set(-1.0)
    return jax.numpy.where(x[:, :1, 0, 0] == 7, jax.numpy.nan, logits)

  pool = images_lib.Pool(images, np.zeros(6, np.int64), ("a", "b"), {})
  with pytest.raises(InputError, match="NaN or inf logits for image 4"):
    images_lib.select_images(predict, pool, 6, 0, None)
