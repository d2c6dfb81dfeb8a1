"""Shared test set-up."""

import os

# The data tests isolate themselves from PIXELJAX_DATA; keep the caller's value
# for the tests that read the real data set.
if os.environ.get("PIXELJAX_DATA"):
    os.environ.setdefault("PIXELJAX_DATA_REAL", os.path.abspath(os.environ["PIXELJAX_DATA"]))
