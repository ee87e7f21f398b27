"""The docs name only what exists: every repository path in README.md, docs/*.md and
the other Markdown files of the checkout (k8s/README.md, bench/RESULTS.md, ...).

A path is a token of an inline code span, a fenced code block or a link target
whose first component is a top-level entry of the repository (`trainers/...`,
`k8s/overlays/...`, `docs/...`): it must exist in the checkout. Placeholders
(`<name>`, `NAME`, `*`, `{a,b}`) stop the check at the folder before them.
Paths under folders that commands create (`runs/`, `data/`, `.venv/`: see
PRODUCED) are produced, not kept, and are checked only to start with such a
folder. The run directory's table in docs/run-lifecycle.md names only entries
the code writes, and the layout in docs/development.md names every top-level
folder, k8s overlay and component, so neither can fall behind the code.
Everything is derived from the checkout, so adding a file never means editing
this test.
"""

import os
import re

import pytest

from preprocess import dirlock
from tests.conftest import ROOT
from trainers import run_dir
from trainers import tags

# Folders the documented commands create; a path under one is produced, not kept:
# runs/ by the trainers and `make demo` (--model-dir runs/<recipe>), data/ by
# `make preprocess` (data/raw, data/tfrecords), .venv/ by `make install`.
PRODUCED = {
  "runs": "the trainers' model dirs (make demo, --model-dir runs/<recipe>)",
  "data": "make preprocess: data/raw and data/tfrecords",
  ".venv": "make install",
}
# Top-level entries that are repository folders or files (the checkout's own).
TOPS = {
  name
  for name in os.listdir(ROOT)
  if not name.startswith(".") and name not in PRODUCED and name not in ("build", "__pycache__")
}


def _markdown_files():
  """README.md, docs/*.md and every other Markdown file the checkout keeps."""
  found = []
  for path, dirs, files in os.walk(ROOT):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in PRODUCED)
    dirs[:] = [d for d in dirs if d not in ("build", "__pycache__") and not d.endswith("egg-info")]
    found += [ROOT / path / f for f in sorted(files) if f.endswith(".md")]
  return found


DOCS = _markdown_files()
assert ROOT / "README.md" in DOCS and ROOT / "docs" / "tensorboard.md" in DOCS

CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"[<>{}*\[\]$]|\b[A-Z][A-Z_]{2,}\b")


def _code_and_links(text):
  """Yields (kind, text) for each fenced block, inline code span and link target."""
  for block in CODE_BLOCK.findall(text):
    yield "block", block
  prose = CODE_BLOCK.sub("", text)
  for span in CODE_SPAN.findall(prose):
    yield "span", span
  for target in LINK.findall(prose):
    yield "link", target


def _tokens(code):
  for token in re.split(r"[\s\"'=,;()|]+", code):
    token = token.strip(".:`").removeprefix("./")
    if "/" in token and "://" not in token:
      yield token


def _checked_part(path):
  """The part of `path` before its first placeholder component (the whole path if none)."""
  kept = []
  for part in path.split("/"):
    if PLACEHOLDER.search(part):
      break
    kept.append(part)
  return "/".join(kept)


def _named_paths(doc):
  """{(path, how it was found)} of repository and produced paths named in `doc`."""
  text = doc.read_text()
  found = set()
  for kind, code in _code_and_links(text):
    if kind == "link":
      target = code.split("#", 1)[0]
      if target and not re.match(r"[a-z]+:", target):
        path = os.path.relpath(os.path.normpath(doc.parent / target), ROOT)
        found.add((path, "link"))
      continue
    for token in _tokens(code):
      if token.split("/", 1)[0] in TOPS | set(PRODUCED):
        found.add((token, kind))
  return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_doc_names_exists_or_is_produced(doc):
  named = _named_paths(doc)
  missing = []
  for path, how in sorted(named):
    top = path.split("/", 1)[0]
    if top in PRODUCED:
      continue  # made by the commands before it (PRODUCED says which)
    checked = _checked_part(path).rstrip("/")
    if checked and not (ROOT / checked).exists():
      missing.append(f"{path} ({how})")
  assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_checker_finds_paths_in_spans_blocks_and_links():
  doc = ROOT / "docs" / "_probe.md"  # never written: the text is parsed in memory
  text = (
    "See `trainers/train.py` and [the guide](cluster.md#top), then\n"
    "```bash\npython trainers/cifar10.py --model-dir runs/demo/x --data-dir=data/tf\n```\n"
    "`trainers/recipes/<name>.py`, `loss/cross_entropy`, `gs://bucket/x`, `k8s/overlays/NAME`"
  )
  found = set()
  for kind, code in _code_and_links(text):
    if kind == "link":
      found.add((os.path.relpath(os.path.normpath(doc.parent / code.split("#")[0]), ROOT), kind))
      continue
    found |= {(t, kind) for t in _tokens(code) if t.split("/", 1)[0] in TOPS | set(PRODUCED)}
  assert found == {
    ("trainers/train.py", "span"),
    ("docs/cluster.md", "link"),
    ("trainers/cifar10.py", "block"),
    ("runs/demo/x", "block"),
    ("data/tf", "block"),
    ("trainers/recipes/<name>.py", "span"),
    ("k8s/overlays/NAME", "span"),
  }
  assert _checked_part("trainers/recipes/<name>.py") == "trainers/recipes"
  assert _checked_part("k8s/overlays/NAME/kustomization.yaml") == "k8s/overlays"


def _run_dir_table():
  """The first column of docs/run-lifecycle.md's table of a run directory's entries."""
  text = (ROOT / "docs" / "run-lifecycle.md").read_text()
  table = text.split("| entry |", 1)[1].split("\n\n", 1)[0]
  names = set()
  for row in table.splitlines()[2:]:
    names |= {n.rstrip("/") for n in CODE_SPAN.findall(row.split("|")[1])}
  return names


def test_the_run_directory_table_names_only_what_a_run_writes():
  written = set(tags.RUNS) | {"checkpoints", "best", "export", run_dir.CONFIG, run_dir.METRICS}
  written |= {dirlock.LOCK_NAME, "events.out.tfevents.*"}
  named = _run_dir_table()
  assert named <= written, f"the table names entries no run writes: {named - written}"
  assert set(tags.RUNS) <= named, f"runs missing from the table: {set(tags.RUNS) - named}"


def test_the_development_layout_names_every_folder_overlay_and_component():
  text = (ROOT / "docs" / "development.md").read_text()
  layout = next(b for b in CODE_BLOCK.findall(text) if "trainers/" in b and "k8s/" in b)
  words = set(re.findall(r"[\w.-]+", layout))
  folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name in TOPS}
  k8s = {p.name for kind in ("overlays", "components") for p in (ROOT / "k8s" / kind).iterdir()}
  k8s |= {"components"} if (ROOT / "k8s" / "components").is_dir() else set()
  missing = sorted((folders | k8s) - words)
  assert not missing, f"docs/development.md's layout does not name: {missing}"
