"""The host's one xenstore: what a domain writes another may read (as its permissions say,
docs/misc/xenstore.txt) reaches the other domain's replica as a `xenstore-change` input, fires its
watches, is logged at its instruction count when that domain is recorded, and replays from the log
alone. A domain created later starts from the store as it is (and a recording of it started while it
runs carries its replica); a destroyed domain's nodes go (as libxl removes them); a write the other
domain may not read never shows; a flood of writes is sent on at most once per quantum."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dom0.logfile import LogHeader, LogReader
from tests.conftest import ROOT, run_xenrr, write_log

pytestmark = pytest.mark.slow
SHARED = "/local/domain/1/data/shared"
PRIVATE = "/local/domain/1/data/private"


def test_a_write_by_one_domain_fires_the_watch_of_another_and_the_recorded_one_replays_alone(host, tmp_path):
    log = tmp_path / "b.xrr"
    assert host.xenrr("create", host.config("a", guest="kbdshell", cpus="0", memory=4)).status == 0
    assert host.xenrr("create", host.config("b", guest="kbdshell", cpus="1", memory=4), "--record", log).status == 0
    assert {name: d["domid"] for name, d in host.domains().items()} == {"a": 1, "b": 2}
    marks = iter(range(1000))

    def typed(name: str, *lines: str) -> str:
        """Type the lines into NAME's console; the output they gave (from its first line's echo on)."""
        marker = f"m{next(marks)}"
        shown = host.console_until(name, f"\n{marker}\r".encode(), 1,
                                   typed="".join(line + "\r" for line in (*lines, f"echo {marker}")).encode())
        return shown.decode().replace("\r\n", "\n").split(f"> {lines[0]}\n")[-1].split(f"> echo {marker}")[0]

    assert typed("b", f"xs watch {SHARED}", f"xs watch {PRIVATE}", "xs events") == \
        f"ok\n> xs watch {PRIVATE}\nok\n> xs events\nevent {SHARED}\nevent {PRIVATE}\nevents 2\n"   # on registration
    assert typed("b", f"xs read {SHARED}") == "error: EACCES\n"         # a's data/ is a's alone (libxl's rwperm)
    assert typed("a", "xs write data/shared hello", "xs perms data/shared n1 r2 r3",
                 "xs write data/private secret") == "ok\n> xs perms data/shared n1 r2 r3\nok\n" \
                                                    "> xs write data/private secret\nok\n"
    host.wait_for(lambda: typed("b", f"xs read {SHARED}") == "hello\n", "a's write to reach b")
    assert typed("a", "xs write data/shared world") == "ok\n"
    host.wait_for(lambda: typed("b", f"xs read {SHARED}") == "world\n", "a's second write to reach b")
    assert typed("b", "xs events") == f"event {SHARED}\nevent {SHARED}\nevents 2\n"     # set-perms, world: not private
    assert typed("b", f"xs read {PRIVATE}") == "error: EACCES\n"
    assert typed("b", f"xs write {SHARED} mine") == "error: EACCES\n"               # read-only for b

    # A domain created now starts from the store as it is: a's node, readable by it, before it runs.
    assert host.xenrr("create", host.config("c", guest="kbdshell", cpus="0", memory=4,
                                            on_poweroff="restart")).status == 0
    assert typed("c", f"xs read {SHARED}") == "world\n"
    assert typed("c", "xs read /local/domain/2/name") == "error: EACCES\n"       # b's home is b's (libxl's roperm)
    assert typed("c", "xs read domid") == "3\n"
    host.console_until("c", b"kbdshell ready", 2, typed=b"halt\r")     # c powers off and is built again...
    assert typed("c", f"xs read {SHARED}", "xs read domid") == "world\n> xs read domid\n3\n"     # ...from the store
    # c recorded from now on (`xenrr record c`): its log starts with its replica, a's node in it.
    log_of_c = tmp_path / "c.xrr"
    recording_c = subprocess.Popen([sys.executable, "-m", "dom0.cli", "record", "c", "-o", str(log_of_c), "--socket",
                                    str(host.socket)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
    assert "recording c from instruction" in recording_c.stderr.readline().decode()

    # A flood: 200 writes typed at once, sent on at most once per quantum of a; b stays responsive.
    assert typed("a", *[f"xs write data/shared {n}" for n in range(200)]).count("ok\n") == 200
    host.wait_for(lambda: typed("b", f"xs read {SHARED}") == "199\n", "the flood's last write to reach b")
    assert "events" in typed("b", "xs events")

    # a destroyed mid-flight: its nodes go from every replica, and b's watch fires for the removal.
    vm_of_b = typed("b", "xs read vm").strip()
    assert vm_of_b.startswith("/vm/") and typed("a", "xs read vm").strip() != vm_of_b      # libxl: a uuid each
    assert typed("a", "xs write data/shared last") == "ok\n"
    assert host.xenrr("destroy", "a").status == 0
    host.wait_for(lambda: typed("b", f"xs read {SHARED}") == "error: EACCES\n", "a's nodes to go")
    assert typed("b", "xs events") == f"event {SHARED}\nevent {SHARED}\nevents 2\n"     # 'last', the removal
    assert typed("c", f"xs read {SHARED}") == "error: EACCES\n"
    assert host.xenrr("destroy", "c").status == 0
    _, said = recording_c.communicate(timeout=120)
    assert recording_c.returncode == 3 and "domain c destroyed" in said.decode()     # as `xenrr record` says it
    at_start = run_xenrr("xenstore-ls", log_of_c, "--at", "1")
    assert at_start.status == 0 and '\n    shared = "world"\n' in at_start.stdout, at_start.stdout
    replayed_c = run_xenrr("replay", log_of_c, "--json")
    assert replayed_c.status == 0 and json.loads(replayed_c.stdout)["verified"], replayed_c.stderr
    assert typed("b", f"xs read {vm_of_b}/name") == "b\n"                   # b's /vm stays
    recorded = host.console_until("b", b"\nend\r", 1, typed=b"echo end\r").decode()
    assert host.xenrr("console", "b", stdin=b"halt\r").status == 0        # typed, then detached (end of input)
    host.wait_for(lambda: "b" not in host.domains(), "b to power off")

    dumped = run_xenrr("dump", log, "--json", "--kind", "xenstore-change")
    assert dumped.status == 0, dumped.stderr
    changes = json.loads(dumped.stdout)["records"]
    assert changes[0]["icount"] == 0 and changes[0]["detail"].startswith("xenstore change by d0 write /local ")
    writes = [(c["icount"], c["detail"]) for c in changes if f"write {SHARED} =" in c["detail"]]
    assert writes[0][1] == f"xenstore change by d1 write {SHARED} = 'hello'" and writes[0][0] > 0
    assert (f"xenstore change by d1 write {SHARED} = 'world'") in [detail for _, detail in writes]
    assert 2 < len(writes) < 150                        # the flood came coalesced, per quantum of a
    assert any("write /local/domain/3/domid = '3'" in c["detail"] for c in changes)    # c's toolstack nodes
    assert any("d0 rm /local/domain/1" in c["detail"] for c in changes)                # a's, when it went
    assert f"xenstore change by d1 write {PRIVATE} = 'secret'" in [c["detail"] for c in changes]    # hidden from b
    world = next(c["event"] for c in changes if c["detail"].endswith(f"write {SHARED} = 'world'"))
    for at, value in ((world, "hello"), (world + 1, "world")):     # the replicated node, at its event
        listed = run_xenrr("xenstore-ls", log, "--at", str(at), "-p")
        assert listed.status == 0 and f'\n    shared = "{value}"  (n1,r2,r3)\n' in listed.stdout, listed.stdout
    replay = run_xenrr("replay", log, "--json")
    summary = json.loads(replay.stdout)
    assert replay.status == 0 and summary["verified"] and summary["complete"], replay.stderr
    shown_again = run_xenrr("replay", log).stdout.replace("\r\n", "\n")
    assert "world\n" in shown_again and f"event {SHARED}\nevent {SHARED}\nevents 2\n" in shown_again
    assert recorded.replace("\r\n", "\n").split("> echo end")[0][-300:] in shown_again

    with LogReader(log) as reader:          # the header names b's /vm uuid; a garbled one is refused in one line
        header, records = reader.header, [record._replace(payload=bytes(record.payload)) for record in reader.records()]
    assert f"/vm/{header.config['xenstore']['uuid']}" == vm_of_b
    edited = write_log(tmp_path / "garbled.xrr", LogHeader(header.image_sha256, {
        **header.config, "xenstore": {**header.config["xenstore"], "uuid": "../../x"}}, header.initial_state), records)
    refused = run_xenrr("replay", edited, "--quiet")
    assert refused.status == 2 and refused.stderr.startswith("xenrr: error: ") and refused.stderr.count("\n") == 1
