"""The package's shape: no import cycles, a light and lazy public API, one method registry, a CLI whose
flags come from the config they fill."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fakegradient
from fakegradient import methods
from fakegradient.cli import build_parser
from fakegradient.evaluation.config import EvaluationConfig

PACKAGE = Path(fakegradient.__file__).parent


# --- import cycles ------------------------------------------------------------------------------------------


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name → file for every module under the package folder ``root``."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, mods: dict[str, Path], node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package's modules an import statement in ``module`` loads (relative imports resolved; ``from p
    import x`` names module ``p.x`` when that is a module, else ``p``)."""
    package = module.split(".")[0]
    if isinstance(node, ast.Import):
        found = {alias.name for alias in node.names}
    else:
        if node.level:
            anchor = module.split(".") if mods[module].name == "__init__.py" else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        found = {f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base for alias in node.names}
    return {t for t in found if t in mods and (t == package or t.startswith(package + "."))}


def import_graph(root: Path) -> dict[str, set[str]]:
    """module → the package modules it imports anywhere in its file (in functions too).

    A package's ``__init__`` is not a cycle partner of its own submodules: a submodule's import of its
    package (``from .. import defaults``) and the package's import of its submodules are not edges."""
    mods = module_files(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, mods, node):
                if target == module or module.startswith(target + "."):
                    continue  # itself, or one of its own parent packages
                if is_package and target.startswith(module + "."):
                    continue  # a package importing its own submodule
                graph[module].add(target)
    return graph


def find_import_cycles(root: Path) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for succ in edges:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return sorted(cycles)


def test_the_package_has_no_import_cycles():
    mods = module_files(PACKAGE)
    assert len(mods) > 40 and "fakegradient.evaluation.runner" in mods  # the real package was scanned
    cycles = find_import_cycles(PACKAGE)
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.fixture
def package_copy(tmp_path):
    copy = tmp_path / "fakegradient"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert find_import_cycles(copy) == []
    return copy


def test_the_cycle_finder_detects_a_planted_cycle(package_copy):
    # runner imports config (module level); config importing runner, even lazily, closes a cycle
    config = package_copy / "evaluation" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _late():\n    from . import runner  # noqa\n")
    cycles = find_import_cycles(package_copy)
    assert len(cycles) == 1 and {"fakegradient.evaluation.config", "fakegradient.evaluation.runner"} <= set(cycles[0])


def test_the_cycle_finder_follows_absolute_and_parent_relative_imports(package_copy):
    # methods ← evaluation.config; an absolute import of evaluation.config from methods closes a cycle
    (package_copy / "methods.py").write_text((package_copy / "methods.py").read_text()
                                             + "\nimport fakegradient.evaluation.config  # noqa\n")
    # a longer one through a parent-relative import: stages.common → runner → summary → stages.adaptive → common
    common = package_copy / "evaluation" / "stages" / "common.py"
    common.write_text(common.read_text() + "\nfrom ..runner import evaluate  # noqa\n")
    cycles = find_import_cycles(package_copy)
    flat = {m for c in cycles for m in c}
    assert {"fakegradient.methods", "fakegradient.evaluation.config"} <= flat
    assert {"fakegradient.evaluation.stages.common", "fakegradient.evaluation.runner"} <= flat


def test_a_package_and_its_own_submodules_are_no_cycle(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from . import a\nfrom .sub import b\n")
    (root / "a.py").write_text("from . import c\nimport pkg\n")
    (root / "c.py").write_text("X = 1\n")
    (root / "sub" / "__init__.py").write_text("from .b import Y\n")
    (root / "sub" / "b.py").write_text("from .. import c\nfrom ..sub import Y\nimport pkg.sub\nY = 2\n")
    assert find_import_cycles(root) == []
    (root / "c.py").write_text("def f():\n    from .sub.b import Y\n")  # a real one, inside a function
    assert find_import_cycles(root) == [["pkg.c", "pkg.sub.b"]]


# --- the public API -----------------------------------------------------------------------------------------


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], capture_output=True,
                          text=True, timeout=300, check=False)


LAZY = ("models", "attacks", "evaluation", "serving", "protection")


def test_import_is_light_and_lists_the_sub_packages():
    code = f"""
import json, sys
import fakegradient
loaded = sorted(m for m in sys.modules if m.startswith("fakegradient.") and m.split(".")[1] in {LAZY!r})
print(json.dumps({{"torch": "torch" in sys.modules, "loaded": loaded, "dir": dir(fakegradient)}}))
"""
    result = python(code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["torch"] is False and out["loaded"] == []
    assert {"models", "core", "attacks", "evaluation", "serving", "methods", "defaults", "protect", "Key",
            "InvalidArgument", "__version__"} <= set(out["dir"])
    assert out["dir"] == sorted(out["dir"])


def test_the_device_side_needs_no_torch():
    """The key, the core's permutation functions and the serving client are numpy-only."""
    code = """
import sys
import fakegradient
fakegradient.Key, fakegradient.core.decrypt, fakegradient.core.generate_permutation
fakegradient.serving.InferenceClient, fakegradient.methods.METHODS, fakegradient.defaults.SCALE
sys.exit(3 if "torch" in sys.modules else 0)
"""
    result = python(code)
    assert result.returncode == 0, result.stderr or "torch was imported"


@pytest.mark.slow
def test_the_sub_packages_resolve_on_first_use():
    code = """
import json
import fakegradient as fg
found = [fg.models.load, fg.core.decrypt, fg.attacks.DeepFool, fg.evaluation.EvaluationConfig,
         fg.serving.InferenceClient, fg.protect]
print(json.dumps([f"{f.__module__}.{f.__name__}" for f in found]))
"""
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "fakegradient.models.load", "fakegradient.core.permutation.decrypt", "fakegradient.attacks.deepfool.DeepFool",
        "fakegradient.evaluation.config.EvaluationConfig", "fakegradient.serving.client.InferenceClient",
        "fakegradient.protection.protect"]


