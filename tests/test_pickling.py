"""Sending functions to workers from a ``__main__`` that has no file.

``python -c`` makes ``__main__`` a namespace without a file, as IPython and
Jupyter do: plain pickle finds a function there by name, but a spawned or
forkserver worker cannot import it. Each case runs in a ``python -c`` of its
own (the notebook itself is tested in ``test_notebook.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

_CASES = """
import functools, sys
from parmap import Pool, parallel, pmap

def square(x):
    return x * x

class Scale:
    def __init__(self, k):
        self.k = k
    def __call__(self, x):
        return self.k * x

@parallel(workers=2, start_method=METHOD, timeout=30)
def cube(x):
    return x ** 3

def main():
    offset = 10
    def shifted(x):
        return x + offset
    print("function", pmap(square, range(4), workers=2, start_method=METHOD).values)
    print("lambda", pmap(lambda x: -x, range(4), workers=2, start_method=METHOD).values)
    print("closure", pmap(shifted, range(4), workers=2, start_method=METHOD).values)
    print("partial", pmap(functools.partial(pow, 2), range(4), workers=2,
                          start_method=METHOD).values)
    print("instance", pmap(Scale(3), range(4), workers=2, start_method=METHOD).values)
    print("parallel", cube.pmap(range(4)).values)
    cube.close()
    with Pool(workers=2, start_method=METHOD) as pool:
        print("pool", pool.pmap(cube, range(4)).values)
        # Defined after the pool's workers started (a later notebook cell).
        def later(x):
            return x - 1
        print("later", pool.pmap(later, range(4)).values)

if __name__ == "__main__":
    main()
"""

_EXPECTED = [
    "function [0, 1, 4, 9]",
    "lambda [0, -1, -2, -3]",
    "closure [10, 11, 12, 13]",
    "partial [1, 2, 4, 8]",
    "instance [0, 3, 6, 9]",
    "parallel [0, 1, 8, 27]",
    "pool [0, 1, 8, 27]",
    "later [-1, 0, 1, 2]",
]


def _run_c(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_functions_of_a_main_without_a_file_travel_by_value(method: str) -> None:
    proc = _run_c(_CASES.replace("METHOD", repr(method)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == _EXPECTED
    assert "Traceback" not in proc.stderr


_WITHOUT_CLOUDPICKLE = """
import sys
sys.modules["cloudpickle"] = None
from parmap import parallel, pmap

def square(x):
    return x * x

@parallel(workers=2, start_method=METHOD)
def cube(x):
    return x ** 3

for call in (lambda: pmap(square, range(4), workers=2, start_method=METHOD),
             lambda: cube.pmap(range(4))):
    try:
        print("ok", call().values)
    except TypeError as exc:
        print("TypeError", exc)
cube.close()
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_without_cloudpickle_they_fail_at_once_with_a_type_error(method: str) -> None:
    proc = _run_c(_WITHOUT_CLOUDPICKLE.replace("METHOD", repr(method)))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["TypeError", "TypeError"], proc.stdout
    for line, name in zip(lines, ["square", "cube"], strict=True):
        assert f"cannot send function {name} to worker processes ({method!r} start method)" in line
        assert "__main__ that has no file" in line
        assert "install cloudpickle" in line
    # It failed before any worker ran an item: no per-item notes, no worker tracebacks.
    assert "input index" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_cloudpickle_fork_still_finds_them_by_name() -> None:
    proc = _run_c(_WITHOUT_CLOUDPICKLE.replace("METHOD", repr("fork")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["ok [0, 1, 4, 9]", "ok [0, 1, 8, 27]"]


def test_a_script_with_a_file_still_sends_its_functions_by_reference(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import pickle, sys\n"
        "sys.modules['cloudpickle'] = None\n"
        "from parmap import parallel\n"
        "from parmap._pickling import dump_function\n"
        "def square(x):\n    return x * x\n"
        "@parallel\ndef cube(x):\n    return x ** 3\n"
        "if __name__ == '__main__':\n"
        "    for fn in (square, cube):\n"
        "        assert dump_function(fn, 'spawn') == pickle.dumps(fn, 5), fn\n"
        "    print('by reference')\n",
        encoding="utf-8",
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "by reference\n"
