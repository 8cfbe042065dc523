"""xsprobe end to end: a C guest speaking io/xs_wire.h over its real ring to xenrr's xenstored.

It also sets up its grant table (grant_table.h: set_version 2 is -ENOSYS and leaves version 1,
query_size reports max_grant_frames, setup_table lists a frame outside the domain's pages), grants
a page to dom0 as a frontend does and publishes the reference in xenstore, where a backend finds it.

The guest (guests/xsprobe, built against /usr/include/xen) sends every message type a frontend uses
and prints each reply; the expected transcript is guests/xsprobe/README.md, i.e. what C xenstored
answers (docs/misc/xenstore.txt). A dom0 write while the guest runs (`--xenstore-write`, as
`xl shutdown` writes control/shutdown) is an outside input: it is logged as one XENSTORE_WRITE record,
replays identically, and xenstore state follows reverse execution.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from dom0.cli import main
from dom0.replay import ReplaySession
from stub.timeline import Timeline
from xen.inject import Kind

ROOT = Path(__file__).resolve().parents[2]
XSPROBE = ROOT / "guests/xsprobe/xsprobe.elf"
SHUTDOWN = "control/shutdown=poweroff"
HOME = "/local/domain/1"

TRANSCRIPT = """\
xsprobe ready
read name: ok xsprobe
read domid: ok 1
domain path: ok /local/domain/1|
directory device/vbd: error ENOENT|
write data/probe: ok OK|
read data/probe: ok hello
mkdir data/dir/sub: ok OK|
directory data: ok probe|dir|
perms data/probe: ok n1|
set perms data/probe: ok OK|
perms data/probe: ok n1|r0|
write name: error EACCES|
read /libxl/1/type: error EACCES|
read bad//path: error EINVAL|
watch data/dir: ok OK|
event: data/dir tok
event: data/dir/sub/x tok
write data/dir/sub/x: ok OK|
unwatch data/dir: ok OK|
write data/dir/sub/y: ok OK|
transaction start: ok 1|
write data/t in tx: ok OK|
read data/t outside: error ENOENT|
transaction commit: ok OK|
read data/t: ok committed
transaction start: ok 2|
read data/t in tx: ok committed
write data/t outside: ok OK|
transaction commit: error EAGAIN|
rm data/dir: ok OK|
read data/dir/sub/x: error ENOENT|
set_version 2: -38 1
set_version 1: 0 1
get_version: 0 1
query_size: 0 4
setup_table: 0 0
grant frame outside the domain's pages
write data/gref: ok OK|
xsprobe done
watch control/shutdown: ok OK|
event: control/shutdown shutdown
read control/shutdown: ok 
event: control/shutdown shutdown
read control/shutdown: ok poweroff
""".replace("\n", "\r\n")


@pytest.fixture(scope="module")
def recording(recorder) -> Path:
    recorded = recorder(XSPROBE, "--keys", "", "--clock", "virtual", "--xenstore-write", SHUTDOWN)
    assert recorded.record.stdout == TRANSCRIPT
    return recorded.path


def test_run_prints_the_xenstored_transcript_and_powers_off_on_the_toolstack_write(xenrr):
    result = xenrr("run", XSPROBE, "--keys", "", "--clock", "virtual", "--xenstore-write", SHUTDOWN)
    assert result.status == 0, result.stderr
    assert result.stdout == TRANSCRIPT
    assert "domain shut down (poweroff)" in result.stderr


def test_without_the_write_the_guest_waits(xenrr):
    result = xenrr("run", XSPROBE, "--keys", "", "--clock", "virtual", "--linger", "0.01")
    assert result.status == 3
    assert result.stdout.endswith("read control/shutdown: ok \r\n")


@pytest.mark.parametrize("option, message", [("nopath", "wants PATH=VALUE"), ("=v", "wants PATH=VALUE"),
                                             ("a//b=v", "not a valid xenstore path"),
                                             ("bad path!=v", "not a valid xenstore path")])
def test_bad_xenstore_write_option_is_a_one_line_error(option, message, capsys):
    assert main(["run", str(XSPROBE), "--keys", "", "--xenstore-write", option]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("xenrr: error: --xenstore-write") and message in stderr
    assert stderr.count("\n") == 1


def test_the_toolstack_write_is_the_only_logged_xenstore_traffic(recording):
    session = ReplaySession(recording)
    kinds = [event.kind for event in session.events()]
    assert kinds.count(Kind.XENSTORE_WRITE) == 1                 # the guest's own requests are not inputs
    event = next(event for event in session.events() if event.kind == Kind.XENSTORE_WRITE)
    assert event.describe() == f"xenstore write {HOME}/control/shutdown = 'poweroff'"
    session.close()


def test_replay_verifies_and_reproduces_the_console(xenrr, recording):
    result = xenrr("replay", recording)
    assert result.status == 0, result.stderr
    assert result.stdout == TRANSCRIPT


def test_xenstore_ls_at_the_end_and_before_the_write(xenrr, recording):
    session = ReplaySession(recording)
    write_event = next(e.number for e in session.events() if e.kind == Kind.XENSTORE_WRITE)
    session.close()
    end = xenrr("xenstore-ls", recording)
    assert end.status == 0, end.stderr
    lines = end.stdout.splitlines()
    assert lines[:3] == ['local = ""', ' domain = ""', '  0 = ""']
    assert '   name = "xsprobe"' in lines and '    shutdown = "poweroff"' in lines
    assert '    probe = "hello"' in lines and '    t = "changed"' in lines
    before = xenrr("xenstore-ls", recording, "--at", str(write_event), "-p")
    assert before.status == 0, before.stderr
    assert '    shutdown = ""  (n1)' in before.stdout.splitlines()
    assert '    probe = "hello"  (n1,r0)' in before.stdout.splitlines()
    missing = xenrr("xenstore-ls", recording, "--at", "99")
    assert missing.status == 2 and missing.stderr.startswith("xenrr: error: event 99 does not exist")


def test_xenstore_state_follows_reverse_execution(recording):
    forward = ReplaySession(recording)
    write_event = next(e for e in forward.events() if e.kind == Kind.XENSTORE_WRITE)
    forward.replayer.run()
    end_state, end_icount = forward.domain.device_state(), forward.domain.vcpu.icount
    forward.close()

    session = ReplaySession(recording)
    timeline = Timeline(session, checkpoint_interval=5_000)
    timeline.goto_icount(end_icount)
    assert session.domain.device_state() == end_state
    timeline.goto_event(write_event.number)                   # back across the write: just before it
    assert session.domain.xenstore.read(f"{HOME}/control/shutdown") == b""
    before_write = session.domain.device_state()
    timeline.reverse_step()
    timeline.goto_icount(20_000)                               # back into the guest's own request traffic
    mid = session.domain.device_state()

    fresh = ReplaySession(recording)
    fresh_timeline = Timeline(fresh, checkpoint_interval=10**9)
    fresh_timeline.goto_icount(20_000)
    assert fresh.domain.device_state() == mid                 # reverse lands where a forward replay does
    fresh_timeline.goto_event(write_event.number)
    assert fresh.domain.device_state() == before_write
    session.close()
    fresh.close()


def test_a_backend_maps_the_page_the_guest_granted(recording):
    session = ReplaySession(recording)
    session.replayer.run()
    reference = int(session.domain.xenstore.read(f"{HOME}/data/gref"))
    handle, address = session.domain.grants.map(reference, domid=0, readonly=True)
    assert session.domain.vcpu.read(address, 18) == b"granted by xsprobe"
    session.domain.grants.unmap(handle)
    session.close()
