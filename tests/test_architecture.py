"""The project's arrows point one way, checked by reading the imports of every file.

CLI -> library; bundles, template, benchmarks -> library. The library imports no CLI module, bundle or
template; no bundle imports another bundle or the CLI; no subcommand module imports another; nothing outside
the tests finds files by walking up from ``__file__``.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "src" / "ctfm"
CLI = LIBRARY / "cli"
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir())
# Module names under which bundle and template code is imported (bundle root on sys.path).
BUNDLE_PACKAGES = {"scripts", "ctfmsegresnet", "benchmarks"}
# Modules of the CLI package that subcommands may share (argparse helpers, the dispatcher).
CLI_SHARED = {"main", "_options", "__init__", "__main__"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a Python file, relative imports resolved against its package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from ctfm.cli import search` imports the module ctfm.cli.search
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _package_of(path: Path) -> str:
    if LIBRARY in path.parents:
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        return ".".join(parts[:-1])
    return ""


def config_imports(path: Path) -> list[tuple[int, str]]:
    """Modules named by a bundle config: ``$import x``, ``$from x import``, and ``_target_`` values."""
    found = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        found += [(lineno, m) for m in re.findall(r"\$(?:from|import)\s+([\w.]+)", line)]
        found += [(lineno, m.rsplit(".", 1)[0]) for m in re.findall(r'"_target_"\s*:\s*"([\w.]+)"', line)]
    return found


def python_files(root: Path):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _is_cli(module: str) -> bool:
    return module == "ctfm.cli" or module.startswith("ctfm.cli.")


def test_library_imports_no_cli_bundle_or_template():
    bad = []
    for path in python_files(LIBRARY):
        if CLI in path.parents:
            continue
        for line, module in imported_modules(path):
            if _is_cli(module) or module.split(".")[0] in BUNDLE_PACKAGES:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, "the library must not import the CLI, a bundle or the template:\n" + "\n".join(bad)


def test_no_subcommand_imports_another():
    bad = []
    for path in python_files(CLI):
        if path.stem in CLI_SHARED:
            continue
        for line, module in imported_modules(path):
            target = module.split(".")[2] if _is_cli(module) and module.count(".") >= 2 else None
            if target and target not in CLI_SHARED and target != path.stem:
                bad.append(f"{path.relative_to(REPO)}:{line} imports ctfm.cli.{target}")
    bad = sorted(set(bad))
    assert not bad, "a subcommand module may import only the library and the CLI's shared helpers:\n" + "\n".join(bad)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_imports_no_cli_and_no_other_bundle(bundle):
    bad = []
    sources = [(p, imported_modules(p)) for p in python_files(bundle)]
    sources += [(p, config_imports(p)) for p in sorted((bundle / "configs").glob("*.json"))]
    for path, modules in sources:
        for line, module in modules:
            if _is_cli(module):
                bad.append(f"{path.relative_to(REPO)}:{line} uses {module}")
        text = path.read_text()
        for other in BUNDLES:
            if other != bundle and other.name in text:
                bad.append(f"{path.relative_to(REPO)} names the bundle {other.name}")
    assert not bad, "bundles reach shared code through the library only:\n" + "\n".join(bad)


def test_template_app_and_benchmarks_import_no_cli():
    bad = []
    for root in (REPO / "auto3dseg_algo", REPO / "monailabel_app", REPO / "benchmarks"):
        for path in python_files(root):
            bad += [f"{path.relative_to(REPO)}:{line} imports {m}" for line, m in imported_modules(path) if _is_cli(m)]
    assert not bad, "the template, the MONAI Label app and the benchmarks use the library, not the CLI:\n" + "\n".join(bad)


WALK_UP = re.compile(r"__file__\)?(\.resolve\(\))?\.(parents\[|parent\.parent)")


def test_nothing_walks_up_from_its_own_file():
    bad = []
    roots = [REPO / "src", REPO / "auto3dseg_algo", REPO / "monailabel_app", REPO / "benchmarks", *BUNDLES]
    for root in roots:
        for path in python_files(root):
            if path == REPO / "benchmarks" / "common.py":  # the benchmark harness's one anchor, like tests/
                continue
            text = path.read_text()
            where = "__file__" in text if root == REPO / "src" else WALK_UP.search(text)
            if where:
                bad.append(str(path.relative_to(REPO)))
    assert not bad, (
        "files are found through the package's resources or an explicit argument, never from __file__:\n"
        + "\n".join(bad)
    )


def test_the_checker_sees_a_violation(tmp_path):
    """The import reader finds both forms of a CLI import, so the tests above can fail."""
    sample = tmp_path / "x.py"
    sample.write_text("import ctfm.cli.search\nfrom ctfm.cli import embed\n")
    modules = {m for _, m in imported_modules(sample)}
    assert {"ctfm.cli.search", "ctfm.cli.embed"} <= modules
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"a": "$from ctfm.cli.x import y", "b": {"_target_": "ctfm.cli.z.Thing"}}, indent=1))
    assert {m for _, m in config_imports(config)} == {"ctfm.cli.x", "ctfm.cli.z"}
