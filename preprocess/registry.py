"""One registry mechanism: a package's modules, found by file, one entry each.

Both registries of the project work this way: the data-set specs
(preprocess/datasets/<name>.py, each with a `SPEC`) and the training recipes
(trainers/recipes/<name>.py, each with a `RECIPE`). A `Registry` lists the
package's module files (not a hand-kept list, so adding an entry is adding one
file), imports them on first use (not when the package is imported) and reads
one named attribute of each; an entry's `name` must be its file name. Modules
are imported for that attribute, never for a side effect.

Entries defined outside the package (a test's spec module) are added with
`add`. A registry whose modules import heavy libraries at their top (the recipes
import Keras) can defer those imports: until an entry's code first uses one,
it is a stand-in module that imports the real one on first attribute access, so
reading the registry -- what a trainer's `--help` and flag checks need -- does
not import TensorFlow.
"""

from collections.abc import Callable
from collections.abc import Mapping
import importlib
import importlib.util
import pkgutil
import sys
import types


class Registry(Mapping):
  """{name: entry} of the modules of one package, imported on first use.

  Iterates in name order. Read-only but for `add` and `remove`; `entry(name)`
  is `[name]` with a message that lists the valid names.
  """

  def __init__(
    self,
    package,
    attr,
    kind,
    defer=(),
    check: Callable | None = None,
  ):
    """Args:
    package: The package whose modules are the entries ("preprocess.datasets").
    attr: The module attribute holding each entry ("SPEC").
    kind: What an entry is, for messages ("data set").
    defer: Modules the entry files import that are stood in for until used.
    check: fn(entry, others) called for each entry as it is added, with the
      entries already in; raises ValueError if they conflict.
    """
    self.package = package
    self.attr = attr
    self.kind = kind
    self.defer = tuple(defer)
    self.check = check
    self._entries = {}
    self._loaded = False

  def _folder(self):
    return self.package.replace(".", "/")

  def _load(self):
    if self._loaded:
      return
    self._loaded = True
    for name in self.defer:
      _defer(name)
    path = importlib.import_module(self.package).__path__
    for module in sorted(m.name for m in pkgutil.iter_modules(path)):
      entry = getattr(importlib.import_module(f"{self.package}.{module}"), self.attr)
      if entry.name != module:
        raise ValueError(
          f"{self._folder()}/{module}.py defines {self.kind} {entry.name!r}; "
          f"a {self.kind}'s name must be its file name"
        )
      self.add(entry)

  def add(self, entry):
    """Adds `entry` (defined outside the package) and returns it.

    Raises:
      ValueError: Another entry has the same name, or `check` refuses it.
    """
    self._load()
    old = self._entries.get(entry.name)
    if old is not None and old is not entry:
      raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
    if self.check:
      self.check(entry, [e for e in self._entries.values() if e.name != entry.name])
    self._entries[entry.name] = entry
    return entry

  def remove(self, name):
    """Removes an entry that `add` added (tests that add their own)."""
    self._entries.pop(name, None)

  def __getitem__(self, name):
    self._load()
    return self._entries[name]

  def __iter__(self):
    self._load()
    return iter(sorted(self._entries))

  def __len__(self):
    self._load()
    return len(self._entries)

  def entry(self, name):
    """The entry called `name`.

    Raises:
      ValueError: If there is none (the message lists the valid names).
    """
    if name not in self:
      raise ValueError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self)}")
    return self._entries[name]


class _Deferred(types.ModuleType):
  """Stands in sys.modules for module `name` until an attribute is read, then imports it.

  (importlib.util.LazyLoader loads on any attribute access, `__spec__` included,
  which the `import` statement itself reads on Python 3.11.)
  """

  def __init__(self, name):
    super().__init__(name)
    self.__spec__ = importlib.util.find_spec(name)
    self.__file__ = self.__spec__.origin

  def __getattr__(self, attr):
    name = self.__name__
    if sys.modules.get(name) is self:
      del sys.modules[name]
    module = importlib.import_module(name)
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(sys.modules[parent], child, module)
    return getattr(module, attr)


def _defer(name):
  if name not in sys.modules:
    stand_in = _Deferred(name)
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(sys.modules[parent], child, stand_in)
