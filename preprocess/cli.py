"""Command-line plumbing shared by every entry point of the project.

The project's rule for bad input, flags included, is one clear line, not a
usage dump or a traceback; `ArgumentParser` here prints usage errors that way.
"""

import argparse


class ArgumentParser(argparse.ArgumentParser):
  """argparse with usage errors on one line (exit code 2, as argparse uses)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
