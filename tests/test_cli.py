"""The command line: ``parmap run``, ``parmap demo``, exit codes and usage errors.

Every command runs in a subprocess, as a user runs it; the task functions it
imports live in ``cli_tasks.py`` next to this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import pytest

from parmap.__main__ import main

from .procs import wait_ended

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TIMEOUT = 60  # generous: a loaded CI machine starts processes slowly


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(TESTS), str(SRC), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _start(command: list[str], cwd: Path | None = None) -> subprocess.Popen[str]:
    # A session of its own lets the test find the command's workers even
    # after the command has exited and they were re-parented.
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=cwd or TESTS,
        start_new_session=True,
    )


def assert_no_processes_left(session: int) -> None:
    """Fail if a process of ``session`` (the command's workers) outlived the command."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == session:
                members.append(proc)
    left = wait_ended(members, 5.0)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    assert not left, f"processes outlived the command: {left}"


def run_command(
    command: list[str], stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    with _start(command, cwd) as proc:
        try:
            stdout, stderr = proc.communicate(stdin, timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert_no_processes_left(proc.pid)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


#: The console script that `pip install` puts next to the interpreter.
SCRIPT = Path(sys.executable).with_name("parmap")


def run_cli(
    *args: str, stdin: str = "", cwd: Path | None = None, python_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return run_command([sys.executable, *python_flags, "-m", "parmap", *args], stdin, cwd)


def run_script(
    *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``parmap`` console script, as a shell user does."""
    assert SCRIPT.exists(), f"no console script at {SCRIPT}"
    return run_command([str(SCRIPT), *args], stdin, cwd)


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def assert_usage_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("parmap: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- run: output and exit codes ------------------------------------------------


def test_run_maps_lines_of_stdin_in_order() -> None:
    proc = run_cli("run", "cli_tasks:upper", "--workers", "2", stdin="a\nb\nc\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [
        {"index": 0, "value": "A"},
        {"index": 1, "value": "B"},
        {"index": 2, "value": "C"},
    ]


def test_run_reads_stdin_given_as_dash() -> None:
    proc = run_cli("run", "cli_tasks:upper", "-", stdin="x\ny")  # no final newline
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "value": "X"}, {"index": 1, "value": "Y"}]


def test_run_reads_a_file(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("1\n2\n\n3\n", encoding="utf-8")
    proc = run_cli("run", "cli_tasks:upper", str(data))
    assert proc.returncode == 0, proc.stderr
    # Every line is an input, an empty one too, so index is the line number - 1.
    assert [r["value"] for r in records(proc.stdout)] == ["1", "2", "", "3"]


def test_run_empty_input_succeeds() -> None:
    proc = run_cli("run", "cli_tasks:upper", stdin="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_a_failing_item_is_reported_and_exits_1() -> None:
    proc = run_cli("run", "cli_tasks:square", "--workers", "2", stdin="1\nzwei\n3\n")
    assert proc.returncode == 1, proc.stderr
    out = records(proc.stdout)
    assert out[0] == {"index": 0, "value": 1}
    assert out[1]["index"] == 1
    assert out[1]["error"]["type"] == "ValueError"
    assert "zwei" in out[1]["error"]["message"]
    assert out[2] == {"index": 2, "value": 9}
    assert "Traceback" not in proc.stderr


def test_on_error_raise_stops_after_the_first_failure() -> None:
    proc = run_cli(
        "run", "cli_tasks:square", "--workers", "1", "--on-error", "raise", stdin="2\nx\n3\n4\n"
    )
    assert proc.returncode == 1, proc.stderr
    out = records(proc.stdout)
    assert out[0] == {"index": 0, "value": 4}
    assert out[1]["index"] == 1
    assert out[1]["error"]["type"] == "ValueError"
    assert len(out) == 2


def test_json_lists_are_positional_and_objects_keyword_arguments() -> None:
    stdin = '[1, 2]\n{"a": 3, "b": 4}\n{"a": 5}\n7\n'
    proc = run_cli("run", "cli_tasks:add", "--json", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert [r["value"] for r in records(proc.stdout)] == [3, 7, 5, 7]


def test_json_scalars_and_nested_values_are_one_argument() -> None:
    stdin = '"text"\nnull\n[{"k": [1, 2]}]\n{"x": {"y": 1}}\n'
    proc = run_cli("run", "cli_tasks:echo", "--json", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert [r["value"] for r in records(proc.stdout)] == [
        {"args": ["text"], "kwargs": {}},
        {"args": [None], "kwargs": {}},
        {"args": [{"k": [1, 2]}], "kwargs": {}},
        {"args": [], "kwargs": {"x": {"y": 1}}},
    ]


def test_json_wrong_arguments_fail_that_item() -> None:
    proc = run_cli("run", "cli_tasks:add", "--json", stdin='[1, 2]\n{"c": 1}\n')
    assert proc.returncode == 1, proc.stderr
    out = records(proc.stdout)
    assert out[0] == {"index": 0, "value": 3}
    assert out[1]["error"]["type"] == "TypeError"


def test_values_json_cannot_encode_are_written_as_text() -> None:
    proc = run_cli("run", "cli_tasks:as_set", stdin="a\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "value": "{'a'}"}]


def test_nan_is_written_as_valid_json() -> None:
    proc = run_cli("run", "cli_tasks:not_a_number", stdin="a\n")
    assert proc.returncode == 0, proc.stderr

    def reject(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    assert json.loads(proc.stdout, parse_constant=reject) == {"index": 0, "value": "nan"}


def test_system_exit_in_a_task_is_an_error_of_that_item() -> None:
    proc = run_cli("run", "cli_tasks:exit_task", stdin="3\n")
    assert proc.returncode == 1, proc.stderr
    assert records(proc.stdout)[0]["error"]["type"] == "SystemExit"


def test_timeout_kills_the_item_and_reports_it() -> None:
    proc = run_cli(
        "run", "cli_tasks:hang", "--workers", "2", "--timeout", "0.5", stdin="a\nhang\nb\n"
    )
    assert proc.returncode == 1, proc.stderr
    out = records(proc.stdout)
    assert out[0] == {"index": 0, "value": "a"}
    assert out[1]["error"]["type"] == "TaskTimeoutError"
    assert out[2] == {"index": 2, "value": "b"}


def test_a_crashed_worker_fails_only_its_item() -> None:
    proc = run_cli("run", "cli_tasks:crash", "--workers", "2", stdin="a\ncrash\nb\n")
    assert proc.returncode == 1, proc.stderr
    out = records(proc.stdout)
    assert out[1]["error"]["type"] == "WorkerCrashedError"
    assert [out[0], out[2]] == [{"index": 0, "value": "a"}, {"index": 2, "value": "b"}]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_decorated_function(method: str) -> None:
    proc = run_cli("run", "cli_tasks:shout", "--start-method", method, stdin="hey\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "value": "HEY!"}]


def test_retries_run_a_failed_item_again(tmp_path: Path) -> None:
    marker = tmp_path / "seen"
    proc = run_cli("run", "cli_tasks:fail_once", "--retries", "1", stdin=f"{marker}\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "value": "second try"}]


def test_without_retries_the_first_failure_stands(tmp_path: Path) -> None:
    marker = tmp_path / "seen"
    proc = run_cli("run", "cli_tasks:fail_once", stdin=f"{marker}\n")
    assert proc.returncode == 1, proc.stderr
    assert records(proc.stdout)[0]["error"] == {"type": "RuntimeError", "message": "first try"}


def test_unordered_writes_results_as_they_complete(tmp_path: Path) -> None:
    # Item 0 waits for a marker file that the test creates only after it has
    # read item 1's line, so item 1 must come out first.
    gate = tmp_path / "gate"
    command = ["run", "cli_tasks:wait_for", "--unordered", "--workers", "2"]
    with _start([sys.executable, "-m", "parmap", *command]) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(f"wait:{gate}\nfast\n")
            proc.stdin.close()
            first = json.loads(proc.stdout.readline())
            gate.touch()
            second = json.loads(proc.stdout.readline())
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            gate.touch()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert_no_processes_left(proc.pid)
    assert first == {"index": 1, "value": "fast"}
    assert second == {"index": 0, "value": "released"}


def test_ctrl_c_stops_the_command_and_its_workers() -> None:
    with _start(
        [sys.executable, "-m", "parmap", "run", "cli_tasks:hang", "--workers", "2"]
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write("a\nhang\nhang\n")
            proc.stdin.close()
            # Once a's line is out, the map runs and both workers exist.
            assert json.loads(proc.stdout.readline()) == {"index": 0, "value": "a"}
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=TIMEOUT) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert_no_processes_left(proc.pid)
    assert stderr == "parmap: interrupted\n"


def test_chunksize_and_progress(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("".join(f"{i}\n" for i in range(20)), encoding="utf-8")
    proc = run_cli("run", "cli_tasks:square", str(data), "--chunksize", "4", "--progress")
    assert proc.returncode == 0, proc.stderr
    assert [r["value"] for r in records(proc.stdout)] == [i * i for i in range(20)]
    assert "20" in proc.stderr  # the bar's count reaches every item
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_run_under_other_start_methods(method: str) -> None:
    proc = run_cli("run", "cli_tasks:add", "--json", "--start-method", method, stdin="[1, 2]\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "value": 3}]


def test_a_module_in_the_current_directory_is_importable(tmp_path: Path) -> None:
    (tmp_path / "mymod.py").write_text("def double(s):\n    return s * 2\n", encoding="utf-8")
    # -P keeps Python from putting the current directory on sys.path itself,
    # as the installed console script does not either.
    for method in ("fork", "spawn"):
        proc = run_cli(
            "run", "mymod:double", "--start-method", method,
            stdin="ab\n", cwd=tmp_path, python_flags=("-P",),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert records(proc.stdout) == [{"index": 0, "value": "abab"}]


# --- usage errors: exit 2, one line, no traceback ----------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "no_such_module_xyz:f"], "no_such_module_xyz"),
        (["run", "cli_tasks:missing"], "missing"),
        (["run", "cli_tasks:NOT_CALLABLE"], "not callable"),
        (["run", "os:sep"], "not callable"),
        (["run", "cli_tasks"], "MODULE:FUNCTION"),
        (["run", ":upper"], "MODULE:FUNCTION"),
        (["run"], "MODULE:FUNCTION"),
        (["run", "cli_tasks:upper", "--workers", "0"], "--workers"),
        (["run", "cli_tasks:upper", "--workers", "many"], "--workers"),
        (["run", "cli_tasks:upper", "--timeout", "-1"], "--timeout"),
        (["run", "cli_tasks:upper", "--timeout", "nan"], "--timeout"),
        (["run", "cli_tasks:upper", "--retries", "-1"], "--retries"),
        (["run", "cli_tasks:upper", "--chunksize", "0"], "--chunksize"),
        (["run", "cli_tasks:upper", "--on-error", "ignore"], "--on-error"),
        (["run", "cli_tasks:upper", "--start-method", "teleport"], "--start-method"),
        (["run", "cli_tasks:upper", "--no-such-option"], "--no-such-option"),
        (["run", "cli_tasks:upper", "/no/such/file.txt"], "/no/such/file.txt"),
        (["bogus"], "bogus"),
        ([], "command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], fragment: str) -> None:
    assert_usage_error(run_cli(*args, stdin="a\n"), fragment)


def test_a_module_that_fails_to_import_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    (tmp_path / "badimport.py").write_text("import no_such_dependency_xyz\n")
    assert_usage_error(run_cli("run", "broken:f", cwd=tmp_path), "broken", "boom")
    assert_usage_error(
        run_cli("run", "badimport:f", cwd=tmp_path), "badimport", "no_such_dependency_xyz"
    )


def test_a_bad_json_line_is_a_usage_error() -> None:
    proc = run_cli("run", "cli_tasks:add", "--json", stdin="[1, 2]\n{oops\n[3, 4]\n")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("parmap: error: <stdin>, line 2: invalid JSON")
    assert "Traceback" not in proc.stderr
    # The line before the bad one is written; none after it.
    assert records(proc.stdout) == [{"index": 0, "value": 3}]


@pytest.mark.parametrize("unordered", [False, True])
def test_a_bad_json_line_after_many_good_ones_keeps_every_outcome_before_it(
    unordered: bool,
) -> None:
    good = "".join(json.dumps({"a": i, "b": i}) + "\n" for i in range(200))
    stdin = good + "{oops\n" + "[1, 1]\n" * 20
    flags = ["--unordered"] if unordered else []
    proc = run_script("run", "cli_tasks:add", "--json", "--workers", "2", *flags, stdin=stdin)
    assert proc.returncode == 2, proc.stderr
    out = records(proc.stdout)
    if unordered:
        out.sort(key=lambda r: r["index"])
    assert out == [{"index": i, "value": 2 * i} for i in range(200)]
    assert proc.stderr.splitlines() == [
        "parmap: error: <stdin>, line 201: invalid JSON: "
        "Expecting property name enclosed in double quotes (column 2)"
    ]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_function_that_prints_does_not_corrupt_the_records(method: str, tmp_path: Path) -> None:
    # The module prints on import too, in the parent and in spawned workers.
    (tmp_path / "noisy.py").write_text(
        "from cli_tasks import chatty\nprint('noisy imported')\n", encoding="utf-8"
    )
    lines = [f"line {i}" for i in range(50)]
    proc = run_script(
        "run", "noisy:chatty", "--workers", "2", "--start-method", method,
        stdin="".join(f"{line}\n" for line in lines), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # Every line of stdout is a record, and there is one per input.
    assert records(proc.stdout) == [{"index": i, "value": line} for i, line in enumerate(lines)]
    for line in lines:
        assert f"print: {line}\n" in proc.stderr
        assert f"fd1: {line}\n" in proc.stderr
    assert "noisy imported" in proc.stderr


def test_records_still_reach_a_pipe_that_is_read_as_they_come(tmp_path: Path) -> None:
    # The records' own descriptor is flushed per line, like stdout was.
    gate = tmp_path / "gate"
    command = [sys.executable, "-m", "parmap", "run", "cli_tasks:wait_for", "--workers", "1"]
    with _start(command) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(f"first\nwait:{gate}\n")
            proc.stdin.close()
            first = json.loads(proc.stdout.readline())
            gate.touch()
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            gate.touch()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert_no_processes_left(proc.pid)
    assert first == {"index": 0, "value": "first"}


@pytest.mark.parametrize("command", ["run cli_tasks:upper", "demo"])
def test_a_closed_stdout_is_a_usage_error(command: str) -> None:
    # `>&-` closes descriptor 1 for the command, as a careless shell script may.
    proc = run_command(["sh", "-c", f'exec "$0" {command} >&-', str(SCRIPT)], stdin="a\n")
    assert_usage_error(proc, "standard output is closed")


def test_with_stderr_closed_what_the_function_prints_is_dropped() -> None:
    proc = run_command(
        ["sh", "-c", 'exec "$0" run cli_tasks:chatty 2>&-', str(SCRIPT)], stdin="a\nb\n"
    )
    assert proc.returncode == 0
    assert records(proc.stdout) == [{"index": 0, "value": "a"}, {"index": 1, "value": "b"}]


def test_a_full_stdout_is_one_line_not_a_traceback() -> None:
    proc = run_command(
        ["sh", "-c", 'exec "$0" run cli_tasks:upper >/dev/full', str(SCRIPT)], stdin="a\nb\n"
    )
    assert_usage_error(proc, "cannot write the results", "No space left on device")


@pytest.mark.parametrize("code", ["0", "None", "'bye'", "3"])
def test_a_module_that_exits_on_import_is_a_usage_error(code: str, tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(
        f"import sys\n\ndef f(x):\n    return x\n\nsys.exit({code})\n", encoding="utf-8"
    )
    proc = run_script("run", "script:f", stdin="a\n", cwd=tmp_path)
    assert_usage_error(proc, "'script'", "sys.exit(")


def test_undecodable_input_is_a_usage_error(tmp_path: Path) -> None:
    data = tmp_path / "bad.txt"
    data.write_bytes(b"ok\n\xff\xfe\n")
    proc = run_cli("run", "cli_tasks:upper", str(data))
    assert proc.returncode == 2
    assert proc.stderr.startswith("parmap: error: ")
    assert "line 2" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- demo, version, entry points --------------------------------------------------


def test_demo_shows_ordered_results_and_errors() -> None:
    proc = run_cli("demo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for i in range(10):
        expected = f"RuntimeError('task {i} failed')" if i % 3 == 0 else str(i)
        assert f"task {i}: {expected}" in lines
    task_lines = [line for line in lines if line.startswith("task ")]
    assert task_lines == sorted(task_lines, key=lambda line: int(line.split()[1].rstrip(":")))
    assert lines[-1].startswith("6 succeeded, 4 failed")


def test_demo_under_spawn() -> None:
    proc = run_cli("demo", "--start-method", "spawn")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("6 succeeded, 4 failed")


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"parmap {metadata.version('parmap')}"


def test_help_exits_0() -> None:
    for args in (["--help"], ["run", "--help"], ["demo", "--help"]):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert "usage: parmap" in proc.stdout


def test_console_script() -> None:
    # `pip install` puts the console script next to the interpreter.
    proc = run_script("run", "cli_tasks:upper", stdin="q\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "value": "Q"}]


def test_main_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process: only paths that start no workers.
    assert main(["run", "no_such_module_xyz:f"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parmap: error: ")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("parmap ")


# --- line endings and a reader that leaves ------------------------------------------


def test_windows_line_endings_are_not_part_of_the_input() -> None:
    proc = run_cli("run", "cli_tasks:upper", stdin="crlf\r\nline\r\n")
    assert proc.returncode == 0, proc.stderr
    assert [r["value"] for r in records(proc.stdout)] == ["CRLF", "LINE"]


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # `parmap run ... | head -1`: more output than a pipe holds, one line read.
    lines = [f"line {i}\n" for i in range(50_000)]
    with _start([sys.executable, "-m", "parmap", "run", "cli_tasks:upper"]) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin = proc.stdin

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError):
                stdin.writelines(lines)
            with contextlib.suppress(BrokenPipeError):
                stdin.close()  # closes even when its last flush fails

        feeder = threading.Thread(target=feed)
        feeder.start()
        first = proc.stdout.readline()
        proc.stdout.close()
        try:
            code = proc.wait(TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        feeder.join(TIMEOUT)
        stderr = proc.stderr.read()
    assert_no_processes_left(proc.pid)
    assert json.loads(first) == {"index": 0, "value": "LINE 0"}
    assert code == 1, stderr
    assert "Traceback" not in stderr, stderr


def test_a_value_that_cannot_be_written_at_all_is_named_by_its_type() -> None:
    proc = run_cli("run", "cli_tasks:mute", stdin="a\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "value": "<unprintable Mute>"}]


def test_a_huge_timeout_is_accepted_on_the_command_line() -> None:
    # Above about 24.8 days the wait used to overflow (OverflowError traceback).
    proc = run_cli("run", "cli_tasks:upper", "--workers", "2", "--timeout", "1e9", stdin="a\nb\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "value": "A"}, {"index": 1, "value": "B"}]
    assert "Traceback" not in proc.stderr
