"""`xenrr record`, `replay` and `dump` on intact logs: replay reproduces the recorded run byte for byte.

Real processes throughout: the `xenrr` CLI, its log daemon, the shared-memory log ring, the gcc-built
kbdshell guest. The flood test drives the recorder in-process (to shrink its log ring) and checks the
result with the CLI.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from dom0.consoleinput import KeyScript, parse_key_script
from tests.conftest import run_xenrr_in_terminal
from dom0.record import record
from xen.builder import build_domain
from xen.domain import Domain

# Pauses make the keys arrive while kbdshell idles and while `bench` keeps it busy; `ticks` and `uptime`
# print host-dependent values, so two recordings of this script differ.
KEYS = r"echo one\r\p30calc (2+4)*7\r\p30hash abc\rbench 300000\rticks\ruptime\r\p20halt\r"
TINY_RING_BYTES = 4096          # the smallest ring record() takes: about 550 keystroke records


def dump_json(xenrr, path: Path) -> dict:
    dumped = xenrr("dump", path, "--json")
    assert dumped.status == 0, dumped.stderr
    return json.loads(dumped.stdout)


def recorded_counts(record) -> tuple[int, int]:
    """(instructions, records) from `xenrr record`'s last line."""
    found = re.fullmatch(r"xenrr: domain shut down \(poweroff\) after (\d+) instructions; (\d+) records logged "
                         r"to \S+ \(\d+ bytes\)\n", record.stderr)
    assert found, record.stderr
    return int(found[1]), int(found[2])


def test_replay_reproduces_the_recorded_console_and_verifies_every_digest(xenrr, kbdshell_elf, tmp_path):
    log = tmp_path / "session.xrr"
    recorded = xenrr("record", kbdshell_elf, "-o", log, "--keys", KEYS)
    assert recorded.status == 0, recorded.stderr
    assert "> calc (2+4)*7\r\n42\r\n> hash abc\r\ne71fa2190541574b\r\n" in recorded.stdout
    instructions, records = recorded_counts(recorded)
    dumped = dump_json(xenrr, log)
    assert len(dumped["records"]) == records and dumped["damage"] is None
    events = sum(entry["event"] is not None for entry in dumped["records"])

    replayed = xenrr("replay", log)
    assert replayed.status == 0
    assert replayed.stdout == recorded.stdout
    found = re.fullmatch(rf"xenrr: replayed to the end of the recording: {events} events, {instructions} "
                         r"instructions, (\d+) state digests? verified\n", replayed.stderr)
    assert found and int(found[1]) >= 1, replayed.stderr       # at least the END record's digest

    summary = xenrr("replay", log, "--json")
    assert summary.status == 0
    assert json.loads(summary.stdout) == {
        "session": str(log), "events": events, "instructions": instructions, "digests_checked": int(found[1]),
        "verified": True, "divergence": None, "complete": True, "recorded_outcome": "shutdown:poweroff",
        "damage": None, "stopped_before_event": None, "started_before_event": None,
        "start_icount": 0}                                   # recorded from the domain's first instruction

    quiet = xenrr("replay", log, "--quiet")
    assert (quiet.status, quiet.stdout, quiet.stderr) == (0, "", replayed.stderr)


def test_the_same_script_recorded_twice_replays_each_recording_exactly(xenrr, kbdshell_elf, tmp_path):
    runs = []
    for name in ("first.xrr", "second.xrr"):
        log = tmp_path / name
        recorded = xenrr("record", kbdshell_elf, "-o", log, "--keys", KEYS)
        assert recorded.status == 0, recorded.stderr
        runs.append((log, recorded))
    for log, recorded in runs:                       # the logs may differ (host timing): each replays its own
        replayed = xenrr("replay", log)
        assert (replayed.status, replayed.stdout) == (0, recorded.stdout), replayed.stderr
        assert f"events, {recorded.instructions} instructions" in replayed.stderr


