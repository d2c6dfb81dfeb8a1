"""The settings of a `pixeljax attack` run: one object, one set of defaults.

The search's defaults are the library's own (``pixeljax.attack.defaults``);
the command line adds its two presets: QUICK (its defaults, sized for a CPU)
and PAPER (``--paper``, the paper's settings, meant for a GPU).
"""

import dataclasses

from pixeljax.attack import defaults
from pixeljax.attack import methods

# Quick defaults, sized for the default victim (the shipped AllConv) on a
# 2-core CPU: 27 s wall from a cold start, compilation included (20 images
# took 41 s; the SmallCNN takes 13 s for 20).
QUICK = dict(images=10, popsize=200, maxiter=20)
# The paper's settings (Su et al. 2019), for a GPU: --paper.
PAPER = dict(images=500, popsize=defaults.POPSIZE, maxiter=defaults.MAXITER)

# The search options each method takes from the settings (besides pixels and
# batch_size), in the order run.json and folder names show them.
METHOD_OPTIONS = {
  "de": ("popsize", "maxiter", "mutation", "crossover"),
  "seeded-de": (
    "popsize",
    "maxiter",
    "mutation",
    "crossover",
    "top_pixels",
    "block",
  ),
  "corner": ("block",),
  "corner-search": ("max_queries", "top_pixels", "proposals", "block"),
  "sparse-rs": ("max_queries", "proposals"),
}
assert set(METHOD_OPTIONS) == set(methods.METHODS)


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """What `pixeljax attack` was asked to do (see its --help).

  The search fields default to the library's defaults; the command line
  starts from QUICK or PAPER.
  """

  out: str | None = None  # None: naming.default_out()
  # The victim: a shipped model or weights card, or an ONNX or torch model.
  model: str | None = None
  weights: str | None = None
  onnx: str | None = None  # an ONNX file
  torch: str | None = None  # "module:function" or "file.py:function"
  torch_weights: str | None = None  # a state dict for --torch
  nchw: bool | None = None  # None: the ONNX input's layout; torch: NHWC
  # The images.
  data: str | None = None
  folder: str | None = None
  size: int = 32
  skip_bad_images: bool = False  # --folder: leave unreadable images out
  download: bool = True
  images: int = PAPER["images"]
  seed: int = 0
  # The attacks.
  pixels: tuple = (defaults.PIXELS,)
  targeted: bool = False
  target: str | None = None
  method: str = "de"
  popsize: int = defaults.POPSIZE
  maxiter: int = defaults.MAXITER
  mutation: float = defaults.MUTATION
  crossover: float | None = defaults.CROSSOVER
  max_queries: int = defaults.MAX_QUERIES
  proposals: int = defaults.PROPOSALS
  top_pixels: int | None = None  # None: the search's default
  block: int | None = None  # None: the scan's default
  # How the run goes (results do not depend on these).
  batch_size: int | None = None
  incremental: bool | None = None  # None: where it pays
  slots: int = defaults.SLOTS
  examples: bool = True
  figures: bool = True
  progress: bool = True
  distributed: bool = False  # several processes: jax.distributed

  def search_options(self, pixels: int) -> dict:
    """The keyword options of ``stream_attack`` for ``pixels`` pixels."""
    options = {
      name: getattr(self, name) for name in METHOD_OPTIONS[self.method]
    }
    if self.method != "corner":  # the scan changes one pixel
      options["pixels"] = pixels
    return dict(
      options, batch_size=self.batch_size, incremental=self.incremental
    )

  def search_settings(self) -> dict:
    """The search's settings as run.json holds them: a paper DE run as
    before there were methods (so that its folders resume), any other with
    its method and that method's options."""
    chosen = {name: getattr(self, name) for name in METHOD_OPTIONS[self.method]}
    if self.method == "de":
      return chosen
    return dict(method=self.method, **chosen)