def test_unknown_attributes_are_attribute_errors():
    with pytest.raises(AttributeError, match="nope"):
        fakegradient.nope  # noqa: B018
    with pytest.raises(AttributeError, match="nope"):
        fakegradient.evaluation.nope  # noqa: B018


def test_python_m_fakegradient_version():
    from importlib.metadata import version

    result = python("", "-m", "fakegradient", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fakegradient {fakegradient.__version__}"
    assert fakegradient.__version__ == version("fakegradient")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_help_lists_every_command_without_rst_markup():
    commands = subcommands(build_parser())
    assert len(commands) >= 8 and {"protect", "evaluate", "export-triton", "models"} <= set(commands)
    result = python("", "-m", "fakegradient", "--help")
    assert result.returncode == 0, result.stderr
    for command in commands:
        assert f"    {command}" in result.stdout, command  # listed with its help line
    texts = {"fakegradient": result.stdout} | {name: p.format_help() for name, p in commands.items()}
    for name, text in texts.items():
        for markup in ("``", ":mod:", ":class:", ":func:", ":data:"):
            assert markup not in text, (name, markup)


@pytest.mark.parametrize("command", ["protect", "evaluate"])
def test_every_option_has_help(command):
    parser = subcommands(build_parser())[command]
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert len(actions) > 5
    for action in actions:
        assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, action.option_strings


# --- the method registry ------------------------------------------------------------------------------------


def option(command: str, flag: str) -> argparse.Action:
    parser = subcommands(build_parser())[command]
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return action


def test_the_registry_drives_the_cli():
    assert methods.PROTECTIONS == tuple(n for n, m in methods.METHODS.items() if m.protects)
    assert methods.ORIGINAL in methods.METHODS and methods.ORIGINAL not in methods.PROTECTIONS
    assert fakegradient.METHODS is methods.METHODS
    protect_method = option("protect", "--method")
    assert methods.DEPLOYABLE == tuple(n for n in methods.PROTECTIONS
                                       if not (methods.METHODS[n].control or methods.METHODS[n].candidate))
    assert {"decoys", "mixing"} <= set(methods.PROTECTIONS) - set(methods.DEPLOYABLE) - set(methods.CONTROLS)
    assert tuple(protect_method.choices) == methods.DEPLOYABLE  # controls are for experiments, not deployment
    for name in methods.DEPLOYABLE:
        assert f"{name}: {methods.METHODS[name].help}" in protect_method.help
    evaluate_methods = option("evaluate", "--methods")
    for name in methods.METHODS:
        assert name in evaluate_methods.help
    assert evaluate_methods.default == methods.PAPER_METHODS
    EvaluationConfig(methods=tuple(methods.METHODS))  # every registered method can be evaluated


def test_protect_choices_follow_the_registry():
    from fakegradient import schemes
    from fakegradient.schemes.fake_rows import FakeRows

    new = FakeRows("zz-new", "ZZ", "a scheme registered by this test", rows="fake_gradient_rows",
                   capabilities=schemes.Capabilities(uses_scale=True, random=False))
    schemes.register(new)
    try:
        action = option("protect", "--method")
        assert tuple(action.choices) == methods.DEPLOYABLE and action.choices[-1] == "zz-new"
        assert "zz-new: a scheme registered by this test" in action.help
    finally:
        schemes.unregister("zz-new")
    assert "zz-new" not in option("protect", "--method").choices


def test_protect_accepts_exactly_the_protections(tiny, tiny_input):
    from fakegradient import InvalidArgument, protect

    for name in methods.PROTECTIONS:
        _, key = protect(tiny, method=name, example_input=tiny_input, seed=0)
        assert key.method == name
    for name in (methods.ORIGINAL, "nope", "Fake-Gradient"):
        with pytest.raises(InvalidArgument, match="method"):
            protect(tiny, method=name, example_input=tiny_input)


def test_evaluate_flags_default_to_the_config_defaults():
    parser = build_parser()
    args = parser.parse_args(["evaluate"])
    fields = dataclasses.fields(EvaluationConfig)
    for f in fields:
        assert getattr(args, f.name) == f.default, f.name
    settings = {f.name: getattr(args, f.name) for f in fields}
    assert EvaluationConfig(**settings) == EvaluationConfig()
    # and the flags parse into the fields' types
    args = parser.parse_args(["evaluate", "--methods", "original, fake-gradient", "--scale", "3", "--limit", "2",
                              "--overshoot", "0.5", "--adaptive"])
    config = EvaluationConfig(**{f.name: getattr(args, f.name) for f in fields})
    assert config.methods == ("original", "fake-gradient") and config.limit == 2 and config.adaptive
    assert isinstance(config.scale, float) and math.isclose(config.scale, 3.0)
