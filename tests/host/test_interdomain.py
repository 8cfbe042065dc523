"""Inter-domain event channels (EVTCHNOP_alloc_unbound for another domain, EVTCHNOP_bind_interdomain,
send, close, status) as /usr/include/xen/event_channel.h and xen/common/event_channel.c define
them: within one domain (the loopback a guest may make with DOMID_SELF), and between two domains on
different pCPUs of a host, where the recorded domain's log holds what the other did as inputs and
replays alone."""
from __future__ import annotations

import json
import re

import pytest

from tests.conftest import guest_path, run_xenrr

EINVAL = -22


def _answers(stdout: str) -> list[str]:
    """kbdshell's output line after each command line (the prompt "> " starts the command's echo)."""
    lines = stdout.replace("\r\n", "\n").split("\n")
    return [lines[index + 1] for index, line in enumerate(lines) if line.startswith("> evtchn")]


def test_a_loopback_channel_within_one_domain_as_xen_keeps_it():
    """alloc_unbound(remote_dom = DOMID_SELF) then bind_interdomain(DOMID_SELF, port): both ends in one
    domain, status EVTCHNSTAT_interdomain naming each other; the new end is pending at once (Xen sets
    it for notifications the unbound port may have missed); send raises the other end; close leaves
    the other end EVTCHNSTAT_unbound for us again; a port nobody offered, a VIRQ's port or a port
    bound already is -EINVAL."""
    commands = ["alloc 32752", "bind 32752 4", "status 4", "status 5", "count 5", "send 5", "send 4", "send 4",
                "count 4", "count 5", "bind 32752 4", "bind 32752 3", "bind 7 4", "close 5", "status 4",
                "bind 1 4", "status 5"]
    keys = "".join(f"evtchn {command}\\r" for command in commands) + "halt\\r"
    done = run_xenrr("run", guest_path("kbdshell"), "--keys", keys)
    assert done.status == 0, done.stderr
    assert _answers(done.stdout) == [
        "port 4", "port 5", "interdomain d1 port 5", "interdomain d1 port 4", "events 1", "ok", "ok", "ok",
        "events 1", "events 3", f"error: {EINVAL}", f"error: {EINVAL}", f"error: {EINVAL}", "ok", "unbound d1",
        "port 5", "interdomain d1 port 4"]


