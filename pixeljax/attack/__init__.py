"""The attack engine: knows nothing of Flax, data sets or files."""
