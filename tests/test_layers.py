"""The layering: the core (``falcon_plugin/*`` outside ``tools/``, the Hydra plugin) never imports the tools.

An AST scan of every import statement (absolute and relative, ``import x`` and ``from x import y``) and
of every string naming a module (``importlib.import_module("...")``, lazy-import tables) in the core's
source files. The scanner itself is checked on sources that do import the tools, so this test fails
the day someone adds such an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "falcon_plugin"
TOOLS = "falcon_plugin.tools"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def tools_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Names of ``falcon_plugin.tools`` modules that ``source`` (the code of ``module``) imports or names."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[str] = []

    def check(name: str) -> None:
        if name == TOOLS or name.startswith(TOOLS + "."):
            found.append(name)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            check(target)
            for alias in node.names:
                check(f"{target}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            check(node.value.strip())
    return found


def _core_files() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if "tools" not in p.relative_to(PACKAGE).parts[:1]]
    files += list((REPO / "hydra_plugins").rglob("*.py"))
    return sorted(files)


def test_core_files_found() -> None:
    names = {_module_name(p) for p in _core_files()}
    assert {"falcon_plugin", "falcon_plugin.trainer", "falcon_plugin.mi", "falcon_plugin.host"} <= names
    assert not any(n.startswith(TOOLS) for n in names)


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_core_module_does_not_import_tools(path: Path) -> None:
    found = tools_imports(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
    assert not found, f"{path.relative_to(REPO)} imports the tools layer: {found}"


@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("import falcon_plugin.tools.cli", "falcon_plugin.trainer", False),
        ("from falcon_plugin.tools.common.tables import markdown_table", "falcon_plugin.report", False),
        ("from falcon_plugin import tools", "falcon_plugin.report", False),
        ("from .tools.leaderboard import build", "falcon_plugin.report", False),
        ("from . import tools", "falcon_plugin", True),
        ("from ..tools import sweep", "falcon_plugin.configs", True),
        ("def f():\n    from .tools import demo\n", "falcon_plugin.trainer", False),
        ('_LAZY = {"x": "falcon_plugin.tools.cli"}', "falcon_plugin", True),
    ],
)
def test_scanner_flags_tools_imports(source: str, module: str, is_package: bool) -> None:
    assert tools_imports(source, module, is_package)


def test_scanner_ignores_core_imports() -> None:
    source = "from . import activations\nfrom .config import FalconConfig\nimport falcon_plugin.toolsmith\n"
    assert tools_imports(source, "falcon_plugin.trainer") == []


def test_configs_shown_at_top_level() -> None:
    """``configs/`` at the repository root is the packaged ``falcon_plugin/configs`` (one copy of a file)."""
    top = REPO / "configs"
    assert top.is_dir() and top.resolve() == (PACKAGE / "configs").resolve()
    assert (top / "trainer" / "FALCON.yaml").is_file()
    assert (top / "experiment" / "unlearn" / "tofu" / "falcon.yaml").is_file()
