"""Typed records that the raw-data readers yield.

Readers turn raw files into a stream of `Record`s (one decoded image with its
label) and `Reject`s (one input that could not be used, and why). The Beam job
encodes records with `preprocess.schema` and writes rejects to the ledger, so
`records read == records written + records rejected` can be checked.
"""

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Record:
  """One decoded, labelled image.

  Attributes:
    source_id: Stable id of the source, unique within a data set:
      `<file relative to the data set root>:<record index>` for record files
      (CIFAR-10 `.bin`, MNIST IDX), the relative path for image files.
    label: 0-based class index.
    image: uint8 array of shape (height, width, channels).
    content_sha256: Hex sha256 of the source bytes of this record (the 3073-byte
      CIFAR record, the 784 MNIST pixels, or the whole image file).
  """
  source_id: str
  label: int
  image: np.ndarray
  content_sha256: str


@dataclasses.dataclass(frozen=True)
class Reject:
  """One input that was not converted.

  Attributes:
    file: The input file, relative to the data set root.
    index: Record index inside the file, or None for whole image files.
    reason: One line saying what is wrong.
  """
  file: str
  index: Optional[int]
  reason: str

  def to_json_dict(self):
    return {"file": self.file, "index": self.index, "reason": self.reason}
