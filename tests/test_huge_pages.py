"""Huge pages for malloc: when pixeljax's programs restart with them, and
that the restart keeps the command, the PID and what was printed."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

from pixeljax import huge_pages

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python(script: str, env, *args: str) -> subprocess.CompletedProcess:
  """`python -c script *args` from the repository root; it must succeed."""
  done = subprocess.run(
    [sys.executable, "-c", script, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  return done


@pytest.fixture
def able(monkeypatch):
  """A machine where huge pages pay: glibc 2.36, THP on madvise."""
  monkeypatch.setattr(huge_pages, "glibc_version", lambda: (2, 36))
  monkeypatch.setattr(huge_pages, "transparent_huge_pages", lambda: "madvise")


def test_the_tunable_is_added_to_the_users_own(able):
  environ = {"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "HOME": "/h"}
  env = huge_pages.environment_with_huge_pages(environ)
  assert env["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0:glibc.malloc.hugetlb=1"
  assert env["HOME"] == "/h"
  assert environ["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0"  # not changed
  env = huge_pages.environment_with_huge_pages({})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("value", ["0", "1", "2"])
def test_a_hugetlb_the_user_set_stands(able, value):
  environ = {"GLIBC_TUNABLES": f"glibc.malloc.hugetlb={value}:glibc.x=1"}
  assert huge_pages.environment_with_huge_pages(environ) is None


@pytest.mark.parametrize(
  "glibc, thp",
  [
    (None, "madvise"),
    ((2, 34), "madvise"),
    ((2, 36), "never"),
    ((2, 36), None),
  ],
)
def test_no_restart_where_it_gains_nothing(monkeypatch, glibc, thp):
  monkeypatch.setattr(huge_pages, "glibc_version", lambda: glibc)
  monkeypatch.setattr(huge_pages, "transparent_huge_pages", lambda: thp)
  assert huge_pages.environment_with_huge_pages({}) is None


def test_the_thp_mode_is_the_bracketed_word(monkeypatch, tmp_path):
  enabled = tmp_path / "enabled"
  monkeypatch.setattr(huge_pages, "_THP_ENABLED", enabled)
  assert huge_pages.transparent_huge_pages() is None  # no such file
  enabled.write_text("always [madvise] never\n")
  assert huge_pages.transparent_huge_pages() == "madvise"
  enabled.write_text("[always] madvise never\n")
  assert huge_pages.transparent_huge_pages() == "always"


def test_the_restart_keeps_the_command_pid_and_output(env):
  environ = {k: v for k, v in env.items() if k != "GLIBC_TUNABLES"}
  if huge_pages.environment_with_huge_pages(environ) is None:
    pytest.skip("no glibc >= 2.35 with transparent huge pages here")
  script = textwrap.dedent("""
      import os, sys
      print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv)
      from pixeljax.huge_pages import restart_with_huge_pages
      restart_with_huge_pages()
      print("work", os.getpid())
  """)
  done = _python(script, environ, "an argument", "-x")
  first, second, work = done.stdout.splitlines()
  pid = first.split()[1]
  argv = "['-c', 'an argument', '-x']"
  assert first == f"start {pid} None {argv}"  # printed before the restart
  assert second == f"start {pid} glibc.malloc.hugetlb=1 {argv}"
  assert work == f"work {pid}"


def test_the_program_restarts_before_importing_jax(env):
  # The `pixeljax` entry point's module and the package stay free of JAX
  # until the restart has happened (it would cost a second JAX import).
  script = (
    "import sys, pixeljax.launch, pixeljax; print('jax' in sys.modules); "
    "pixeljax.batched_attack; print('jax' in sys.modules)"
  )
  done = _python(script, env)
  assert done.stdout.split() == ["False", "True"]


def test_the_package_names_load_on_first_use():
  import pixeljax
  from pixeljax import defences
  from pixeljax.attack import evolution

  assert pixeljax.batched_attack is evolution.batched_attack
  assert pixeljax.defences is defences
  assert set(pixeljax.__all__) <= set(dir(pixeljax))
  for name in pixeljax.__all__:
    assert getattr(pixeljax, name) is not None
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    pixeljax.nope  # noqa: B018
