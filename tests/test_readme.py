"""The README's Python example runs as written (at a smaller budget)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python_example() -> str:
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index("## From Python") :]
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
