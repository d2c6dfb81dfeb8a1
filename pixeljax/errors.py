"""Errors a person can act on, and the exit codes the command line gives them.

Exit codes (stable: scripts may rely on them):
  0    success.
  1    an unexpected internal error (a bug: a traceback is printed).
  2    usage error: an unknown option or a bad option value.
  3    a data, model or file problem: unknown model or missing weights, no
       such data set or image folder, an unreadable image, an output folder
       that cannot be written, a write that fails (a full disk).
  4    the output folder holds a run with other settings (resume refused).
  130  interrupted (Ctrl-C); finished images are on disk, rerun to resume.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_CONFLICT = 4
EXIT_INTERRUPTED = 130


class UserError(Exception):
  """An error with a message for a person, and the exit code it maps to."""

  exit_code = EXIT_INPUT


class UsageError(UserError):
  """An option value that cannot work (the command line's own mistake)."""

  exit_code = EXIT_USAGE


class InputError(UserError):
  """Missing or unreadable data, model weights or files."""

  exit_code = EXIT_INPUT


class RunConflictError(UserError):
  """An output folder that holds a run with other settings."""

  exit_code = EXIT_CONFLICT
