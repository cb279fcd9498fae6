"""The README's map of the code ("How it is built") names every package and every module, and nothing else.

The map is one code block: a package's path (ending in ``/``) and what it is on one line, its modules on the next,
indented. Adding, moving or removing a module or package without changing the map fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "evaluation", "sweep")


def read_map() -> dict[str, set[str]]:
    """``{package path: module names}`` as the README's map lists them."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## How it is built\n", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "README 'How it is built' has no code block"
    listed: dict[str, set[str]] = {}
    package = None
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            package = line.split()[0]
            assert package.endswith("/"), f"map line does not start with a package path: {line!r}"
            assert package not in listed, f"{package} is listed twice"
            listed[package] = set()
        else:
            assert package is not None and not listed[package], f"modules line without its package line: {line!r}"
            listed[package] = set(line.split())
    return listed


def tree() -> dict[str, set[str]]:
    """``{package path: module names}`` on disk."""
    found = {}
    for top in PACKAGES:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            package = init.parent
            found[f"{package.relative_to(ROOT).as_posix()}/"] = {
                p.stem for p in package.glob("*.py") if p.name != "__init__.py"
            }
    return found


def test_every_package_is_on_the_map():
    listed, found = read_map(), tree()
    assert sorted(set(found) - set(listed)) == [], "packages missing from the README's map"
    assert sorted(set(listed) - set(found)) == [], "the README's map lists packages that do not exist"


def test_every_module_is_on_the_map():
    listed, found = read_map(), tree()
    for package in sorted(set(listed) & set(found)):
        assert listed[package] == found[package], (
            f"{package}: missing from the map {sorted(found[package] - listed[package])}, "
            f"not on disk {sorted(listed[package] - found[package])}"
        )
