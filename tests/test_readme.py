"""The README's Python example runs as written (at a smaller budget)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python_example(heading="## From Python") -> str:
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index(heading) :]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_example_runs(capsys):
  code = _python_example()
  assert "popsize=400, maxiter=100" in code
  # Same code, a budget a CPU test can afford.
  code = code.replace("popsize=400, maxiter=100", "popsize=8, maxiter=1")
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)
  result = scope["result"]
  assert result.adv_images.shape == (16, 32, 32, 3)
  assert 0.0 <= float(capsys.readouterr().out) <= 1.0


def test_the_robustness_example_runs():
  code = _python_example("## L0 robustness and defences")
  # Two images instead of eight: the same code at a CPU test's budget.
  assert code.count("[:8]") == 2 and "max_pixels=3" in code
  scope = {}
  exec(compile(code.replace("[:8]", "[:2]"), "README.md", "exec"), scope)
  result = scope["result"]
  assert result.min_pixels.shape == (2,)
  assert result.robust_accuracy.shape == (4,)
