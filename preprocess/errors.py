"""Errors raised by the raw-data readers.

A `DataFormatError` means a whole input file cannot be trusted (wrong size, bad
magic number, truncated archive, counts that disagree). It stops a conversion
run. Problems confined to one record are not errors: readers yield a
`preprocess.schema.Reject` for them and carry on.
"""


class DataFormatError(Exception):
  """A structural problem with one input file.

  The message is a single line, `<path>: <problem>`, so command-line entry points
  can print it as is instead of a traceback.
  """

  def __init__(self, path, problem):
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")
