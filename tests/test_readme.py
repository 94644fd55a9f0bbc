"""The README's examples do what the README says they do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_quick_start_runs_and_prints_what_its_comments_say(tmp_path: Path) -> None:
    block = next(b for b in python_blocks() if "@parallel(workers=3" in b)
    script = tmp_path / "quick_start.py"
    script.write_text(block)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "[None, 1, 2, None, 4, 5, None, 7, 8, None]"
    assert lines[1].startswith("{0: RuntimeError('task 0 failed'), 3: RuntimeError(")
    assert lines[2] == "4"


def test_zipping_example() -> None:
    from parmap import pmap

    assert pmap(pow, [2, 3, 4], [5, 6, 7], workers=3).values == [32, 729, 16384]


def test_readme_commands_are_the_ones_ci_runs() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert 'python -m pip install -e ".[test]" && python -m pytest' in README
    assert "grep -m1 -E '^python -m pip install -e" in ci
    assert "python -m pip install . && python -m parmap demo" in README
