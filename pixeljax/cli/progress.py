"""The progress bar of a run."""

import sys

from tqdm import tqdm


class Progress:
  """The progress bar of a run: model evaluations against the run's budget,
  and the attacks done and fooled per pixel count.

  The budget is each attack's most evaluations (``methods.budget``: for the
  paper's DE, popsize * (maxiter + 1)); an attack that ends early (it
  succeeded) is credited its whole budget, so the bar moves with every
  evaluation and ends full.

  Args:
    budgets: {pixels: one attack's budget} for each pixel count of the run.
    tasks: every attack of the run, (pixels, position, target).
    records: the attacks already recorded.
    enabled: show the bar.
  """

  def __init__(self, budgets: dict, tasks, records, enabled: bool):
    self.budgets = budgets
    self.attacks = dict.fromkeys(budgets, 0)
    for pixels, _, _ in tasks:
      self.attacks[pixels] += 1
    self.done = dict.fromkeys(self.attacks, 0)
    self.fooled = dict.fromkeys(self.attacks, 0)
    self.evaluations = 0  # spent in this session
    self._stream = 0  # spent by the current stream_attack call
    self._stream_finished = 0  # of which by its finished attacks
    self._count(records)
    self.bar = tqdm(
      total=sum(budgets[pixels] for pixels, _, _ in tasks),
      initial=self._done_budget(),
      disable=not enabled,
      file=sys.stderr,
      dynamic_ncols=True,
      bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}"
      "{postfix}",
    )
    self._show()

  def _done_budget(self) -> int:
    return sum(self.done[d] * self.budgets[d] for d in self.done)

  def _count(self, records):
    for r in records:
      self.done[r["pixels"]] += 1
      self.fooled[r["pixels"]] += bool(r["success"])

  def stream(self, pixels: int):
    """A ``stream_attack`` call for ``pixels`` begins."""
    self.bar.set_description(f"{pixels}-pixel")
    self._stream = self._stream_finished = 0

  def evaluated(self, evaluations: int):
    """``stream_attack``'s progress callback: its evaluations so far."""
    self.evaluations += evaluations - self._stream
    self._stream = evaluations
    self._show()

  def finished(self, records):
    """Attacks of the current stream that finished."""
    self._count(records)
    self._stream_finished += sum(r["queries"] for r in records)
    self._show()

  def _show(self):
    fooled = ", ".join(
      f"{d}px {self.fooled[d]}/{self.done[d]}" for d in self.attacks
    )
    self.bar.set_postfix_str(
      f"attacks {sum(self.done.values())}/{sum(self.attacks.values())}; "
      f"fooled {fooled}; {self.evaluations:,} evaluations",
      refresh=False,
    )
    in_flight = self._stream - self._stream_finished
    position = self._done_budget() + in_flight
    self.bar.update(max(0, position - self.bar.n))  # redraws at most 10/s