def test_a_flood_of_keys_through_a_tiny_log_ring_loses_no_record(xenrr, kbdshell_elf, tmp_path):
    lines = [f"echo {index} " + "abcdefghij"[index % 10] * (index % 40) for index in range(690)]
    script = "\r".join(lines) + "\rhalt\r"
    keys = script.encode()
    assert len(keys) >= 20_000
    console = bytearray()
    domain = Domain(build_domain(kbdshell_elf.read_bytes(), 16 * 1024 * 1024), console_output=console.extend)
    log = tmp_path / "flood.xrr"
    # The virtual clock types one key per idle period: one record per key, through the smallest ring.
    result = record(domain, kbdshell_elf, KeyScript(parse_key_script(script)), log, clock="virtual",
                    max_instructions=None, linger_ns=10**9, ring_bytes=TINY_RING_BYTES)
    assert result.outcome.reason == "shutdown"
    assert log.stat().st_size > 30 * TINY_RING_BYTES       # the ring wrapped around many times

    dumped = dump_json(xenrr, log)
    assert dumped["damage"] is None
    assert len(dumped["records"]) == result.records
    typed = [bytes.fromhex(entry["payload"]) for entry in dumped["records"] if entry["kind"] == "console-input"]
    assert b"".join(typed) == keys and len(typed) == len(keys)
    assert [entry["seq"] for entry in dumped["records"]] == list(range(result.records))

    replayed = xenrr("replay", log)
    assert replayed.status == 0, replayed.stderr
    assert replayed.stdout.encode() == bytes(console)


def test_until_event_stops_just_before_that_event(xenrr, virtual_recording):
    dumped = dump_json(xenrr, virtual_recording.path)
    events = [entry for entry in dumped["records"] if entry["event"] is not None]
    key_b = next(entry for entry in events if entry["kind"] == "console-input" and entry["payload"] == b"b".hex())
    number = key_b["event"]

    stopped = xenrr("replay", virtual_recording.path, "--until-event", number)
    assert stopped.status == 0
    assert stopped.stdout == "kbdshell ready\r\n> echo a"        # 'b' was not typed yet
    assert stopped.stderr == (f"xenrr: stopped before event {number}: {number - 1} events, {key_b['icount']} "
                              "instructions, 0 state digests verified\n")

    summary = json.loads(xenrr("replay", virtual_recording.path, "--until-event", number, "--json").stdout)
    assert (summary["events"], summary["instructions"], summary["stopped_before_event"], summary["complete"]) == \
        (number - 1, key_b["icount"], number, False)

    first = xenrr("replay", virtual_recording.path, "--until-event", 1, "--quiet")
    assert first.status == 0 and first.stderr.startswith("xenrr: stopped before event 1: 0 events, 0 instructions")


def test_until_event_outside_the_recording_is_one_error_line(xenrr, virtual_recording):
    for number in (0, 16):
        stopped = xenrr("replay", virtual_recording.path, "--until-event", number)
        assert (stopped.status, stopped.stdout) == (2, "")
        assert stopped.stderr == f"xenrr: error: event {number} does not exist: the recording has events 1 to 15\n"


def test_dump_lists_the_header_and_every_record(xenrr, virtual_recording, kbdshell_elf):
    dumped = dump_json(xenrr, virtual_recording.path)
    assert dumped["image_sha256"] == hashlib.sha256(kbdshell_elf.read_bytes()).hexdigest()
    assert dumped["config"]["guest"] == str(kbdshell_elf.resolve()) and dumped["config"]["clock"] == "virtual"
    assert dumped["damage"] is None
    records = dumped["records"]
    _, logged = recorded_counts(virtual_recording.record)
    assert len(records) == logged
    assert [entry["seq"] for entry in records] == list(range(len(records)))
    assert [entry["event"] for entry in records] == list(range(1, len(records))) + [None]
    assert records[0]["kind"] == "time" and records[0]["icount"] == 0
    assert records[-1]["kind"] == "end" and records[-1]["icount"] == virtual_recording.record.instructions
    keys = [entry for entry in records if entry["kind"] == "console-input"]
    assert b"".join(bytes.fromhex(entry["payload"]) for entry in keys) == b"echo abc\rhalt\r"
    icounts = [entry["icount"] for entry in records]
    assert icounts == sorted(icounts) and all(entry["vcpu"] == 0 for entry in records)

    text = xenrr("dump", virtual_recording.path)
    assert text.status == 0
    lines = text.stdout.splitlines()
    assert lines[-1] == f"{len(records)} records, {len(records) - 1} input events"
    table = next(index for index, line in enumerate(lines) if line.split()[:2] == ["seq", "event"]) + 1
    assert [line.split()[:5] for line in lines[table:-1]] == [[str(entry["seq"]), str(entry["event"] or "-"), str(entry["icount"]), hex(entry["rip"]),
                     entry["kind"]] for entry in records]


