"""benchmarks.training_curves: the recorded histories, as recorded."""

import json

from benchmarks import training_curves


def _history(accuracies, seconds):
  return [
    dict(epoch=i + 1, loss=1.0, test_acc=a, seconds=s)
    for i, (a, s) in enumerate(zip(accuracies, seconds))
  ]


def test_cards_and_checkpoints_become_curves(tmp_path):
  victims = tmp_path / "victims"
  (victims / "allconv").mkdir(parents=True)
  (victims / "nin").mkdir()
  card = dict(
    test_accuracy=0.8705,
    training=dict(
      config=dict(epochs=3),
      history=_history([0.5, 0.7, 0.87], [100.0, 400.0, 100.0]),
    ),
  )
  (victims / "allconv" / "allconv.json").write_text(json.dumps(card))
  checkpoint = dict(
    epoch=2, config=dict(epochs=20), history=_history([0.4, 0.6], [90, 90])
  )
  (victims / "nin" / "checkpoint.json").write_text(json.dumps(checkpoint))
  out = tmp_path / "out"
  argv = ["--victims-dir", str(victims), "--out-dir", str(out)]
  assert training_curves.main(argv) == 0

  text = (out / "training_curves_cpu.md").read_text()
  assert "| allconv | finished | 3 | 87.00% | 87.00% (epoch 3) | 87.05% |" in (
    text
  )
  assert "| nin | training (2 of 20 epochs) | 2 | 60.00% |" in text
  assert "| 2 | 70.00% | 400 * | 0.14 |" in text  # 4x the median: shared
  payload = json.loads((out / "training_curves_cpu.json").read_text())
  assert [p["hours"] for p in payload["runs"]["nin"]["curve"]] == [
    0.025,
    0.05,
  ]
  assert (out / "training_curves_cpu.png").stat().st_size > 0


def test_no_run_is_an_error(tmp_path, capsys):
  assert training_curves.main(["--victims-dir", str(tmp_path)]) == 3
  assert "no training run" in capsys.readouterr().err
