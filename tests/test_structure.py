"""The package's shape: commands on top, library below, no import cycles (function-level
imports included), and a Layout section in the README that names every module."""
import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "t5lite"
COMMAND_LAYER = ("t5lite.cli", "t5lite.main", "t5lite.__main__")


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


def is_command(name: str) -> bool:
  return any(name == c or name.startswith(c + ".") for c in COMMAND_LAYER)


def test_library_never_imports_the_command_layer():
  offenders = {m: sorted(d for d in deps if is_command(d))
               for m, deps in graph().items() if not is_command(m)}
  offenders = {m: d for m, d in offenders.items() if d}
  assert not offenders, f"library modules importing commands: {offenders}"


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
  """The walk finds imports inside functions (so the two tests above would see a lazy cycle)."""
  assert "t5lite.inference" in graph()["t5lite.train"]  # imported inside train()


def test_readme_layout_names_every_module():
  readme = (REPO / "README.md").read_text()
  layout = readme[readme.index("## Layout"):]
  layout = layout[:layout.index("\n## ", 4)] if "\n## " in layout[4:] else layout
  missing = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
             if p.name != "__init__.py" and str(p.relative_to(REPO)) not in layout]
  assert not missing, f"README Layout does not list: {missing}"


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
