"""How slmnb is packaged and checked: one version, every imported library declared, and the test settings CI relies on.

The wheel itself (built, installed without Node, its extension listed by JupyterLab) is checked in
tests/test_labextension.py.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import slmnb

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_version_is_written_once_in_package_json() -> None:
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert _pyproject()["tool"]["hatch"]["version"] == {"source": "nodejs", "path": "labextension/package.json"}
    package = json.loads((ROOT / "labextension" / "package.json").read_text(encoding="utf-8"))
    # A stale editable install fails here: `make setup` reinstalls whenever package.json changes.
    assert slmnb.__version__ == importlib.metadata.version("slmnb") == package["version"]


def _imported_top_level_names(package: Path) -> dict[str, str]:
    """Each top-level module that the package's code imports (at any depth, lazily or not), with one place it does."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_library_slmnb_imports_is_a_declared_dependency() -> None:
    """A library that only arrives as another package's dependency can vanish with that package's next release."""
    project = _pyproject()["project"]
    extras = [req for name, reqs in project["optional-dependencies"].items() if name != "test" for req in reqs]
    declared = {_normalized(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in project["dependencies"] + extras}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, where in _imported_top_level_names(ROOT / "slmnb").items():
        if module in sys.stdlib_module_names or module in ("slmnb", "__future__"):
            continue
        names = {_normalized(name) for name in distributions.get(module, [module])}
        if not names & declared:
            missing.append(f"{'/'.join(sorted(names))} (imported at {where})")
    assert not missing, "add to [project] dependencies in pyproject.toml: " + ", ".join(missing)


def _warn_from(module: str, category: type[Warning]) -> None:
    """Raises a warning that Python attributes to `module`, as a library's stacklevel attributes it to its caller."""
    exec("warnings.warn('old API', category)", {"__name__": module, "warnings": warnings, "category": category})


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning])
def test_a_deprecation_that_slmnb_triggers_fails_the_test(category: type[Warning]) -> None:
    with pytest.raises(category, match="old API"):
        _warn_from("slmnb.training.engine", category)


def test_a_third_party_deprecation_is_shown_not_hidden_nor_an_error() -> None:
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters in force (pytest.warns would not)
        _warn_from("somelibrary.module", DeprecationWarning)
    assert [str(warning.message) for warning in caught] == ["old API"]


def test_every_test_has_a_deadline_that_ends_even_a_hung_thread(pytestconfig: pytest.Config) -> None:
    assert 0 < float(pytestconfig.getini("timeout")) <= 600
    assert pytestconfig.getini("timeout_method") == "thread"


def test_make_test_lints_and_type_checks_before_the_tests() -> None:
    commands = subprocess.run(["make", "-n", "-C", str(ROOT), "test"], capture_output=True, text=True,
                              check=True, timeout=60).stdout.splitlines()
    ruff, mypy, pytest_run = (next((i for i, line in enumerate(commands) if tool in line), -1)
                              for tool in ("ruff check slmnb tests bench", "/mypy", "-m pytest"))
    assert -1 < ruff < mypy < pytest_run, "\n".join(commands)
