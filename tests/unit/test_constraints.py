"""constraints.txt pins the whole dependency tree, and every install step uses it.

Without it pip resolves lower bounds by backtracking through boto3, botocore and
aiobotocore releases, which older pips abandon with "resolution-too-deep" (issue 22).
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
PIN_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)$")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN_RE.match(line)
        assert match, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _pin_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pin_constraints", ROOT / "tools" / "pin_constraints.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    project = _project()
    declared = list(project["dependencies"])  # type: ignore[call-overload]
    for extra in project["optional-dependencies"].values():  # type: ignore[attr-defined]
        declared += extra
    wrong = []
    for text in declared:
        requirement = Requirement(text.split("#")[0])
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(str(project["name"])):
            continue
        if name not in pins:
            wrong.append(f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            wrong.append(f"{requirement.name}=={pins[name]} is outside {requirement.specifier}")
    assert not wrong, "regenerate with tools/pin_constraints.py:\n" + "\n".join(wrong)
    assert pins["aiohttp"] == "3.14.5"  # the version the SSRF guard is tested with


def test_every_installed_package_of_the_tree_is_pinned() -> None:
    """What the extras pull in, transitively, as installed here: none left to resolve."""
    tree = _pin_tool().closure(("cli", "dev", "bench"), installed_only=True)
    pins = _pins()
    missing = sorted(name for name in tree if canonicalize_name(name) not in pins)
    assert len(tree) > 50, "the walk found too little: is the package installed?"
    assert not missing, "not in constraints.txt (run tools/pin_constraints.py): " + ", ".join(
        missing
    )


def test_every_install_step_of_the_makefile_uses_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^CONSTRAINTS := constraints\.txt$", makefile, re.MULTILINE)
    installs = [
        line.strip() for line in makefile.splitlines() if "pip install" in line and " -e " in line
    ]
    assert len(installs) >= 3, installs  # dev, cli and bench
    unconstrained = [line for line in installs if "-c $(CONSTRAINTS)" not in line]
    assert not unconstrained, unconstrained
