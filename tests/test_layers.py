"""The package's layers point one way (models -> generation -> rl / cascade, `parallel` below
everything, `planning` on top) and no module uses another's private names. An AST walk over
every import in corea_jax/, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "corea_jax"

# Each part of corea_jax and the parts it must not import (SHAPE of the guide / STYLE.md layers).
_TOP = {"serving", "reproduction"}  # layer 4: composing cascade, engine and trainer
_ABOVE_MODELS = {"generation", "rl", "cascade", "planning", "elicitation"} | _TOP
FORBIDDEN = {
    **{base: {"parallel", "models", "generation", "rl", "cascade", "planning", "data", "elicitation", "grading",
              "prompts", "rewards", "calibration", "confidence", "settings"} | _TOP for base in ("files",)},
    "settings": {"files", "parallel", "models", "generation", "rl", "cascade", "planning", "data", "elicitation",
                 "grading", "prompts", "rewards", "calibration", "confidence"} | _TOP,
    "parallel": {"models", "generation", "rl", "cascade", "planning", "data", "elicitation", "grading",
                 "prompts", "rewards", "calibration", "confidence"} | _TOP,
    "models": _ABOVE_MODELS | {"data"},
    "generation": {"rl", "cascade", "planning", "elicitation", "data"} | _TOP,
    "data": {"generation", "rl", "cascade", "planning", "elicitation"} | _TOP,
    **{text: _ABOVE_MODELS | {"models", "parallel"}
       for text in ("grading", "prompts", "rewards", "calibration", "confidence")},
    "rl": {"cascade", "planning", "elicitation"} | _TOP,
    "cascade": {"rl", "planning"} | _TOP,
    "serving": {"reproduction", "planning", "rl"},
    "reproduction": {"serving"},
}


def _part(module: str) -> str:
    """'corea_jax.models.decoder' -> 'models'; 'corea_jax' -> ''."""
    return module.split(".")[1] if module.count(".") else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path):
    """(line, imported corea_jax module, imported names, {local name: module} of module bindings)."""
    tree = ast.parse(path.read_text())
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found, bound = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("corea_jax"):
                    found.append((node.lineno, alias.name, []))
                    if alias.asname:
                        bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("corea_jax"):
                continue
            names = [a.name for a in node.names]
            found.append((node.lineno, base, names))
            for alias in node.names:
                if _is_module(f"{base}.{alias.name}"):
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return tree, this, found, bound


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    _, this, found, _ = _imports(path)
    part = _part(this)
    bad = []
    for line, module, names in found:
        targets = [module] + [f"{module}.{n}" for n in names if _is_module(f"{module}.{n}")]
        for target in targets:
            if _part(target) in FORBIDDEN.get(part, set()):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                           f"({part} sits below {_part(target)})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_uses_another_modules_private_names(path):
    tree, this, found, bound = _imports(path)
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} from {module}"
           for line, module, names in found if module != this
           for name in names if name.startswith("_") and not name.startswith("__")]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and bound[node.value.id] != this):
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses "
                       f"{bound[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(bad)


def _exports(package: str) -> set[str]:
    """The names a package's __init__ lists in __all__ (its public face)."""
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {elt.value for elt in node.value.elts}
    return set()


LAUNCH = sorted((PACKAGE.parent / "launch").glob("*.py"))


@pytest.mark.parametrize("path", FILES + LAUNCH, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_other_packages_are_used_through_their_faces(path):
    """Across packages, an import names the package (`from corea_jax.cascade import Item`), never
    one of its submodules, and takes only what the package's __all__ exports."""
    this = _module_name(path) if path.is_relative_to(PACKAGE) else "launch"
    own = _part(this) if this != "launch" else "launch"
    bad = []
    for line, module, names in _imports(path)[2]:
        part = _part(module)
        if part == own or not (PACKAGE / part / "__init__.py").exists():
            continue  # the same package, or a one-module part (corea_jax/files.py, ...)
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        if module.count(".") > 1:
            bad.append(f"{where} imports the submodule {module}: import from corea_jax.{part}")
        for name in names:
            if module.count(".") == 1 and name not in _exports(part):
                bad.append(f"{where} imports {name} from corea_jax.{part}, which does not export it")
    assert not bad, "\n".join(bad)


def test_the_walk_sees_the_package():
    parts = {_part(_module_name(p)) for p in FILES}
    assert {"models", "generation", "rl", "parallel", "planning"} <= parts
    _, _, found, bound = _imports(PACKAGE / "planning.py")
    assert any(module == "corea_jax.generation" for _, module, _ in found)
    assert bound.get("sharding_lib") == "corea_jax.parallel.sharding"
