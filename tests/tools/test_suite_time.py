# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The suite timer reads pytest's summary line, its ``--durations`` table and ``scripts/test.sh``'s closing line."""

import pytest

from benchmarks.speed.suite_time import Phase, phases, script_end, seconds_per_file, summary

OUTPUT = """\
00:00:01 setup: checking the installed .venv
........F....s.......................................................... [ 17%]
=================================== FAILURES ===================================
E       assert 0.61 > 0.7 in 2.5s
============================== slowest durations ===============================
81.97s setup    tests/integration/test_demo.py::test_demo_runs[feature]
40.10s call     tests/test_reliability.py::test_repeat_runs_agree
12.50s call     tests/integration/test_demo.py::test_demo_runs[feature]
3.25s teardown tests/integration/test_demo.py::test_demo_runs[feature]
0.01s call     tests/tools/test_provenance.py::test_paths_are_relative

(1200 durations < 0.005s hidden.  Use -vv to show these durations.)
=========================== short test summary info ============================
FAILED tests/test_reliability.py::test_repeat_runs_agree - assert 0.61 > 0.7
1 failed, 414 passed, 1 skipped, 43 warnings in 999.44s (0:16:39)
20:01:02 test: pytest took 16 min 41 s (exit status 1)
"""


def test_summary_line_gives_the_counts_and_pytest_seconds() -> None:
    """The last summary line wins; counts pytest did not print are 0, singular words are made plural."""
    result = summary(OUTPUT)
    assert result is not None
    assert result.seconds == 999.44
    assert result.counts == {"passed": 414, "failed": 1, "skipped": 1, "errors": 0, "warnings": 43}
    assert summary("\x1b[31m2 errors\x1b[0m, \x1b[32m3 passed\x1b[0m in 4.20s").counts["errors"] == 2  # coloured
    assert summary("=== 1 error in 0.50s ===").counts == {"passed": 0, "failed": 0, "skipped": 0, "errors": 1}
    assert summary("no tests ran in 0.01s") == ({"passed": 0, "failed": 0, "skipped": 0, "errors": 0}, 0.01)
    assert summary("00:00:01 setup: failed") is None


def test_durations_table_is_read_slowest_first() -> None:
    """Every durations line, with its phase and full test id, and nothing else (not the failure's ``in 2.5s``)."""
    found = phases(OUTPUT)
    assert len(found) == 5
    assert found[0] == Phase(81.97, "setup", "tests/integration/test_demo.py::test_demo_runs[feature]")
    assert found[1] == Phase(40.10, "call", "tests/test_reliability.py::test_repeat_runs_agree")
    assert [phase.phase for phase in found] == ["setup", "call", "call", "teardown", "call"]
    assert [phase.seconds for phase in found] == sorted((phase.seconds for phase in found), reverse=True)


def test_seconds_are_summed_per_file_over_all_phases() -> None:
    """Setup, call and teardown of every test in a file add up; the slowest file comes first."""
    assert seconds_per_file(phases(OUTPUT)) == {
        "tests/integration/test_demo.py": pytest.approx(97.72),
        "tests/test_reliability.py": pytest.approx(40.10),
        "tests/tools/test_provenance.py": pytest.approx(0.01),
    }
    assert list(seconds_per_file(phases(OUTPUT))) == [
        "tests/integration/test_demo.py",
        "tests/test_reliability.py",
        "tests/tools/test_provenance.py",
    ]


def test_closing_line_of_the_test_script() -> None:
    """``N min M s`` in seconds, and the exit status pytest gave; ``None`` where the script stopped before it."""
    end = script_end(OUTPUT)
    assert end is not None
    assert (end.clock, end.seconds, end.exit_status) == ("20:01:02", 1001, 1)
    assert script_end("00:00:01 setup: checking the installed .venv") is None
