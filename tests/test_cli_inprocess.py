"""``parmap run``'s --stats and --timeline in this process (main(argv)): a
timeline that cannot be written, and a run stopped early."""

from __future__ import annotations

from pathlib import Path

import pytest

from parmap._cli import main


def test_a_timeline_that_cannot_be_written_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "in.txt"
    data.write_text("a\nb\n")
    bad = tmp_path / "missing" / "t.svg"
    code = main(
        [
            "run",
            "tests.cli_tasks:upper",
            str(data),
            "--workers",
            "1",
            "--stats",
            "--timeline",
            str(bad),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert "cannot write" in err
    assert str(bad) in err
    assert "A" in out  # the results were written before


def test_a_run_stopped_at_its_first_failure_has_no_stats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "in.txt"
    data.write_text("2\nx\n3\n4\n")
    code = main(
        [
            "run",
            "tests.cli_tasks:square",
            str(data),
            "--workers",
            "1",
            "--on-error",
            "raise",
            "--stats",
        ]
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert "no stats: the map stopped early" in err
