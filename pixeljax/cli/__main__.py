"""``python -m pixeljax.cli``: the `pixeljax` command."""

from pixeljax.cli import program

program()
