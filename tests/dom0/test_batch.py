"""`xenrr check` and `xenrr verify` over many recordings, on a real local Dask cluster.

One cluster of two worker processes on the loopback interface serves the whole module (given to the
CLI with --scheduler or DASK_SCHEDULER_ADDRESS); one slow case lets the CLI start its own. The corpus
is real: kbdshell recordings, one made to diverge by changing a key in its log, one damaged by a
flipped byte. A crashing worker is a real one: the unit of a recording named by the test-only hook
XENRR_BATCH_TEST_KILL_WORKER sends SIGKILL to its own worker process; Dask retries it, then reports it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import dask
import pytest
from distributed import LocalCluster

from dom0.batch import KILL_WORKER_HOOK, LOCAL_CLUSTER_CONFIG
from dom0.logfile import LogReader
from tests.conftest import run_xenrr_in_terminal
from tests.dom0.test_record_damage import keystroke_records, rewritten_copy

KILLER = "killer.xrr"


@pytest.fixture(scope="module")
def scheduler() -> str:
    """The address of a local cluster of two worker processes (the workers see the kill hook)."""
    os.environ[KILL_WORKER_HOOK] = KILLER
    try:
        with dask.config.set(LOCAL_CLUSTER_CONFIG):
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
        with cluster:
            yield cluster.scheduler_address
    finally:
        del os.environ[KILL_WORKER_HOOK]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, virtual_recording) -> dict[str, Path]:
    """good.xrr (echo abc, halt), diverged.xrr (its `a` typed as `b`) and damaged.xrr (a flipped byte)."""
    directory = tmp_path_factory.mktemp("corpus")
    good = directory / "good.xrr"
    shutil.copy(virtual_recording.path, good)
    seq = next(seq for seq, _, _, payload in keystroke_records(good) if payload == b"a")
    rewritten_copy(good, directory / "diverged.xrr", seq, payload=b"b")
    with LogReader(good) as reader:
        block = reader.blocks[0]
    data = bytearray(good.read_bytes())
    data[block.payload_offset + block.payload_length // 2] ^= 0xFF
    (directory / "damaged.xrr").write_bytes(data)
    return {path.stem: path for path in sorted(directory.iterdir())}


def scripts(directory: Path) -> Path:
    """A directory of two check scripts: one holds on kbdshell recordings, one fails."""
    directory.mkdir()
    (directory / "test_holds.py").write_text(textwrap.dedent('''\
        def test_every_key_is_an_event(d):
            assert len(d.events(kind="console-input")) == len("echo abc\\rhalt\\r")
        '''))
    (directory / "test_fails.py").write_text(textwrap.dedent('''\
        def test_the_first_key_is_x(d):
            first = d.events(kind="console-input")[0]
            assert first.detail == "x"
        '''))
    (directory / "notes.txt").write_text("neither a recording nor a test_*.py script: ignored\n")
    return directory


def statuses(summary: dict) -> dict[str, str]:
    return {Path(entry["recording"]).stem: entry["status"] for entry in summary["recordings"]}


def test_verify_reports_every_recording_as_a_table_and_junit_xml(xenrr, scheduler, corpus, tmp_path):
    junit = tmp_path / "verify.xml"
    run = xenrr("verify", corpus["good"].parent, "--scheduler", scheduler, "--junit-xml", junit)
    assert run.status == 1, run.stdout + run.stderr             # a divergence outranks the damage (3)
    rows = {Path(line.split()[2]).stem: line.split()[0] for line in run.stdout.splitlines()[1:-1]}
    assert rows == {"damaged": "damaged", "diverged": "failed", "good": "passed"}
    assert "diverged: state differs at icount" in run.stdout
    assert run.stdout.splitlines()[-1] == "FAIL verify: 3 recordings: 1 passed, 1 failed, 1 damaged"

    suites = {Path(suite.get("name")).stem: suite for suite in ElementTree.parse(junit).getroot()}
    assert set(suites) == {"damaged", "diverged", "good"}
    assert [case.get("name") for case in suites["good"]] == ["replay"] and not list(suites["good"][0])
    assert suites["diverged"][0][0].tag == "failure" and "state differs" in suites["diverged"][0][0].get("message")
    assert suites["damaged"][0][0].tag == "error" and "CRC" in suites["damaged"][0][0].get("message")
    assert [suite.get("failures") + suite.get("errors") for suite in suites.values()] == ["01", "10", "00"]


def test_verify_exits_3_when_the_worst_is_a_damaged_log(xenrr, scheduler, corpus):
    run = xenrr("verify", corpus["good"], corpus["damaged"], "--scheduler", scheduler, "--json")
    assert (run.status, run.stderr) == (3, ""), run.stdout + run.stderr      # no bar, no Dask logs off a terminal
    summary = json.loads(run.stdout)
    assert statuses(summary) == {"good": "passed", "damaged": "damaged"}
    assert (summary["status"], summary["passed"], summary["damaged"]) == (3, 1, 1)


def test_verify_exits_2_when_a_recording_cannot_be_replayed_at_all(xenrr, scheduler, corpus, tmp_path):
    truncated = tmp_path / "truncated.xrr"              # the log's magic bytes, then the header cut short
    truncated.write_bytes(corpus["good"].read_bytes()[:40])
    run = xenrr("verify", corpus["damaged"], truncated, "--scheduler", scheduler, "--json")
    assert run.status == 2, run.stdout + run.stderr     # unusable outranks damaged (3)
    summary = json.loads(run.stdout)
    assert statuses(summary) == {"damaged": "damaged", "truncated": "unusable"}
    assert summary["recordings"][1]["detail"] == "log header is truncated"


def test_check_runs_every_script_on_every_recording_found_by_content(xenrr, scheduler, corpus, tmp_path):
    directory = scripts(tmp_path / "checks")
    renamed = tmp_path / "recording-without-a-suffix"          # a recording by its content, not its name
    shutil.copy(corpus["good"], renamed)
    junit = tmp_path / "check.xml"
    run = xenrr("check", corpus["good"], renamed, directory, "--json", "--junit-xml", junit,
                "--scheduler", scheduler)
    assert run.status == 1, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert [Path(entry["recording"]) for entry in summary["recordings"]] == [corpus["good"], renamed]
    for entry in summary["recordings"]:
        assert entry["status"] == "failed"
        outcomes = {check["name"]: check["outcome"] for check in entry["checks"]}
        assert outcomes == {"test_every_key_is_an_event": "passed", "test_the_first_key_is_x": "failed"}
        assert entry["detail"].startswith("1 of 2 checks failed, first test_the_first_key_is_x at ")
        assert entry["detail"].endswith("test_fails.py:3: assert \"keys 'e'\" == 'x'")       # pytest's explanation

    suites = ElementTree.parse(junit).getroot().findall("testsuite")
    assert [(suite.get("tests"), suite.get("failures")) for suite in suites] == [("2", "1"), ("2", "1")]
    failure = suites[0].find("testcase[@name='test_the_first_key_is_x']/failure")
    assert "test_fails.py:3" in failure.text and "assert first.detail == \"x\"" in failure.text


def test_check_with_a_scheduler_from_the_environment_passes(xenrr, scheduler, corpus, tmp_path, monkeypatch):
    directory = scripts(tmp_path / "checks")
    (directory / "test_fails.py").unlink()
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler)
    run = xenrr("check", str(corpus["good"].parent / "g*.xrr"), directory)
    assert run.status == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "PASS check: 1 recordings: 1 passed"


@pytest.mark.slow
def test_a_worker_killed_by_its_unit_is_reported_and_the_rest_go_on(xenrr, scheduler, corpus, tmp_path):
    directory = tmp_path / "corpus"
    directory.mkdir()
    # Good units beside the killer, some of which Dask may have queued on the worker it kills: only the
    # killer is reported crashed.
    goods = [f"next{number}.xrr" for number in range(4)]          # after the killer in the listing
    for name in (*goods, "damaged.xrr", KILLER):
        shutil.copy(corpus["damaged" if name == "damaged.xrr" else "good"], directory / name)
    run = xenrr("verify", directory, "--json", "--scheduler", scheduler)
    assert run.status == 1, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert statuses(summary) == {"damaged": "damaged", "killer": "crashed",
                                 **{Path(good).stem: "passed" for good in goods}}
    crashed = next(entry for entry in summary["recordings"] if entry["status"] == "crashed")
    assert crashed["detail"].startswith("its Dask worker failed: KilledWorker")


def test_a_terminal_shows_a_progress_bar_cleared_before_the_table(scheduler, corpus):
    status, shown = run_xenrr_in_terminal("verify", corpus["good"], corpus["diverged"], "--scheduler", scheduler)
    assert status == 1
    bars = re.findall(rb"\rverify: +(\d+)%\|[^|]*\| *([\d.]+)/([\d.]+) ", shown)
    assert bars and bars[-1][0] == b"100" and float(bars[-1][1]) == float(bars[-1][2]) == 2, shown
    assert re.search(rb"\r +\rSTATUS +SECONDS +RECORDING", shown), shown


@pytest.mark.slow
def test_without_a_scheduler_a_local_cluster_of_workers_runs_the_units(xenrr, corpus, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    run = xenrr("verify", corpus["good"], corpus["diverged"], "--workers", "2", "--json")
    assert run.status == 1, run.stdout + run.stderr
    assert statuses(json.loads(run.stdout)) == {"good": "passed", "diverged": "failed"}


@pytest.mark.parametrize("arguments, message", [
    (["verify", "{good}", "{script}"], "{script} is not a recording (made by `xenrr record`)"),
    (["verify", "{dir}/nothing*.xrr"], "{dir}/nothing*.xrr matches no file"),
    (["verify", "{scripts}"], "{scripts} holds no recordings"),
    (["check", "{good}", "{diverged}"], "no check scripts among the arguments: it is "
                                        "`xenrr check RECORDING... SCRIPT...`"),
    (["check", "{good}", "{diverged}", "{elf}"], "{elf} is an ELF file, not a Python check script"),
    (["verify", "{good}", "--workers", "0"], "--workers: give at least 1"),
])
def test_usage_errors_are_one_line_and_exit_2(xenrr, corpus, kbdshell_elf, tmp_path, arguments, message):
    script = tmp_path / "test_x.py"
    script.write_text("def test_x(d):\n    pass\n")
    names = {"good": corpus["good"], "diverged": corpus["diverged"], "dir": corpus["good"].parent,
             "script": script, "elf": kbdshell_elf, "scripts": tmp_path}
    run = xenrr(*[argument.format(**names) for argument in arguments])
    assert (run.status, run.stdout, run.stderr) == (2, "", f"xenrr: error: {message.format(**names)}\n")
