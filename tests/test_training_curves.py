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
  assert "| 2 | allconv | 70.00% | 400 * | 0.14 |" in text  # 4x the median
  payload = json.loads((out / "training_curves_cpu.json").read_text())
  assert [p["hours"] for p in payload["runs"]["nin"]["curve"]] == [
    0.025,
    0.05,
  ]
  assert (out / "training_curves_cpu.png").stat().st_size > 0


def test_no_run_is_an_error(tmp_path, capsys):
  assert training_curves.main(["--victims-dir", str(tmp_path)]) == 3
  assert "no training run" in capsys.readouterr().err


def test_a_run_from_another_card_continues_its_curve(tmp_path):
  victims = tmp_path / "victims"
  for folder in ("nin", "nin-more", "allconv"):
    (victims / folder).mkdir(parents=True)
  first = dict(
    test_accuracy=0.86,
    training=dict(
      config=dict(epochs=2), history=_history([0.8, 0.86], [360, 360])
    ),
  )
  (victims / "nin" / "nin.json").write_text(json.dumps(first))
  # Started from nin's card, 1 of 4 epochs done.
  going_on = dict(
    config=dict(epochs=4, init="benchmarks/results/victims/nin/nin.json"),
    history=_history([0.87], [720]),
  )
  (victims / "nin-more" / "checkpoint.json").write_text(json.dumps(going_on))
  # Another model's run from another card: not part of NiN's curve.
  other = dict(
    config=dict(epochs=3, init="elsewhere/nin/allconv.json"),
    history=_history([0.5], [100]),
  )
  (victims / "allconv" / "checkpoint.json").write_text(json.dumps(other))
  out = tmp_path / "out"
  argv = ["--victims-dir", str(victims), "--out-dir", str(out)]
  assert training_curves.main(argv) == 0

  payload = json.loads((out / "training_curves_cpu.json").read_text())
  curve = payload["runs"]["nin"]["curve"]
  assert [(p["epoch"], p["run"], p["hours"]) for p in curve] == [
    (1, "nin", 0.1),
    (2, "nin", 0.2),
    (3, "nin-more", 0.4),
  ]
  text = (out / "training_curves_cpu.md").read_text()
  assert "| nin | training (3 of 6 epochs) | 3 | 87.00% |" in text
  assert "## nin (nin/nin.json, then nin-more/checkpoint.json)" in text
  assert len(payload["runs"]["allconv"]["curve"]) == 1
