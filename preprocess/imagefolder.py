"""Reader for image-file data sets such as Kaggle/Microsoft cats-vs-dogs.

First stage of the data flow for image folders: the pipeline lists a split
directory, `list_split` turns the listing into (relative path, label) candidates
and rejects without opening any file, the driver shards the candidates, and
each worker calls `load_image` per file to decode it into a fixed-size RGB
`Record` (or a `Reject`: such data sets always hold a few broken files).

Two layouts are understood: class folders (`cat/cat.1.jpg`, `Dog/12.jpg`) and
a flat directory whose file names start with the class (`dog.45.jpg`).
"""

import dataclasses
import hashlib
import io
import os
import posixpath
import stat
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from preprocess import fileio
from preprocess import rawfiles
from preprocess.errors import DataFormatError
from preprocess.errors import one_line
from preprocess.schema import Record
from preprocess.schema import Reject

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """Where a data set in this format keeps its files: RAW/<name>/<split>/...

  Each split folder holds class folders or class-prefixed file names
  (`list_split`); the class names are the data set's.

  Attributes:
    splits: The split folders, e.g. ("train", "test").
  """

  splits: tuple = ("train", "test")
  format = "image"

  def installed_paths(self, root, remote_files):
    del remote_files
    return [root / split for split in self.splits]

  def partial_install(self, root):
    present = [s for s in self.splits if (root / s).exists()]
    if present and len(present) < len(self.splits):
      missing = [s for s in self.splits if s not in present]
      return root / present[0], (
        f"exists but {'/, '.join(missing)}/ does not; delete it or run with --force"
      )
    return None

  def install(self, local_files, root, log):
    """Extracts each downloaded archive into `root` (specs with other archive layouts override)."""
    from preprocess import extract

    for archive in local_files:
      log(f"{archive}: extracting")
      extract.extract_archive(archive, root, force=True)

  def list_raw(self, spec, root, files, options):
    """Lists the image files under `root` (RAW/<name>); returns a `RawDataset`.

    Nothing is opened: labels come from the paths (`list_split`), files that
    are not data are skipped (`skip_reason`), and everything outside the split
    folders is ledgered as skipped (`_outside_splits`). Entries that cannot be
    read (fifos, devices, dangling or looping symlinks, names that are not
    UTF-8) are rejects, never opened.
    """
    folders = "/ and ".join(self.splits)
    found, others = rawfiles.list_required(files, root, f"{spec.name} images ({folders}/ folders)")
    splits, rejects, used = {}, [], {}
    skipped = _outside_splits(self.splits, found, others)
    for split in self.splits:
      in_split = {rel[len(split) + 1 :]: rel for rel in found if rel.startswith(split + "/")}
      unusable = sorted(rel for rel in others if rel.startswith(split + "/") or rel == split)
      candidates, split_rejects, split_skipped = list_split(sorted(in_split), spec.class_names)
      if not candidates and not split_rejects and not unusable:
        raise DataFormatError(files.join(root, split), "no images for this split")
      rejects += [Reject(file=rel, index=None, reason=others[rel]) for rel in unusable]
      rejects += [dataclasses.replace(r, file=f"{split}/{r.file}") for r in split_rejects]
      skipped += [dataclasses.replace(r, file=f"{split}/{r.file}") for r in split_skipped]
      # Sorted by path, all of one class would come before the next and every
      # shard (and the validation split) would hold one class; a hash order mixes them.
      candidates = sorted(candidates, key=lambda c: hashlib.sha256(c[0].encode()).digest())
      sources = []
      for rel, label in candidates:
        name = in_split[rel]
        sources.append(rawfiles.Source(self.format, (found[name][0],), name, 1, label))
        used[name] = found[name][0]
      splits[split] = sources
    size = options["image_size"]
    shape, image_format = (size, size, 3), options["image_format"]
    skipped = sorted(skipped, key=lambda r: r.file)
    return rawfiles.RawDataset(
      spec.name, list(spec.class_names), shape, image_format, size, splits, rejects, used, skipped
    )

  @staticmethod
  def read(source, start, stop, image_size, opener):
    """The `Record` or `Reject` of one image file `Source`, as a one-item list."""
    del start, stop  # One image a source.
    path = source.paths[0]
    if "://" not in path:
      # Listed as a regular file, but it may have been swapped since: never open
      # a fifo (blocks forever) or a device.
      try:
        info = os.stat(path)
      except OSError as e:
        return [Reject(file=source.name, index=None, reason=f"cannot stat: {e.strerror or e}")]
      if not stat.S_ISREG(info.st_mode):
        return [Reject(file=source.name, index=None, reason="not a regular file; not opened")]
    try:
      return [load_image(path, source.name, source.label, image_size, opener=opener)]
    except OSError as e:
      # One unreadable photo among thousands is a reject, like an undecodable one.
      return [Reject(file=source.name, index=None, reason=f"cannot read: {e.strerror or e}")]


