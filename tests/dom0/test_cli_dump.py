"""`xenrr dump`: records in the same words as the debuggers' event lists, and filtered by kind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import xen.inject  # noqa: F401  (registers the input kinds)
from dom0.logfile import LogHeader, LogReader
from tests.conftest import ROOT, write_log
from xen.logrecord import FIRST_INPUT_KIND, kind_names


@pytest.fixture(scope="module")
def dumped(xenrr, virtual_recording):
    run = xenrr("dump", virtual_recording.path)
    assert run.status == 0, run.stderr
    return run.stdout.splitlines()


def test_dump_shows_keys_as_text_and_times_decoded(dumped):
    keys = [line for line in dumped if " console-input " in line]
    assert [line.split("console-input", 1)[1].strip() for line in keys[:2]] == ["keys 'e'", "keys 'c'"]
    assert keys[8].endswith("keys '\\r'")                       # the Enter after `echo abc`, as Python writes it
    assert dumped[dumped.index(next(line for line in dumped if line.split()[:1] == ["seq"])) + 1].endswith(
        "time           guest time 0.000000000 s")
    assert "recording ended: shutdown:poweroff" in dumped[-2]


def test_dump_kind_names_are_the_events_kind_names(xenrr, virtual_recording):
    records = json.loads(xenrr("dump", virtual_recording.path, "--json").stdout)["records"]
    assert {entry["kind"] for entry in records} == {"time", "console-input", "end"}
    assert records[1]["detail"] == "keys 'e'" and records[1]["payload"] == b"e".hex()


def test_dump_kind_filters_records_and_keeps_their_numbers(xenrr, virtual_recording):
    every = json.loads(xenrr("dump", virtual_recording.path, "--json").stdout)["records"]
    run = xenrr("dump", virtual_recording.path, "--kind", "console-input,end", "--json")
    assert run.status == 0, run.stderr
    records = json.loads(run.stdout)["records"]
    assert records == [entry for entry in every if entry["kind"] in ("console-input", "end")]
    text = xenrr("dump", virtual_recording.path, "--kind", "time").stdout.splitlines()
    assert text[-1] == f"1 of {len(every)} records (time), {len(every) - 1} input events"


def test_an_unknown_kind_is_a_usage_error_naming_the_kinds(xenrr, virtual_recording):
    run = xenrr("dump", virtual_recording.path, "--kind", "tick")
    assert (run.status, run.stdout) == (2, "")
    assert run.stderr == f"xenrr: error: --kind: unknown record kind tick: the kinds are {', '.join(sorted(kind_names()))}\n"


def test_kind_help_names_every_registered_kind(xenrr):
    """The help comes from the log's kind registry: a kind added later is listed without an edit."""
    helped = " ".join(xenrr("dump", "--help").stdout.split())
    assert f"only records of these kinds: {', '.join(kind_names(FIRST_INPUT_KIND))} (input events), digest, end" \
        in helped
    assert "xenstore-write" in helped


def test_dump_shows_a_malformed_header_then_refuses_it(xenrr, virtual_recording, tmp_path):
    """A header whose CRC was recomputed over edited content: listed for inspection, then one error line and
    exit 2, as every command that reads logs refuses it."""
    with LogReader(virtual_recording.path) as reader:
        header, records = reader.header, [record._replace(payload=bytes(record.payload)) for record in reader.records()]
    config = {**header.config, "memory_bytes": 2**36}
    edited = write_log(tmp_path / "edited.xrr", LogHeader(header.image_sha256, config, header.initial_state), records)
    run = xenrr("dump", edited)
    assert run.status == 2 and "console-input" in run.stdout
    assert run.stderr == "xenrr: error: log header is malformed: config/memory_bytes: " \
                         f"{2**36} is greater than the maximum of {4096 * 1024 * 1024}\n"
    as_json = xenrr("dump", edited, "--json")
    assert as_json.status == 2 and json.loads(as_json.stdout)["status"] == 2
    assert xenrr("replay", edited).status == 2


def test_a_file_name_that_is_not_utf8_is_named_as_given(tmp_path):
    """A log name of bytes that are not UTF-8 (a name from another system) is named in the one-line error as
    the user gave it, byte for byte, instead of a traceback."""
    missing = os.path.join(os.fsencode(tmp_path), b"log\xff.xrr")
    run = subprocess.run([sys.executable, "-m", "dom0.cli", "dump", missing], cwd=ROOT, capture_output=True,
                         timeout=60)
    assert run.returncode == 2
    assert run.stderr == b"xenrr: error: cannot read " + missing + b": No such file or directory\n"
