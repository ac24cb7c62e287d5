"""The package's shape: one direction of imports (every module, function-level imports included),
no import cycles, test support outside the library, and a README Layout naming every module."""
import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "t5lite"

# The layers, lowest first: a module may import any lower layer's modules and those of its own
# component (a tuple of packages); components of one layer may not import each other. Inside
# data/ the subpackages are layers of their own, in this order.
LAYERS = (
    (("t5lite.errors", "t5lite.extras", "t5lite.files", "t5lite.gin_files"),),  # io
    (("t5lite.runtime",),),
    (("t5lite.model",), ("t5lite.data.vocab",)),
    (("t5lite.data.sources",), ("t5lite.data.objectives",)),
    (("t5lite.data.tasks",),),
    (("t5lite.data.cache",),),
    (("t5lite.data.feed",),),
    (("t5lite.data.statistics", "t5lite.data"),),
    (("t5lite.store",),),
    (("t5lite.serving",),),
    (("t5lite.training",),),
    (("t5lite.convert",), ("t5lite.datamix",), ("t5lite.corpus",)),
    (("t5lite.cli", "t5lite.main", "t5lite.__main__"), ("t5lite.testing",),
     ("t5lite",)),  # the package's __init__ (its modules never import it by name)
)
TEST_SUPPORT = "t5lite.testing"  # the library never imports it


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """t5lite modules a file imports, at any depth (lazy imports inside functions too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import sub` imports the submodule; `from pkg import name`, the package.
      names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
               for a in node.names]
    else:
      continue
    for name in names:
      if name in known:
        found.add(name)
  return found


def graph() -> dict[str, set[str]]:
  """module -> the t5lite modules it imports (its own parent packages left out: Python has
  initialised them before the module runs)."""
  mods = modules()
  return {name: {d for d in imports(path, set(mods)) if not name.startswith(d + ".") and d != name}
          for name, path in mods.items()}


def layer_of(module: str) -> tuple[int, tuple]:
  """(rank, component) of `module`: where the longest prefix in LAYERS that holds it is (the
  package `t5lite` itself is only itself; its modules have layers of their own)."""
  matches = [(len(prefix), rank, component) for rank, layer in enumerate(LAYERS)
             for component in layer for prefix in component
             if module == prefix or (prefix != "t5lite" and module.startswith(prefix + "."))]
  if not matches:
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py LAYERS")
  _, rank, component = max(matches)
  return rank, component


def violations(g: dict[str, set[str]]) -> list[str]:
  """Imports against the layer order: a lower layer importing a higher one, a sibling importing
  a sibling, or the library importing its test support."""
  out = []
  for module, deps in sorted(g.items()):
    if module == TEST_SUPPORT:
      continue
    rank, component = layer_of(module)
    for dep in sorted(deps):
      if dep == TEST_SUPPORT:
        out.append(f"{module} imports the test support {dep}")
        continue
      dep_rank, dep_component = layer_of(dep)
      if dep_rank > rank or (dep_rank == rank and dep_component != component):
        out.append(f"{module} (layer {rank}) imports {dep} (layer {dep_rank}, "
                   f"{dep_component[0]}), which is not below it")
  return out


def test_imports_follow_the_layers():
  problems = violations(graph())
  assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_layer_check_catches_an_upward_import():
  """The check itself: a model module importing training, a vocabulary importing the task
  registry, the library importing t5lite.testing, and a sibling import are all reported."""
  g = graph()
  g["t5lite.model.network"] = g["t5lite.model.network"] | {"t5lite.training.train"}
  g["t5lite.data.vocab.gpt2"] = g["t5lite.data.vocab.gpt2"] | {"t5lite.data.tasks.registry"}
  g["t5lite.serving.decoding"] = g["t5lite.serving.decoding"] | {TEST_SUPPORT}
  g["t5lite.datamix.dsir"] = g["t5lite.datamix.dsir"] | {"t5lite.convert.hf"}
  problems = violations(g)
  assert len(problems) == 4, problems
  for module, dep in (("t5lite.model.network", "t5lite.training.train"),
                      ("t5lite.data.vocab.gpt2", "t5lite.data.tasks.registry"),
                      ("t5lite.serving.decoding", TEST_SUPPORT),
                      ("t5lite.datamix.dsir", "t5lite.convert.hf")):
    assert any(p.startswith(module) and dep in p for p in problems), (module, problems)


def test_every_t5lite_import_names_a_module():
  """An import of t5lite.x that names no module (a path from before a move) is caught here, not
  by the first user who runs that code path."""
  mods = modules()
  known = set(mods)

  def defines(module: str) -> set[str]:  # the top-level names of a module
    names = set()
    for node in ast.parse(mods[module].read_text()).body:
      if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        names.add(node.name)
      elif isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
          names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
      elif isinstance(node, (ast.Import, ast.ImportFrom)):
        names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names

  stale = []
  for base in ("t5lite", "tests", "benchmarks"):
    for path in (REPO / base).rglob("*.py"):
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
            node.module == "t5lite" or node.module.startswith("t5lite.")):
          if node.module not in known:
            stale.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module}")
            continue
          names = defines(node.module)
          stale += [f"{path.relative_to(REPO)}:{node.lineno}: {node.module}.{a.name}"
                    for a in node.names
                    if f"{node.module}.{a.name}" not in known and a.name not in names]
        elif isinstance(node, ast.Import):
          stale += [f"{path.relative_to(REPO)}:{node.lineno}: {a.name}" for a in node.names
                    if a.name.startswith("t5lite.") and a.name not in known]
  assert not stale, stale


def test_every_module_has_a_layer():
  for name in modules():
    layer_of(name)


def test_no_import_cycles():
  g = graph()
  state: dict[str, int] = {}  # 1: on the stack, 2: done
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for dep in sorted(g.get(node, ())):
      if state.get(dep) == 1:
        cycle = stack[stack.index(dep):] + [dep]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if dep not in state:
        visit(dep)
    stack.pop()
    state[node] = 2

  for node in sorted(g):
    if node not in state:
      visit(node)


def test_graph_sees_lazy_imports():
  """The walk finds imports inside functions (so the tests above would see a lazy one)."""
  assert "t5lite.data.cache.keys" in graph()["t5lite.data.feed.indexed"]  # inside __init__


def test_readme_layout_names_every_module():
  readme = (REPO / "README.md").read_text()
  layout = readme[readme.index("## Layout"):]
  layout = layout[:layout.index("\n## ", 4)] if "\n## " in layout[4:] else layout
  # A module is named by its path, or by its file name on an indented line under its package.
  blocks, package = {}, None
  for line in layout.splitlines():
    if line.startswith("t5lite/"):
      package = line.split()[0]
    elif line.startswith("  ") and package:
      blocks.setdefault(package, []).extend(w for w in line.split() if w.endswith(".py"))
  missing = []
  for p in PACKAGE.rglob("*.py"):
    rel = str(p.relative_to(REPO))
    if p.name == "__init__.py" or rel in layout:
      continue
    for package, names in blocks.items():
      if package.endswith("/") and rel.startswith(package) and rel[len(package):] in names:
        break
    else:
      missing.append(rel)
  assert not missing, f"README Layout does not list: {missing}"


def test_packages_have_docstrings_and_data_stays_small():
  """Each package says what it is for; no module under t5lite/data sits beside more than 7
  siblings."""
  for init in PACKAGE.rglob("__init__.py"):
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc) > 40, f"{init.relative_to(REPO)} needs a docstring saying what it is for"
  for folder in [p.parent for p in (PACKAGE / "data").rglob("__init__.py")]:
    siblings = [p for p in folder.glob("*.py") if p.name != "__init__.py"] + [
        p for p in folder.iterdir() if (p / "__init__.py").exists()]
    assert len(siblings) <= 8, f"{folder.relative_to(REPO)} holds {len(siblings)} modules"


def test_commands_register_every_gin_configurable():
  """Every module declaring a gin configurable is imported before a command parses gin (else a
  run's own config.gin, which names them all, fails to parse)."""
  from t5lite.cli import common  # pylint: disable=g-import-not-at-top
  source = ast.parse((PACKAGE / "cli" / "common.py").read_text())
  fn = next(n for n in ast.walk(source)
            if isinstance(n, ast.FunctionDef) and n.name == "register_configurables")
  imported = imports_of(fn)
  declaring = {name for name, path in modules().items() if "@gin.configurable" in path.read_text()}
  assert declaring and declaring <= imported, sorted(declaring - imported)
  assert callable(common.register_configurables)


def imports_of(node) -> set[str]:
  found = set()
  for n in ast.walk(node):
    if isinstance(n, ast.ImportFrom) and n.module:
      found.update(f"{n.module}.{a.name}" for a in n.names)
  return found


def test_pyproject_installs_every_package():
  """A non-editable install (a wheel, a TPU VM's `pip install .`) holds exactly these packages:
  every t5lite package and gin_configs/ folder must be listed."""
  import tomllib  # pylint: disable=g-import-not-at-top
  listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
               ["packages"])
  packages = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
  gin = {"t5lite." + ".".join(d.relative_to(REPO).parts)
         for d in [REPO / "gin_configs", *(REPO / "gin_configs").rglob("*")] if d.is_dir()}
  assert listed == packages | gin, (sorted((packages | gin) - listed), sorted(listed - packages - gin))