def test_recording_over_the_guest_image_is_refused_and_leaves_it_intact(xenrr, kbdshell_elf, tmp_path):
    guest = tmp_path / "guest.elf"
    guest.write_bytes(kbdshell_elf.read_bytes())
    refused = xenrr("record", guest, "-o", guest, "--keys", r"halt\r")
    assert guest.read_bytes() == kbdshell_elf.read_bytes()
    assert (refused.status, refused.stdout) == (2, "")
    assert refused.stderr.startswith("xenrr: error: ") and refused.stderr.count("\n") == 1


def test_recording_onto_an_existing_log_is_refused_unless_forced(xenrr, kbdshell_elf, tmp_path, virtual_recording):
    """rr never overwrites a trace: neither does `record -o`, unless --force says so."""
    log = tmp_path / "kept.xrr"
    kept = virtual_recording.path.read_bytes()
    log.write_bytes(kept)
    refused = xenrr("record", kbdshell_elf, "-o", log, "--clock", "virtual", "--keys", r"echo other\rhalt\r")
    assert (refused.status, refused.stdout) == (2, "")
    assert refused.stderr.count("\n") == 1 and "already exists" in refused.stderr and "--force" in refused.stderr
    assert log.read_bytes() == kept

    forced = xenrr("record", kbdshell_elf, "-o", log, "--clock", "virtual", "--force", "--keys", r"echo other\rhalt\r")
    assert forced.status == 0, forced.stderr
    replayed = xenrr("replay", log)
    assert replayed.status == 0 and "echo other\r\nother\r\n" in replayed.stdout


def test_a_key_file_is_bytes_a_carriage_return_stays_one(xenrr, kbdshell_elf, tmp_path):
    """Universal newlines would turn \\r and \\r\\n into \\n: the guest must get the file's bytes."""
    keys = b"echo a\recho b\r\nhalt\r"
    script = tmp_path / "keys.bin"
    script.write_bytes(keys)
    log = tmp_path / "bytes.xrr"
    recorded = xenrr("record", kbdshell_elf, "-o", log, "--clock", "virtual", "--keys-file", script)
    assert recorded.status == 0, recorded.stderr
    typed = [bytes.fromhex(entry["payload"]) for entry in dump_json(xenrr, log)["records"]
             if entry["kind"] == "console-input"]
    assert b"".join(typed) == keys


def test_counts_in_messages_agree_with_their_number(xenrr, virtual_recording):
    """A short recording has one state digest (its END record's): '1 state digest', not '1 state digests'."""
    replayed = xenrr("replay", virtual_recording.path, "--quiet")
    assert replayed.stderr.endswith(" instructions, 1 state digest verified\n"), replayed.stderr
    first = xenrr("replay", virtual_recording.path, "--until-event", "2", "--quiet")
    assert ": 1 event, " in first.stderr, first.stderr


@pytest.fixture(scope="module")
def long_replay(tmp_path_factory, xenrr, kbdshell_elf) -> Path:
    """A recording that takes over a second to replay even on a fast, idle machine (more than the
    progress bar's delay): 3.2 x 10^9 instructions of `bench`."""
    log = tmp_path_factory.mktemp("long") / "bench.xrr"
    recorded = xenrr("record", kbdshell_elf, "-o", log, "--clock", "virtual", "--keys", r"bench 400000000\rhalt\r")
    assert recorded.status == 0, recorded.stderr
    return log


@pytest.mark.slow
def test_a_long_replay_shows_progress_on_a_terminal_and_clears_it(long_replay):
    status, shown = run_xenrr_in_terminal("replay", long_replay)
    assert status == 0
    bars = re.findall(rb"\rreplaying: +(\d+)%\|[^|]*\| *[\d.]+[kMG]?/3.20G ", shown)
    assert bars and int(bars[-1]) == 100, shown
    # The guest's lines are whole, the bar's line is cleared before each of them and before the verdict.
    assert b"> bench 400000000\r\r\n" in shown and b"> halt\r\r\n" in shown
    assert re.search(rb"\r +\rxenrr: replayed to the end of the recording: \d+ events, 32000\d{5} instructions",
                     shown), shown[-400:]


@pytest.mark.slow
def test_no_progress_under_json_or_when_the_output_is_not_a_terminal(xenrr, long_replay):
    status, shown = run_xenrr_in_terminal("replay", long_replay, "--json")
    assert status == 0 and b"replaying" not in shown and b'"verified": true' in shown
    piped = xenrr("replay", long_replay, "--quiet")
    assert piped.status == 0 and piped.stderr.count("\n") == 1 and "replaying" not in piped.stderr
