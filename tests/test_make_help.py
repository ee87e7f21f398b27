"""`make help` as a user reads it: every target, with the variables' values, none left as $(VAR)."""

import re
import subprocess

from tests.conftest import ROOT


def _help(*overrides):
  result = subprocess.run(
    ["make", "--no-print-directory", "help", *overrides],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
    check=True,
  )
  return result.stdout


def test_help_lists_every_described_target_with_no_unexpanded_variable():
  text = _help()
  assert "$" not in text, [line for line in text.splitlines() if "$" in line]
  described = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
  listed = re.findall(r"^  make (\S+)", text, re.M)
  assert listed == described and "demo" in listed
  assert "horovodrun -np 2," in text and "under data/sample/raw" in text
  assert "runs under runs on localhost:6006" in text


def test_help_shows_the_values_given_on_the_command_line():
  text = _help("NP=4", "LOGDIR=/tmp/my runs")
  assert "horovodrun -np 4," in text
  assert "runs under /tmp/my runs on localhost:6006" in text and "$" not in text
  # With no goal, make prints the same help.
  default = subprocess.run(
    ["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, timeout=60
  )
  assert default.returncode == 0 and default.stdout == _help()
