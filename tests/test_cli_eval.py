"""`pixeljax eval` end to end on tiny settings, through cli.main here: the
packaged sample, the shipped SmallCNN, two defences."""

import json

import pytest

from tests.test_cli import main  # noqa: F401  (the fixture)
from tests.test_cli import nan_weights_card

TINY = [
  "--model",
  "smallcnn",
  "--defence",
  "none",
  "--defence",
  "median",
  "--images",
  "2",
  "--max-pixels",
  "1",
  "--no-download",
  "--quiet",
]


def read_lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_writes_resumes_and_refuses_other_settings(main, tmp_path):  # noqa: F811
  out = tmp_path / "eval"
  code, stdout, err = main("eval", *TINY, "--out", out)
  assert code == 0, err
  records = read_lines(out / "results.jsonl")
  assert len(records) == 4  # 2 images x 2 defences
  assert {r["defence"] for r in records} == {"none", "median:3"}
  for r in records:
    assert -1 <= r["min_pixels"] <= 1
    assert (r["min_pixels"] == 0) == (r["clean_label"] != r["label"])
    if r["min_pixels"] != 0:  # fooled: a wrong class; else the right one
      assert (r["adv_label"] != r["label"]) == (r["min_pixels"] > 0)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["budget"] == [8192]
  for row in summary["rows"]:
    mine = [r for r in records if r["defence"] == row["defence"]]
    clean = sum(r["min_pixels"] != 0 for r in mine) / 2
    assert row["robust_accuracy"][0] == round(clean, 4)
    assert row["robust_accuracy"] == sorted(
      row["robust_accuracy"], reverse=True
    )
  assert "| smallcnn | median:3 | 2 |" in stdout
  assert (out / "robust_accuracy.png").stat().st_size > 0

  # Lose the last records, as a kill would: the rerun redoes exactly
  # those, with the same results.
  lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
  (out / "results.jsonl").write_text("".join(lines[:1]))
  code, _, err = main("eval", *TINY, "--out", out)
  assert code == 0, err
  again = read_lines(out / "results.jsonl")
  key = lambda r: (r["defence"], r["image"])  # noqa: E731
  assert sorted(again, key=key) == sorted(records, key=key)

  code, _, err = main("eval", *TINY, "--out", out, "--max-pixels", "2")
  assert code == 4 and "--max-pixels: saved 1, now 2" in err


@pytest.mark.parametrize(
  "args,phrase",
  [
    (["--defence", "jpeg"], "--defence: defence 'jpeg'"),
    (["--defence", "median", "--defence", "median:3"], "the same defence"),
    (["--max-pixels", "0"], "expected at least 1"),
    (["--queries-per-k", "8", "--proposals", "16"], "queries_per_k"),
  ],
)
def test_eval_usage_errors(main, tmp_path, args, phrase):  # noqa: F811
  code, _, err = main("eval", "--out", tmp_path / "x", "--quiet", *args)
  assert code == 2 and phrase in err, err
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
  "spec, phrase",
  [
    ("bits:200", "bits must be 1..8, got 200"),
    ("bits:0", "bits must be 1..8, got 0"),
    ("median:999", "size must be 1..9, got 999"),
    ("median:0", "size must be 1..9, got 0"),
    ("median:-1", "size must be 1..9, got -1"),
    ("blur:1e4", "got 10000.0"),
    ("blur:0", "sigma must be above 0 and at most 8, got 0.0"),
    ("blur:inf", "got inf"),
    ("blur:nan", "got nan"),
  ],
)
def test_defence_values_are_refused_when_parsed(main, tmp_path, spec, phrase):  # noqa: F811
  code, _, err = main("eval", *TINY, "--defence", spec, "--out", tmp_path / "x")
  assert code == 2, err
  assert f"argument --defence: defence '{spec}': " in err and phrase in err
  assert "No CIFAR-10" not in err  # refused before the data was looked for
  assert not (tmp_path / "x").exists()


def test_a_window_larger_than_the_images_is_refused(main, tmp_path):  # noqa: F811
  code, _, err = main("eval", *TINY, "--defence", "blur:8", "--out", tmp_path)
  assert code == 2, err
  assert "--defence blur:8: " in err and "larger than the 32 x 32" in err
  assert not list(tmp_path.iterdir())


def test_a_model_with_nan_logits_is_exit_3_and_writes_nothing(main, tmp_path):  # noqa: F811
  card = nan_weights_card(tmp_path / "card")
  out = tmp_path / "new" / "run"
  code, _, err = main("eval", *TINY[2:], "--weights", card, "--out", out)
  assert code == 3, err
  assert "NaN or inf logits for 2 of the 2 images" in err, err
  assert not (tmp_path / "new").exists()  # free for the corrected command


def test_an_eval_stopped_before_a_record_leaves_nothing(
  main,  # noqa: F811
  tmp_path,
  monkeypatch,
):
  from pixeljax.attack import robustness

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(robustness, "stream_l0_robustness", interrupted)
  out = tmp_path / "new" / "run"
  code, _, err = main("eval", *TINY, "--out", out)
  assert code == 130, err
  assert not (tmp_path / "new").exists()  # no run.json, no run.lock