def _outside_splits(split_names, found, others):
  """Skipped entries for everything below the root that no split folder holds.

  Images there (`catdog/validation/cat/x.jpg`, `catdog/x.jpg`) are not
  converted, but ledgered with the reason, never silently dropped.
  """
  inside = tuple(s + "/" for s in split_names)
  skipped = []
  for rel in sorted(set(found) | set(others)):
    if rel.startswith(inside) or rel in split_names:
      continue
    why = skip_reason(rel) or f"outside the split folders ({', '.join(inside)}); not converted"
    skipped.append(Reject(file=rel, index=None, reason=why))
  return skipped


# Modes that carry an alpha channel (upper case: straight alpha; lower: premultiplied).
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_16BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def _class_of(parts):
  """Class text of a path split on '/': the top folder, or the file-name prefix."""
  if len(parts) > 1:
    return parts[0]
  return parts[0].split(".", 1)[0]


# Files that real folders hold besides the data: operating-system metadata and
# a person's notes. Hidden entries (.DS_Store, macOS "._x.jpg" resource forks,
# .ipynb_checkpoints/) are such litter too, even when the extension says image.
_OS_METADATA = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
_NOTE_EXTENSIONS = frozenset(
  {".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".doc", ".docx", ".rtf", ".csv", ".json"}
)


def skip_reason(relpath):
  """Why a file is not data and is skipped (hidden, OS metadata, notes), or None if it may be.

  Skipped files are ledgered, not rejected: they say nothing about the data's
  quality and never count against --max-reject-fraction.
  """
  parts = relpath.strip("/").split("/")
  name = parts[-1]
  if any(part.startswith(".") for part in parts):
    return "hidden file, not data"
  if name.lower() in _OS_METADATA:
    return "operating-system metadata, not data"
  if posixpath.splitext(name)[1].lower() in _NOTE_EXTENSIONS:
    return "notes or documents, not data"
  return None


def list_split(paths, class_names):
  """Assigns labels to the files of a split directory from their paths alone.

  Args:
    paths: File paths relative to the split directory, '/'-separated, e.g.
      "cat/cat.1.jpg" (class folders; deeper nesting is fine below a class
      folder) or "dog.45.jpg" (flat; the class is the text before the first '.').
    class_names: Class names in label order; matched case-insensitively, so
      Microsoft's "Cat/" folder is class "cat".

  Returns:
    (candidates, rejects, skipped): candidates is a list of (relpath, label)
    sorted by relpath; rejects is a list of `Reject(file=relpath, index=None,
    ...)`, also sorted, for files that are not images or whose class is
    unknown; skipped the same for files that are not data (`skip_reason`).

  Raises:
    ValueError: Two class names differ only in case.
  """
  labels = {name.lower(): i for i, name in enumerate(class_names)}
  if len(labels) != len(class_names):
    raise ValueError(f"class names must differ other than in case: {class_names}")
  expected = ", ".join(class_names)
  candidates, rejects, skipped = [], [], []
  for relpath in sorted(paths):
    parts = relpath.strip("/").split("/")
    extension = posixpath.splitext(parts[-1])[1].lower()
    why_skip = skip_reason(relpath)
    if why_skip:
      skipped.append(Reject(file=relpath, index=None, reason=why_skip))
      continue
    if extension not in IMAGE_EXTENSIONS:
      why = f"extension {extension!r}" if extension else "no extension"
      rejects.append(Reject(file=relpath, index=None, reason=f"not an image file ({why})"))
      continue
    class_text = _class_of(parts)
    label = labels.get(class_text.lower())
    if label is None:
      rejects.append(
        Reject(
          file=relpath,
          index=None,
          reason=f"unknown class {class_text!r} (expected one of {expected})",
        )
      )
      continue
    candidates.append((relpath, label))
  return candidates, rejects, skipped


def _to_rgb(image):
  """Any Pillow mode -> RGB; transparent pixels become white."""
  if image.mode in _16BIT_MODES:
    # convert("L") clips 16-bit values at 255 instead of scaling them, which
    # would turn a 16-bit grayscale PNG almost entirely white.
    wide = np.asarray(image, dtype=np.uint32)
    image = Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))
  if image.mode in _ALPHA_MODES or "transparency" in image.info:
    # convert("RGB") drops alpha and exposes whatever colour the encoder left
    # under transparent pixels (often black, sometimes garbage); compositing
    # over white gives what a viewer shows.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")


