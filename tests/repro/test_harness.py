"""JUnit XML and kselftest's skip status (4) of ``stackfs repro run`` / ``stackfs demo``."""

from __future__ import annotations

import pytest
from junitparser import Error, Failure, JUnitXml, Skipped

from stackfs.cli import main
from stackfs.repro import harness, registry
from stackfs.repro.runner import SETUP_ERROR, RunResult, plan
from stackfs.repro.scenarios.aufs_afs_copyup import AufsAfsCopyup


def result(variant: str, observed: str, matched: bool, it: int = 1) -> RunResult:
    return RunResult(
        "aufs-afs-copyup",
        "000",
        "mv",
        variant,
        "forced",
        it,
        "deadlock",
        observed=observed,
        matched=matched,
        summary=f"{observed} \x1b[31m",
        problems=[] if matched else ["expected deadlock"],
        total_seconds=1.5,
    )


def test_junit_is_valid_and_has_one_case_per_run(tmp_path):
    out = tmp_path / "j.xml"
    runs = [
        result("buggy", "deadlock", True),
        result("buggy", "completes", False, 2),
        result("fixed-afs", SETUP_ERROR, False),
    ]
    skipped = harness.skipped_cases(plan(AufsAfsCopyup, "buggy", "open-write"), "no mv")
    harness.write_junit(out, "stackfs repro run aufs-afs-copyup", runs, skipped)
    xml = JUnitXml.fromfile(str(out))  # junitparser: a <testsuites> root
    [suite] = list(xml)
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 1, 1, 1)
    cases = {(c.classname, c.name): c for c in suite}
    assert set(cases) == {
        ("stackfs.aufs-afs-copyup.mv", "buggy #1"),
        ("stackfs.aufs-afs-copyup.mv", "buggy #2"),
        ("stackfs.aufs-afs-copyup.mv", "fixed-afs #1"),
        ("stackfs.aufs-afs-copyup.open-write", "buggy #1"),
    }
    assert cases["stackfs.aufs-afs-copyup.mv", "buggy #1"].is_passed
    assert "observed deadlock" in cases["stackfs.aufs-afs-copyup.mv", "buggy #1"].system_out
    [fail] = cases["stackfs.aufs-afs-copyup.mv", "buggy #2"].result
    assert isinstance(fail, Failure) and fail.message == "expected deadlock, observed completes"
    assert isinstance(cases["stackfs.aufs-afs-copyup.mv", "fixed-afs #1"].result[0], Error)
    [skip] = cases["stackfs.aufs-afs-copyup.open-write", "buggy #1"].result
    assert isinstance(skip, Skipped) and skip.message == "no mv"


class NeedsMissingTool(AufsAfsCopyup):
    name = "test-needs-missing-tool"
    requires = ("stackfs-no-such-tool",)


@pytest.fixture
def missing_tool_scenario():
    registry.register(NeedsMissingTool)
    yield NeedsMissingTool
    registry._REGISTRY.pop(NeedsMissingTool.name, None)


def test_run_exits_4_with_the_reason_when_a_tool_is_missing(
    missing_tool_scenario, tmp_path, capsys
):
    out = tmp_path / "j.xml"
    status = main(
        [
            "repro",
            "run",
            NeedsMissingTool.name,
            "--variant",
            "buggy",
            "--report-dir",
            str(tmp_path / "r"),
            "--junit",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert status == harness.EXIT_SKIP == 4
    assert "SKIP: cannot run here: tool(s) not installed: stackfs-no-such-tool" in text
    [suite] = list(JUnitXml.fromfile(str(out)))
    assert suite.tests == suite.skipped == len(NeedsMissingTool.cases)
    assert not (tmp_path / "r").exists()  # nothing was mounted or written
