"""Writing a file so that a reader sees the old one or the whole new one."""

import os
import pathlib
import threading


def write_atomic(path, content):
  """Writes ``path`` through a temporary file, fsync and ``os.replace``.

  A crash or a full disk leaves the old file (or none), never half a new one,
  and no temporary file behind. The file's mode follows the umask, as for any
  file ``open`` makes.

  Args:
    path: the file to write.
    content: bytes, or a function that writes them to the binary file it is
      given.

  Raises:
    OSError: the write failed; ``path`` is as it was.
  """
  path = pathlib.Path(path)
  # pid and thread: concurrent writers of one path never share a temporary.
  tmp = path.with_name(
    f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
  )
  try:
    with open(tmp, "wb") as f:
      if isinstance(content, bytes):
        f.write(content)
      else:
        content(f)
      f.flush()
      os.fsync(f.fileno())  # the data is on disk before the name points at it
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
