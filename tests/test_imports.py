"""The project's import graph: no module imports one that imports it back, and the layers hold.

The graph is read from the source (ast), not by importing anything, so it
costs well under a second. Every `import` counts, the ones inside functions
too: a cycle hidden by a function-level import still ties the two modules
together (it only moves the failure to the first call), which is how
pipeline/convert.py and pipeline/outdir.py were tied over `sidecar_path`.
"""

import ast
import functools

from tests.conftest import ROOT

PACKAGES = ("bench", "pipeline", "preprocess", "trainers")


@functools.cache
def _modules():
  """{dotted module name: path} of every module of the project's packages."""
  out = {}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def _imports(path, modules):
  """Project modules that the module at `path` imports, anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from a.b import c` imports a.b.c if c is a module, else a name of a.b.
      names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    else:
      continue
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name:
        found.add(name)
  return found


@functools.cache
def _graph():
  modules = _modules()
  graph = {name: _imports(path, modules) for name, path in modules.items()}
  # A package's own __init__ is imported before any of its modules; that edge
  # (a module to its parent package) is the import system's, not a design choice.
  return {
    name: {m for m in targets if m != name and not name.startswith(m + ".")}
    for name, targets in graph.items()
  }


def _cycles(graph):
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_graph_is_read_from_the_sources():
  graph = _graph()
  # A few edges that must be seen (module-level, from-import and function-level).
  assert "pipeline.outdir" in graph["pipeline.convert"]
  assert "bench.paths" in graph["bench.speed"]
  assert "pipeline.outdir" in graph["pipeline.supervise"]  # imported inside a function
  assert "preprocess.registry" in graph["preprocess.datasets"]


def test_no_module_imports_one_that_imports_it_back():
  assert _cycles(_graph()) == []


def test_pipeline_and_trainers_never_import_each_other():
  for name, targets in _graph().items():
    for a, b in (("pipeline", "trainers"), ("trainers", "pipeline")):
      if name.split(".")[0] == a:
        assert not [t for t in targets if t.split(".")[0] == b], name


def test_only_trainers_distributed_imports_horovod():
  importers = set()
  for name, path in _modules().items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        roots = [a.name.split(".")[0] for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        roots = [node.module.split(".")[0]]
      else:
        continue
      if "horovod" in roots and name.startswith("trainers"):
        importers.add(name)
  assert importers == {"trainers.distributed"}


def test_a_cycle_would_be_found():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []
