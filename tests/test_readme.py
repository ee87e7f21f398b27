"""The README walked as a new user walks it: every command of its shell blocks, in order.

The walk runs in a fresh copy of the repository (the files git knows, and the
shared .venv linked in): `make demo` first, as the quick start says, then each
command of the later blocks, each of which must exit 0. A block may opt out
only with a visible marker line just above it, naming why:
`<!-- readme-walk: skip (reason) -->` for what needs the internet or a cluster,
`<!-- readme-walk: serve (reason) -->` for a server, which is started, must
answer, and is stopped. The only rewrites: `make` gets `-o .venv/.installed`
(the shared venv is installed already and must not be rebuilt by a copy whose
files look newer), the server gets a free `PORT=`, and the quick start's
`make test` is not run again: this walk is one of the tests it runs.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- readme-walk: (skip|serve) \((.+)\) -->$")
SECTIONS = ["Quick start", "Training", "Evaluating", "TensorBoard"]
MAKE_TEST = ["make", "test"]


def readme_blocks(text):
  """The shell blocks of a README, in order: (section, marker, reason, [commands]).

  A command is a line of the block with `\\` continuations joined; blank lines
  and comment lines are not commands.
  """
  blocks, section, marker, block = [], None, (None, None), None
  for line in text.splitlines():
    if block is None and line.startswith("## "):
      section = line[3:].strip()
    match = MARKER.match(line.strip())
    if block is None and match:
      marker = match.groups()
    elif line.startswith("```"):
      if block is None:
        block = [] if line[3:].strip() in ("bash", "sh") else None
        if block is None:  # not a shell block: its lines are skipped below
          block = False
      else:
        if block is not False:
          joined = re.sub(r"\\\n\s*", " ", "\n".join(block))
          commands = [c.strip() for c in joined.splitlines()]
          commands = [c for c in commands if c and not c.startswith("#")]
          blocks.append((section, marker[0], marker[1], commands))
        block, marker = None, (None, None)
    elif block not in (None, False):
      block.append(line)
  return blocks


def _walked_command(command):
  argv = shlex.split(command, comments=True)
  if argv and argv[0] == "make":
    return shlex.join(["make", "-o", ".venv/.installed"] + argv[1:])
  return command


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(command, cwd, env, timeout=1800):
  result = subprocess.run(
    ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert result.returncode == 0, (
    f"README command failed ({result.returncode}): {command}\n--- stdout\n"
    f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
  )
  return result


def _serve(command, cwd, env):
  """Starts a server command, waits until TensorBoard answers with the demo's runs, stops it."""
  port = _free_port()
  proc = subprocess.Popen(
    ["bash", "-c", f"{command} PORT={port}"],
    cwd=cwd,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    start_new_session=True,  # its own process group: make, and the server it starts
  )
  try:
    deadline, runs = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
      try:
        with urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=5) as r:
          runs = json.loads(r.read())
        if "demo/cifar10-tutorial/train" in runs:
          break
      except OSError:
        pass
      time.sleep(1)
    assert "demo/cifar10-tutorial/train" in runs, (command, runs, proc.poll())
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def _checkout(tmp_path):
  """A copy of the repository's files (tracked and new, not ignored), with .venv linked in."""
  listed = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd=ROOT,
    capture_output=True,
    check=True,
  ).stdout.split(b"\0")
  copy = tmp_path / "checkout"
  for name in filter(None, listed):
    source = ROOT / name.decode()
    if source.is_file():
      (copy / name.decode()).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, copy / name.decode())
  (copy / ".venv").symlink_to((ROOT / ".venv").resolve())
  return copy


def test_readme_is_short_and_in_the_users_order():
  text = README.read_text()
  assert len(text.splitlines()) < 250
  headings = re.findall(r"^## (.+)$", text, re.M)
  assert headings[: len(SECTIONS)] == SECTIONS
  assert headings.index("On a cluster") > headings.index("TensorBoard")
  blocks = readme_blocks(text)
  assert [shlex.split(c, comments=True) for c in blocks[0][3]] == [["make", "demo"], MAKE_TEST]
  # The evaluation command takes the run directory alone (the rest is in its config.json).
  evaluate = [c for s, _, _, cmds in blocks if s == "Evaluating" for c in cmds]
  assert (
    evaluate[0] == "python trainers/cifar10.py --mode eval --model-dir runs/demo/cifar10-tutorial"
  )
  assert "--model-dir runs/demo/cifar10-tutorial" in (ROOT / "scripts" / "demo.sh").read_text()
  # Few opt-outs, each visible and with a reason; none in the sections the walk is about.
  skipped = [(s, why) for s, marker, why, _ in blocks if marker == "skip"]
  assert len(skipped) <= 2 and all(why for _, why in skipped), skipped
  assert not [s for s, _ in skipped if s in SECTIONS], skipped
  assert "synthetic" in text and "not the\nreal data sets" in text


def test_readme_links_exist():
  text = README.read_text()
  links = re.findall(r"\]\(([^)\s]+\.md)\)", text)
  assert {"docs/data.md", "docs/tensorboard.md", "docs/cluster.md"} <= set(links)
  missing = [link for link in links if not (ROOT / link).exists()]
  assert not missing, f"README links to missing files: {missing}"


@pytest.mark.slow
def test_every_readme_command_runs_in_order_after_make_demo(tmp_path):
  copy = _checkout(tmp_path)
  env = dict(
    os.environ,
    PATH=f"{copy / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
    PYTHONPATH=str(copy),
    TF_CPP_MIN_LOG_LEVEL="2",
  )
  env.pop("VIRTUAL_ENV", None)
  ran = []
  for section, marker, _, commands in readme_blocks(README.read_text()):
    if marker == "skip":
      continue
    for command in commands:
      if shlex.split(command, comments=True) == MAKE_TEST:
        continue  # the suite this test is part of
      if marker == "serve":
        _serve(_walked_command(command), copy, env)
      else:
        _run(_walked_command(command), copy, env)
      ran.append((section, command))
  assert (ran[0][0], shlex.split(ran[0][1], comments=True)) == ("Quick start", ["make", "demo"])
  assert {s for s, _ in ran} == set(SECTIONS)
  metrics = json.loads(
    pathlib.Path(copy / "runs" / "demo" / "cifar10-tutorial" / "metrics.json").read_text()
  )
  assert metrics["split"] == "test" and metrics["precision_at_1"] > 0.5
