"""The packages depend in one direction: app -> analysis -> sparsecut <- training (and app -> sparsecut)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("sparsecut", "analysis", "app", "training")
ALLOWED = {"sparsecut": set(), "analysis": {"sparsecut"}, "app": {"analysis", "sparsecut"}, "training": {"sparsecut"}}


def imported_packages(package: str) -> dict[str, set[str]]:
    """This project's packages that ``package``'s modules import (at any depth: lazy imports count), by module."""
    found = {}
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            for node in ast.walk(tree):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for module in modules:
                    top = module.split(".")[0]
                    if top in PACKAGES and top != package:
                        found.setdefault(top, set()).add(os.path.relpath(path, ROOT))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_packages_below_it(package):
    wrong = {other: sorted(files) for other, files in imported_packages(package).items() if other not in ALLOWED[package]}
    assert not wrong, f"{package} imports {wrong}"
