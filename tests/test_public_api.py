"""The package exports exactly the names the contract lists, typed."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import parmap

DOCUMENTED = {
    "parallel",
    "pmap",
    "apmap",
    "imap",
    "aimap",
    "Pool",
    "Executor",
    "MapResult",
    "MapStats",
    "Outcome",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerMemoryError",
    "RemoteError",
}


def test_exports_match_the_contract() -> None:
    assert set(parmap.__all__) == DOCUMENTED
    public = {name for name in vars(parmap) if not name.startswith("_")}
    assert public == DOCUMENTED
    for name in DOCUMENTED:
        assert getattr(parmap, name).__doc__, f"{name} has no docstring"


def test_readme_documents_every_export() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in DOCUMENTED:
        assert re.search(rf"\b{name}\b", readme), f"README does not mention {name}"


def test_package_is_typed() -> None:
    assert (Path(parmap.__file__).parent / "py.typed").exists()


def test_decorated_function_keeps_name_doc_and_signature() -> None:
    from .jobs import decorated_square

    assert decorated_square.__name__ == "decorated_square"
    assert str(inspect.signature(decorated_square)) == "(x: 'int') -> 'int'"
    assert decorated_square(4) == 16
