"""What `sam build` puts in the function's artifact, checked without building it.

template.yaml builds IngestFunction with SAM's makefile build method: the Makefile's
``build-IngestFunction`` target installs requirements-lambda.txt for the function's
platform and copies handler/ and ingest_core/. These tests keep the three in step:
the requirements with pyproject.toml, the target with the function's runtime and
architecture.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
REQUIREMENTS = ROOT / "requirements-lambda.txt"
MAKEFILE = ROOT / "Makefile"
TEMPLATE = ROOT / "template.yaml"
# Lambda architecture -> the pip --platform tag of the wheels it runs.
PLATFORM_FOR = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}


def _normalised(requirement: str) -> tuple[str, str, frozenset[str], str]:
    parsed = Requirement(requirement)
    return (
        canonicalize_name(parsed.name),
        str(parsed.specifier),
        frozenset(parsed.extras),
        str(parsed.marker or ""),
    )


def _requirement_lines(text: str) -> list[str]:
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _function() -> tuple[str, dict[str, Any]]:
    template: dict[str, Any] = yaml_parse(TEMPLATE.read_text())
    (function,) = [
        (name, resource)
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    ]
    return function


def _make_target(name: str) -> str:
    """The recipe of target ``name``: its tab-indented lines, continuations joined."""
    lines = MAKEFILE.read_text().splitlines()
    start = lines.index(f"{name}:") if f"{name}:" in lines else None
    assert start is not None, f"the Makefile has no `{name}:` target (sam build runs it)"
    recipe: list[str] = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().removesuffix("\\").strip())
    return " ".join(recipe)


def _make_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, f"the Makefile does not set {name}"
    return match.group(1)


def test_lambda_requirements_are_exactly_the_runtime_dependencies() -> None:
    # GIVEN the runtime dependencies declared in pyproject.toml
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]

    # WHEN requirements-lambda.txt is read, comments and blank lines aside
    listed = _requirement_lines(REQUIREMENTS.read_text())

    # THEN both name the same packages with the same version bounds, once each
    assert len({_normalised(r)[0] for r in listed}) == len(listed)
    assert {_normalised(r) for r in listed} == {_normalised(r) for r in declared}


def test_sam_builds_the_function_with_the_makefile() -> None:
    # GIVEN the function resource
    logical_id, function = _function()

    # THEN sam build runs the Makefile (in the project root) rather than copying the root
    assert function["Metadata"]["BuildMethod"] == "makefile"
    assert function["Properties"]["CodeUri"] in {".", "./"}
    assert MAKEFILE.exists()
    assert logical_id == "IngestFunction"


def test_the_build_target_installs_wheels_for_the_functions_runtime_and_architecture() -> None:
    # GIVEN the function's runtime and architecture, and its build target
    logical_id, function = _function()
    properties = function["Properties"]
    python_version = properties["Runtime"].removeprefix("python")
    (architecture,) = properties["Architectures"]
    recipe = _make_target(f"build-{logical_id}")

    # THEN it installs requirements-lambda.txt as binary wheels for that platform and Python
    assert "-r requirements-lambda.txt" in recipe
    assert '--target "$(ARTIFACTS_DIR)"' in recipe
    assert "--only-binary=:all:" in recipe and "--implementation cp" in recipe
    assert "--python-version $(LAMBDA_PYTHON_VERSION)" in recipe
    assert "--platform $(LAMBDA_PLATFORM)" in recipe
    assert _make_variable("LAMBDA_PYTHON_VERSION") == python_version
    assert _make_variable("LAMBDA_PLATFORM") == PLATFORM_FOR[architecture]
    # AND copies only the two packages the handler imports, without bytecode caches
    assert 'cp -R handler ingest_core "$(ARTIFACTS_DIR)/"' in recipe
    assert "__pycache__" in recipe
    assert not re.search(r"\b(tests|benchmarks|tools)\b", recipe)
