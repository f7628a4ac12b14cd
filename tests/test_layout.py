"""The package's shape, as code: two wings (the master's, the workers') on a shared floor.

Entry points (`conf`, `hooks`, `cli`) may import anything; the master's wing and the
workers' wing import the floor and never each other; the floor imports neither wing;
no module imports itself back through a cycle. Imports inside functions count too.
"""

import ast
import re
import pathlib

import gunicorn_graceful

PACKAGE = pathlib.Path(gunicorn_graceful.__file__).parent
ENTRY = {"gunicorn_graceful.conf", "gunicorn_graceful.hooks", "gunicorn_graceful.cli",
         "gunicorn_graceful"}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, known):
    """The pack's modules `path` imports (a package's name when it names the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("gunicorn_graceful"):
            for alias in node.names:
                name = "%s.%s" % (node.module, alias.name)
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
    return found


def graph():
    paths = [p for p in PACKAGE.rglob("*.py") if "templates" not in p.parts]
    known = {module_name(p) for p in paths}
    return {module_name(p): imports(p, known) - {module_name(p)} for p in paths}


def wing(name):
    if name in ENTRY:
        return "entry"
    for side in ("master", "workers"):
        if name == "gunicorn_graceful." + side or name.startswith("gunicorn_graceful.%s." % side):
            return side
    return "floor"


def test_the_wings_import_the_floor_and_never_each_other():
    allowed = {"floor": {"floor"}, "master": {"master", "floor"},
               "workers": {"workers", "floor"}}
    crossings = sorted("%s -> %s" % (source, target)
                       for source, targets in graph().items() if wing(source) != "entry"
                       for target in targets if wing(target) not in allowed[wing(source)])
    assert crossings == []


def test_no_import_cycle():
    edges = graph()
    cycles = []

    def visit(name, path):
        for target in sorted(edges.get(name, ())):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif len(path) < len(edges):
                visit(target, path + [target])

    for start in sorted(edges):
        visit(start, [start])
    assert cycles == []


def test_both_wings_and_the_floor_hold_modules():
    sides = {wing(name) for name in graph()}
    assert sides == {"entry", "floor", "master", "workers"}


SIBLINGS = {"core", "phase", "records", "pool", "recycler", "rollouts", "upgrades", "stopper",
            "status", "metrics", "notifier", "molds", "generations"}


def reaches(path):
    """`arbiter.<sibling>` (or `self.arbiter.<sibling>`) read in the master's module `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in SIBLINGS:
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "arbiter") or \
                    (isinstance(owner, ast.Attribute) and owner.attr == "arbiter"):
                found.append("%s:%s arbiter.%s" % (path.name, node.lineno, node.attr))
    return found


def test_no_helper_of_the_master_reaches_a_sibling_through_the_arbiter():
    """Only the arbiter (which builds them) and the core (which decides) hold them all."""
    helpers = [p for p in (PACKAGE / "master").glob("*.py")
               if p.name not in ("arbiter.py", "core.py")]
    assert len(helpers) > 10
    assert [hit for path in helpers for hit in reaches(path)] == []


def calls(path, method, owners):
    return ["%s:%s" % (path.name, node.lineno) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == method and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr in owners]


def test_only_the_core_moves_the_phase_and_speaks_to_systemd():
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "core.py"]
    moves = [hit for p in modules for hit in calls(p, "move", {"phase"})]
    told = [hit for p in modules for method in ("ready", "reloading", "stopping", "status", "send")
            for hit in calls(p, method, {"notifier"})]
    assert moves == [] and told == []
    core = PACKAGE / "master" / "core.py"
    assert calls(core, "move", {"phase"}) and calls(core, "ready", {"notifier"})