def _resize_and_crop(image, size):
  """Scales the shorter side to `size` (aspect kept), then centre-crops to size x size."""
  width, height = image.size
  scale = size / min(width, height)
  scaled = (max(size, round(width * scale)), max(size, round(height * scale)))
  # A sliver-shaped image is small on disk but its scaled copy is not (a
  # 100000x10 strip at size 224 becomes 2.2 Gpixel); apply the bomb limit to it.
  limit = Image.MAX_IMAGE_PIXELS
  if limit and scaled[0] * scaled[1] > limit:
    raise Image.DecompressionBombError(
      f"{width}x{height} image scaled to {scaled[0]}x{scaled[1]} exceeds {limit} pixels"
    )
  if scaled != image.size:
    # reducing_gap=None: one exact bicubic pass, no reduce() shortcut.
    image = image.resize(scaled, Image.Resampling.BICUBIC, reducing_gap=None)
  left = (scaled[0] - size) // 2
  top = (scaled[1] - size) // 2
  return image.crop((left, top, left + size, top + size))


def _decode(data, size):
  """File bytes -> uint8 (size, size, 3) array. Raises on anything undecodable."""
  with warnings.catch_warnings():
    # Pillow warns about corrupt EXIF, palette transparency etc.; that is noise
    # in a job log. A decompression-bomb warning, though, is a reason to reject.
    warnings.simplefilter("ignore")
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # The first frame of a GIF; raises on truncated data.
      # Phone photos store rotation in EXIF; apply it so pixels are upright.
      upright = ImageOps.exif_transpose(image)
      rgb = _to_rgb(upright)
  return np.array(_resize_and_crop(rgb, size), dtype=np.uint8)


def load_image(path, relpath, label, size, opener=fileio.open_rb):
  """Decodes one image file into a size x size RGB `Record`, or a `Reject`.

  The image is converted to RGB (alpha composited over white, 16-bit scaled to
  8-bit), its shorter side scaled to `size` with bicubic resampling, and the
  centre size x size square kept. The output is deterministic.

  Args:
    path: Path to open.
    relpath: The file's path relative to the split directory; becomes
      `Record.source_id` / `Reject.file` (prefix it with the split if needed).
    label: 0-based label, from `list_split`.
    size: Output height and width in pixels.
    opener: Callable path -> binary file object (e.g. Beam's FileSystems.open).

  Returns:
    A `Record` with a uint8 (size, size, 3) image and the sha256 of the file
    bytes, or a `Reject(file=relpath, index=None, reason=...)` for an empty,
    truncated, undecodable or decompression-bomb-sized file.
  """
  with opener(path) as f:
    data = f.read()
  if not data:
    return Reject(file=relpath, index=None, reason="empty file (0 bytes)")
  try:
    pixels = _decode(data, size)
  except UnidentifiedImageError:
    # Its message embeds the BytesIO's memory address; keep rejects reproducible.
    return Reject(
      file=relpath, index=None, reason="cannot decode image: not a recognised image format"
    )
  except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
    return Reject(file=relpath, index=None, reason=f"decompression bomb: {one_line(e)}")
  except Exception as e:
    # Pillow's plugins raise many types on malformed input (OSError, SyntaxError,
    # ValueError, EOFError, struct.error, ...). One bad file among thousands of
    # photos must not stop the job, so every decode failure becomes a Reject.
    return Reject(file=relpath, index=None, reason=f"cannot decode image: {one_line(e)}")
  return Record(
    source_id=relpath, label=label, image=pixels, content_sha256=hashlib.sha256(data).hexdigest()
  )
