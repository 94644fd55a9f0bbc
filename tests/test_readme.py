"""The README's examples do what the README says they do."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


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


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_finds_the_readmes_test_command_and_it_names_what_exists() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    found = re.search(r"grep -m1 -E '([^']+)' README\.md", ci)
    assert found, "CI no longer reads the test command from the README"
    # The line CI runs is the first the README shows under "Try it".
    matches = [line for line in README.splitlines() if re.search(found.group(1), line)]
    assert matches, "CI would find no test command in the README"
    command = matches[0]
    assert command in next(b for b in bash_blocks() if "pytest" in b).splitlines()
    install, test = command.split(" && ")
    extra = re.fullmatch(r'python -m pip install -e "\.\[(\w+)\]"', install)
    assert extra, install
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needs = pyproject["project"]["optional-dependencies"][extra.group(1)]
    assert any(req.startswith("pytest>=") for req in needs)
    assert shlex.split(test)[:3] == ["python", "-m", "pytest"]


def test_the_try_it_command_prints_what_the_readme_shows() -> None:
    install, demo = bash_blocks()[0].strip().split(" && ")
    assert install == "python -m pip install ."
    program, *args = shlex.split(demo)
    assert program == "python"
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    # The README elides the middle with "..." and its time is an example.
    shown = re.search(r"```\n(parmap demo:.*?)```", README, flags=re.S)
    assert shown, "the README no longer shows the demo's output"
    head, rest = shown.group(1).split("\n...\n")
    *tail, summary = rest.strip().splitlines()
    assert out[: len(head.splitlines())] == head.splitlines()
    assert out[-len(tail) - 1 : -1] == tail
    assert out[-1].startswith(summary.rsplit(" in ", 1)[0] + " in ")
