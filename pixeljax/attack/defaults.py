"""Default settings of every search, in one place.

The keyword defaults of ``batched_attack``, ``corner_attack``,
``corner_search``, ``seeded_attack`` and ``stream_attack`` and the command
line's defaults all read them from here.
"""

# The paper's differential evolution (Su et al. 2019).
PIXELS = 1
POPSIZE = 400
MAXITER = 100
MUTATION = 0.5
CROSSOVER = None  # no crossover, as in the paper
EARLY_STOP = True

# The corner searches.
SEARCH_PIXELS = 3
MAX_QUERIES = 10_000
PROPOSALS = 64
# Pixels the combinations draw from: the best-ranked, at most this many.
TOP_PIXELS_CAP = 128

# L0 robustness: the most pixels, and the evaluations at each k from 2 on.
L0_MAX_PIXELS = 10
L0_QUERIES_PER_K = 2048

# Continuous batching: images in flight, and rounds between looks at them.
SLOTS = 64
REFILL_EVERY = 5