@pytest.mark.slow
def test_two_domains_on_two_pcpus_signal_each_other_and_the_recorded_one_replays_alone(host, tmp_path, monkeypatch):
    """a (recorded, pCPU 0) offers b (pCPU 1) a port; b binds it, moves to pCPU 0 while it runs
    (`vcpu-pin`; its guest time goes on) and notifies; a sees the events and b's end in its status,
    notifies back; b moves back to pCPU 1 and floods a with 50000 notifications (a stays responsive and
    its log holds at most one per quantum of b), and when b is destroyed a's end is unbound again. The
    recorded a moves to pCPU 1 and back, its recording going along. a's log
    holds b's actions as inter-domain inputs and replays alone, verified, with the same output.
    `xenrr record a -o LOG` while a is recorded already is refused in one line."""
    log = tmp_path / "a.xrr"
    assert host.xenrr("create", host.config("a", guest="kbdshell", cpus="0", memory=4), "--record", log).status == 0
    assert host.xenrr("create", host.config("b", guest="kbdshell", cpus="1", memory=4)).status == 0
    domains = host.domains()
    assert (domains["a"]["pcpu"], domains["b"]["pcpu"], domains["a"]["domid"], domains["b"]["domid"]) == (0, 1, 1, 2)

    def type_and_wait(name: str, lines: list[str], marker: str) -> str:
        typed = "".join(line + "\r" for line in lines) + f"echo {marker}\r"
        shown = host.console_until(name, f"\n{marker}\r".encode(), 1, typed=typed.encode())
        return shown.decode().split(f"echo {marker}")[0]

    monkeypatch.setenv("XENRR_SOCKET", str(host.socket))
    refused = run_xenrr("record", "a", "-o", tmp_path / "a2.xrr")
    assert refused.status == 2 and f"cannot record a: a is already being recorded into {log}" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (tmp_path / "a2.xrr").exists()

    assert "port 4" in type_and_wait("a", ["evtchn alloc 2"], "m1")
    assert host.wait_for(lambda: "port 4\r\n> " in type_and_wait("b", ["evtchn bind 1 4"], "m2"), "b to bind a's port")
    before = [int(line) for line in re.findall(r"uptime\r\n(\d+)", type_and_wait("b", ["uptime"], "m2b"))][-1]
    moved = host.xenrr("vcpu-pin", "b", "0", "0")               # b moves to a's pCPU while it runs
    assert moved.status == 0, moved.stderr
    assert (host.domains()["b"]["pcpu"], host.domains()["b"]["pinning"]) == (0, "0")
    after = [int(line) for line in re.findall(r"uptime\r\n(\d+)", type_and_wait("b", ["uptime"], "m2c"))][-1]
    assert after > before                  # guest time goes on where it was; the console history came along
    for pcpu in (1, 0):                     # the recorded domain moves too, its log going along
        assert host.xenrr("vcpu-pin", "a", "0", str(pcpu)).status == 0 and host.domains()["a"]["pcpu"] == pcpu
    type_and_wait("b", ["evtchn send 4"], "m3")
    shown = host.wait_for(lambda: (text := type_and_wait("a", ["evtchn count 4", "evtchn status 4"], "m4"))
                          and "events 1" in text.split("m3")[-1] and text, "b's notification to reach a")
    assert "interdomain d2 port 4" in shown.split("m3")[-1]
    type_and_wait("a", ["evtchn send 4"], "m5")
    host.wait_for(lambda: "events 2" in type_and_wait("b", ["evtchn count 4"], "m6").split("m5")[-1],
                  "a's notification to reach b (b counts the pending bit of its bind and a's send)")
    assert host.xenrr("vcpu-pin", "b", "all", "1").status == 0 and host.domains()["b"]["pcpu"] == 1
    assert "ok" in type_and_wait("b", ["evtchn send 4 50000"], "m6b").split("m6")[-1]     # b floods a
    flooded = host.wait_for(lambda: int(re.findall(r"events (\d+)", type_and_wait("a", ["evtchn count 4"], "m6c")
                                                   .split("m5")[-1])[-1]) >= 2, "the flood to reach a")
    assert flooded                          # a answers on its console meanwhile; the count is checked in its log
    assert host.xenrr("destroy", "b").status == 0
    host.wait_for(lambda: "unbound d2" in type_and_wait("a", ["evtchn status 4"], "m7").split("m6")[-1],
                  "a's end to be unbound when b went")
    recorded = host.console_until("a", b"\nm8\r", 1, typed=b"echo m8\r")
    assert host.xenrr("console", "a", stdin=b"halt\r").status == 0      # typed, then detached (or a gone first)
    host.wait_for(lambda: "a" not in host.domains(), "a to power off")

    dumped = run_xenrr("dump", log, "--json", "--kind", "interdomain")
    assert dumped.status == 0, dumped.stderr
    inputs = json.loads(dumped.stdout)["records"]
    changes = [re.search(r"port 4: (\w+)", record["detail"]).group(1) for record in inputs]
    assert changes[0] == "bound" and changes[-1] == "closed" and set(changes[1:-1]) == {"notify"}, changes
    assert 2 <= changes.count("notify") < 1000      # 50001 sends: at most one notification per quantum of b
    replay = run_xenrr("replay", log, "--json")
    summary = json.loads(replay.stdout)
    assert replay.status == 0 and summary["verified"] and summary["complete"], replay.stderr
    shown_again = run_xenrr("replay", log)
    assert "interdomain d2 port 4" in shown_again.stdout and "unbound d2" in shown_again.stdout
    assert recorded.decode().split("m7")[0] in shown_again.stdout.replace("\r\n", "\n").replace("\n", "\r\n")