def generation_writes(path):
    """Assignments to the arbiter's generation, or to the numbers `generations` owns."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            owner = getattr(target, "value", None)
            owner_name = getattr(owner, "id", None) or getattr(owner, "attr", None)
            if isinstance(target, ast.Attribute) and (
                    (target.attr == "generation" and owner_name in ("arbiter", "server"))
                    or (target.attr in ("current", "last", "releases")
                        and owner_name == "generations")):
                found.append("%s:%s" % (path.name, node.lineno))
    return found


def test_only_generations_writes_the_generation():
    """The arbiter's `generation` is a read-only property over `generations.current`."""
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "generations.py"]
    assert [hit for p in modules for hit in generation_writes(p)] == []
    from gunicorn_graceful.master.arbiter import GracefulArbiter
    assert GracefulArbiter.generation.fset is None


def documented_table():
    """The rows of the fact table in `core`'s docstring: {(phase, fact): handler}."""
    from gunicorn_graceful.master import core
    rows, phase = {}, None
    for line in core.__doc__.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1] and cells[1][0].isupper() and cells[1] != "fact":
            phase = cells[0]
            rows[(phase, cells[1])] = cells[2]
    return rows


def test_the_documented_table_is_the_dispatch_table():
    from gunicorn_graceful.master import core, facts
    table = {(k if k == core.ANY else k.value, fact.__name__): handler
             for (k, fact), handler in core.TABLE.items()}
    assert documented_table() == table
    kinds = {c for c in vars(facts).values() if isinstance(c, type) and c.__module__ == facts.__name__}
    assert {fact for _, fact in core.TABLE} == kinds  # every fact has a row
    assert all(callable(getattr(core.Core, handler)) for handler in core.TABLE.values())


# Where a helper of the master sends a signal: each carries out what `core` (or `plan`,
# through the pool) decided, and is called from there; any other is a decision made in a
# helper, which belongs in `core`'s table.
SIGNAL_SITES = {
    "inplace.py": {"kill_check", "end_check",     # core: CheckLate; refused; it stops
                   "kill"},                       # (AdoptedCheck.kill: for those two)
    "mold.py": {"kill", "stop", "fork"},          # core: MoldLate; unneeded; a fork unanswered
    "mold_process.py": {"signal_pid"},            # the molds' process calls
    "system.py": {"signal"},                      # the port core signals other masters by
    "pool.py": {"terminate", "kill"},             # plan's actions
    "stop.py": {"tell_lame_duck"},                # core: lame duck
}
SIGNALS = {"kill", "signal", "kill_worker"}


def signal_sites(path):
    """(function, call) for each call in `path` that signals a process, retires a generation
    or halts the master."""
    found = set()
    for func in ast.walk(ast.parse(path.read_text())):
        if not isinstance(func, ast.FunctionDef):
            continue
        for node in ast.walk(func):
            owner = getattr(getattr(node, "func", None), "value", None)
            if isinstance(node, ast.Call) and getattr(owner, "id", None) not in ("self",
                                                                                 "signal"):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name == "signal" and "system" in (getattr(owner, "attr", None),
                                                     getattr(owner, "id", None)):
                    name = "system.signal"
                if name in SIGNALS | {"system.signal", "retire_generation", "HaltServer"}:
                    found.add((func.name, name))
    return found


def test_only_the_core_decides_timeouts_rollbacks_halts_and_retirements():
    """No helper signals another master, retires a generation or halts on its own; the
    signals helpers send are the listed ones."""
    helpers = [p for p in (PACKAGE / "master").glob("*.py")
               if p.name not in ("core.py", "arbiter.py")]
    found = {(p.name, func, name) for p in helpers for func, name in signal_sites(p)}
    decided_here = sorted(hit for hit in found if hit[2] in ("retire_generation", "HaltServer",
                                                            "system.signal"))
    assert decided_here == []
    assert {(module, func) for module, func, _ in found} == \
        {(module, func) for module, funcs in SIGNAL_SITES.items() for func in funcs}


def test_docs_layout_names_every_module():
    text = (PACKAGE.parent / "docs" / "layout.md").read_text()
    modules = [p for p in PACKAGE.rglob("*.py")
               if "templates" not in p.parts and p.name != "__init__.py"]
    assert [p.name for p in modules if not re.search(r"\b%s\b" % re.escape(p.name), text)] == []
