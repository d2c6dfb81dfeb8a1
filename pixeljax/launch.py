"""The `pixeljax` program's entry point: what the process needs before JAX
starts, then the command line (`pixeljax.cli`)."""

from pixeljax.huge_pages import restart_with_huge_pages


def main() -> None:
  """Restarts the process with huge pages for malloc where that pays
  (`pixeljax.huge_pages`), here, before the command line's modules import
  JAX (0.8 s), then runs `pixeljax.cli.program`."""
  restart_with_huge_pages()
  from pixeljax import cli

  cli.program()
