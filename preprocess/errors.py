"""Errors of the data flow, and the one line a user sees for any error.

A `DataFormatError` means a whole input file cannot be trusted (wrong size, bad
magic number, truncated archive, counts that disagree). It stops a conversion
run. Problems confined to one record are not errors: readers yield a
`preprocess.schema.Reject` for them and carry on.

Every entry point prints one line for a failure, never a traceback; the
helpers below are the one home of that line: `one_line` (any message),
`reason` (an OSError's errno text), `first_line` (TensorFlow's decorated
messages) and `root_cause` (a Beam worker's traceback handed back whole).
"""

import re


class DataFormatError(Exception):
  """A structural problem with one input file.

  The message is a single line, `<path>: <problem>`, so command-line entry points
  can print it as is instead of a traceback.
  """

  def __init__(self, path, problem):
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


class DownloadError(DataFormatError):
  """A file could not be fetched, failed verification, or is an unsafe archive.

  Subclasses `DataFormatError` so that callers which already print those as one
  line (the Beam driver extracts archives) handle these too. The message is
  `<path or URL>: <problem>` on a single line.
  """

  def __init__(self, path, problem):
    super().__init__(path, " ".join(str(problem).splitlines()))


def one_line(error):
  """The error's message on one line (whitespace collapsed), or its type's name if empty."""
  text = " ".join(str(error).split())
  return text or type(error).__name__


def reason(error):
  """One line for an OSError: the errno text when there is one, else `Type: message`."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def first_line(error):
  """The first line of an error's message, without TensorFlow's op-location decorations."""
  text = getattr(error, "message", None) or str(error) or type(error).__name__
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)  # {{function_node ...}}
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  line = lines[0] if lines else type(error).__name__
  return re.sub(r"\s*\[Op:\w+\]$", "", line)


# Exceptions whose message is already the one line to show: `<file>: <problem>`.
_ONE_LINE_ERRORS = ("ShardFailure", "DownloadError", "DataFormatError", "TFRecordError")
_MARKED = re.compile(r"(?:^|[\s.])(?:{}): (.+)$".format("|".join(_ONE_LINE_ERRORS)))
_LAST_ERROR = re.compile(
  r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit|Failure)): (.+)$"
)


def root_cause(error):
  """The one line to show for an exception from a Beam run.

  Beam hands back a worker's failure as one exception whose message holds the
  worker's whole traceback (150 to 250 lines). The root cause is the project's
  own one-line error in it if there is one (a `ShardFailure` or
  `DataFormatError` names the file), else the last `SomeError: message` line,
  which is the innermost exception of a printed traceback.
  """
  if isinstance(error, OSError) and error.filename and error.strerror:
    return f"{error.filename}: {error.strerror}"
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  for line in lines:
    match = _MARKED.search(line)
    if match:
      return _cut_beam_suffix(match.group(1))
  for line in reversed(lines):
    match = _LAST_ERROR.match(line)
    if match:
      return _cut_beam_suffix(f"{match.group(1)}: {match.group(2)}")
  first = next((l for l in lines if not l.startswith("Traceback")), "")
  return _cut_beam_suffix(first) or type(error).__name__


def _cut_beam_suffix(line):
  # Beam appends " [while running 'ConvertShards/ParDo(ConvertShardFn)']".
  return re.sub(r"\s*\[while running '[^']*'\]\s*$", "", line)
