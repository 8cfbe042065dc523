"""The multi-domain host end to end: `xenrr up`, xl-like commands over the real control socket,
pCPU worker processes, the credit scheduler's weights and pausing as seen in `list --json`, the
console, and clean stops."""
from __future__ import annotations

import json
import os
import shutil
import socket as sockets
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, run_xenrr
from tests.host.conftest import alive, children_of

pytestmark = pytest.mark.slow


def test_create_list_pause_destroy_down(host):
    assert host.xenrr("create", host.config("one", cpus="0")).status == 0
    created = host.xenrr("create", host.config("two", cpus="1", cpu_weight=512, cap=50))
    assert created.status == 0 and "created domain two (domid 2) on pCPU 1" in created.stderr
    domains = host.domains()
    assert set(domains) == {"one", "two"}
    assert {key: domains["two"][key] for key in ("name", "domid", "vcpus", "pinning", "pcpu", "weight", "cap")} == \
        {"name": "two", "domid": 2, "vcpus": 1, "pinning": "1", "pcpu": 1, "weight": 512, "cap": 50}
    host.wait_for(lambda: host.domains()["one"]["instructions"] > 0, "domain one to run")

    assert host.xenrr("pause", "one").status == 0
    paused = host.domains()["one"]
    assert paused["state"] == "paused"
    time.sleep(1)
    assert host.domains()["one"]["instructions"] == paused["instructions"]
    assert host.xenrr("unpause", "one").status == 0
    host.wait_for(lambda: host.domains()["one"]["instructions"] > paused["instructions"], "one to run again")

    assert host.xenrr("sched-credit", "-d", "one", "-w", "1024", "-c", "30").status == 0
    shown = host.xenrr("sched-credit", "-d", "one")
    assert shown.stdout.split("\n")[1].split() == ["one", "1", "1024", "30"]
    listed = host.xenrr("vcpu-list", "two")
    assert listed.status == 0 and listed.stdout.split("\n")[1].split()[:5] == ["two", "2", "0", "1", "running"]
    assert host.xenrr("vcpu-pin", "two", "0", "0-1").status == 0
    assert host.domains()["two"]["pinning"] == "0-1"

    assert host.xenrr("destroy", "one").status == 0
    assert set(host.domains()) == {"two"}
    down = run_xenrr("down", "--socket", host.socket)
    assert down.status == 0
    assert host.process.wait(timeout=60) == 0
    assert not host.socket.exists()


def test_weights_share_a_pcpu_two_to_one_in_instructions(host):
    """Two busy domains pinned to pCPU 0 with weights 256 and 512 (xl.cfg(5) cpu_weight): over a window
    of at least 24 accounting periods the heavier runs twice the instructions (within the quantum
    granularity of the window's two ends)."""
    host.xenrr("create", host.config("light", cpus="0"))
    host.xenrr("create", host.config("heavy", cpus="0", cpu_weight=512))
    host.wait_for(lambda: host.domains()["heavy"]["instructions"] > 0, "both to run")
    start = host.domains()
    host.wait_for(lambda: host.domains()["light"]["instructions"] - start["light"]["instructions"] >= 24_000_000,
                  "a window of 24 periods", timeout=300)
    end = host.domains()
    light = end["light"]["instructions"] - start["light"]["instructions"]
    heavy = end["heavy"]["instructions"] - start["heavy"]["instructions"]
    assert 1.7 < heavy / light < 2.3, (light, heavy)


def test_bad_configs_requests_and_socket_lines_are_refused_in_one_line(host):
    for arguments, message in ((("destroy", "nosuch"), "no domain named 'nosuch'"),
                               (("vcpu-pin", "nosuch", "0", "x"), "CPUS: 'x' is not a cpu list"),
                               (("sched-credit", "-w", "5"), "-w/-c need -d NAME")):
        refused = host.xenrr(*arguments)
        assert refused.status == 2 and refused.stderr.strip().count("\n") == 0
        assert message in refused.stderr
    bad = host.directory / "bad.cfg"
    bad.write_text('name = "x"\nkernel = "/nonexistent"\nvcpu = 1\n')
    refused = host.xenrr("create", bad)
    assert refused.status == 2 and f"{bad}:3: unknown key 'vcpu'" in refused.stderr
    bad.write_text('name = "x"\nkernel = "/nonexistent"\n')
    assert "cannot read kernel /nonexistent" in host.xenrr("create", bad).stderr
    host.xenrr("create", host.config("dup", cpus="1"))
    assert "a domain named 'dup' already exists" in host.xenrr("create", host.config("dup")).stderr
    pinned = host.xenrr("create", host.config("far", cpus="7"))
    assert pinned.status == 2 and "cpus names no pCPU of this host (it has pCPUs 0-1)" in pinned.stderr
    nowhere = host.xenrr("vcpu-pin", "dup", "0", "7")
    assert nowhere.status == 2 and "that names no pCPU of this host (it has pCPUs 0-1)" in nowhere.stderr
    assert host.domains()["dup"]["pcpu"] == 1
    # libxl bounds a cap by 100 per vCPU of the domain (libxl_sched.c, sched_credit_domain_set), whatever
    # the host's pCPUs: dup has one vCPU on a 2-pCPU host
    capped = host.xenrr("sched-credit", "-d", "dup", "-c", "101")
    assert capped.status == 2 and "cap must be between 0 and 100 for 1 vCPU(s) (100 per vCPU), not 101" in capped.stderr
    assert host.xenrr("sched-credit", "-d", "dup", "-c", "100").status == 0
    with sockets.socket(sockets.AF_UNIX) as client:           # the raw protocol: one JSON reply per line
        client.connect(str(host.socket))
        client.sendall(b'not json\n["list"]\n{"cmd": "fly"}\n{"cmd": "list"}\n')
        replies = b""
        while replies.count(b"\n") < 4:
            replies += client.recv(65536)
    answers = [json.loads(line) for line in replies.splitlines()]
    assert [answer["ok"] for answer in answers] == [False, False, False, True]
    assert answers[2]["error"] == "unknown command 'fly'"
    assert [domain["name"] for domain in answers[3]["domains"]] == ["dup"]


def test_console_attach_type_detach_and_poweroff(host):
    host.xenrr("create", host.config("shell", guest="kbdshell"))
    shown = host.console_until("shell", b"\nattached\r\n", 1, typed=b"echo attached\r")
    assert b"> echo attached\r\nattached\r\n" in shown
    again = host.xenrr("console", "shell", stdin=b"halt\r")        # on_poweroff = destroy (the default)
    assert again.status == 0 and "console of shell: the domain is gone" in again.stderr
    assert "shell" not in host.domains()


def test_host_refuses_a_second_host_and_commands_without_one(host, tmp_path):
    second = run_xenrr("up", "--socket", host.socket)
    assert second.status == 2 and "a host is already running at" in second.stderr
    nobody = run_xenrr("list", "--socket", "/tmp/xenrr-no-such-host.sock")
    assert nobody.status == 2 and "no host is running at /tmp/xenrr-no-such-host.sock" in nobody.stderr


def test_sigterm_stops_the_host_and_its_workers(host):
    host.xenrr("create", host.config("busy"))
    workers = children_of(host.process.pid)
    assert len(workers) >= 2
    host.process.terminate()
    assert host.process.wait(timeout=60) == 0
    assert not host.socket.exists()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


def test_daemon_mode_detaches_and_down_stops_it(tmp_path):
    import tempfile
    directory = tempfile.mkdtemp(prefix="xd", dir="/tmp")
    socket = f"{directory}/c.sock"
    try:
        up = run_xenrr("up", "--daemon", "--pcpus", "1", "--socket", socket)
        assert up.status == 0 and "host up in the background" in up.stderr
        assert run_xenrr("list", "--socket", socket).status == 0
    finally:
        down = run_xenrr("down", "--socket", socket)
        shutil.rmtree(directory, ignore_errors=True)
    assert down.status == 0 and not os.path.exists(socket)


def test_a_domain_recorded_on_the_host_replays_alone(host, tmp_path):
    """create --record: the log of a domain that ran beside a busy neighbour (same pCPU, its quanta
    interleaved) replays with `xenrr replay` alone and verifies; console input typed through the host
    is in it."""
    log = tmp_path / "shell.xrr"
    host.xenrr("create", host.config("noisy", cpus="0"))
    assert host.xenrr("create", host.config("shell", guest="kbdshell", cpus="0"), "--record", log).status == 0
    assert host.domains()["shell"]["recording"] == str(log)
    typed = host.xenrr("console", "shell", stdin=b"echo recorded on a host\rhalt\r")
    assert typed.status == 0 and "recorded on a host" in typed.stdout
    host.wait_for(lambda: "shell" not in host.domains(), "shell to power off")
    replay = run_xenrr("replay", log)
    assert replay.status == 0, replay.stderr
    assert "replayed to the end of the recording" in replay.stderr
    assert "recorded on a host" in replay.stdout


def test_destroy_of_a_recorded_domain_leaves_a_valid_log(host, tmp_path):
    log = tmp_path / "spin.xrr"
    assert host.xenrr("create", host.config("spin"), "--record", log).status == 0
    host.wait_for(lambda: host.domains()["spin"]["instructions"] > 3_000_000, "spin to run")
    assert host.xenrr("destroy", "spin").status == 0
    replay = run_xenrr("replay", log, "--json")
    summary = json.loads(replay.stdout)
    assert replay.status == 0 and summary["verified"] and summary["complete"]
    assert summary["recorded_outcome"].startswith("destroyed:")
    refused = host.xenrr("create", host.config("again"), "--record", log)
    assert refused.status == 2 and "already exists" in refused.stderr


def _allowed_cpus(pid: int | str) -> str:
    status = (Path("/proc") / str(pid) / "status").read_text()
    return next(line.split(":")[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))


def _workers(host) -> list[int]:
    return [pid for pid in children_of(host.process.pid)
            if b"spawn_main" in (Path("/proc") / str(pid) / "cmdline").read_bytes()]


def _host_threads(host) -> dict[int, str]:
    """Every thread of the host's processes (the hypervisor, its workers and theirs) and its allowed cores."""
    tree = psutil.Process(host.process.pid)
    threads = {}
    for process in [tree, *tree.children(recursive=True)]:
        for thread in process.threads():
            threads[thread.id] = _allowed_cpus(f"{process.pid}/task/{thread.id}")
    return threads


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a pinned replay needs a core to spare")
def test_a_replay_beside_a_host_gets_a_core_the_domains_keep_off(host, virtual_recording, tmp_path):
    """The pinned replay: its own core, which the host leaves - every thread of every host process: the
    workers, a recorded neighbour's log daemon and snapshot writer thread, the hypervisor itself; with
    CAP_SYS_NICE the highest priority for it and its autogroup (put back when it ends, also on SIGTERM)."""
    host.xenrr("create", host.config("neighbour", cpus="1"))
    assert host.xenrr("create", host.config("recorded", cpus="1"), "--record", tmp_path / "n.xrr").status == 0
    workers = _workers(host)
    before = {pid: _allowed_cpus(pid) for pid in workers}
    threads_before = _host_threads(host)
    assert len(threads_before) > len(workers) + 2          # the hypervisor, its resource tracker, a log daemon...
    autogroup = Path("/proc/self/autogroup").read_text()
    environment = dict(os.environ, XENRR_SOCKET=str(host.socket))
    serve = subprocess.Popen([sys.executable, "-m", "dom0.cli", "serve", str(virtual_recording.path)], cwd=ROOT,
                             env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert serve.stdout.readline().startswith(b"listening on 127.0.0.1:")
        core = _allowed_cpus(serve.pid)
        assert core.isdigit()                                   # one core
        for thread, cores in _host_threads(host).items():
            assert core not in cores.replace("-", ",").split(","), (thread, core, cores)
        assert host.domains()["neighbour"]["state"] == "running"
        if os.geteuid() == 0:
            assert os.getpriority(os.PRIO_PROCESS, serve.pid) == -20
            group = Path(f"/proc/{serve.pid}/autogroup").read_text()
            if group:                       # empty where the process's cgroup, not an autogroup, schedules it
                assert "nice -20" in group
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        serve.stdout.close()
        stderr = serve.stderr.read().decode()
        serve.stderr.close()
    assert f"replaying on core {core}, kept free of the host's domains" in stderr
    assert Path("/proc/self/autogroup").read_text() == autogroup
    host.wait_for(lambda: {pid: _allowed_cpus(pid) for pid in workers} == before, "the workers to get their cores back",
                  timeout=30)
    assert _host_threads(host) == threads_before
    replay = subprocess.run([sys.executable, "-m", "dom0.cli", "replay", str(virtual_recording.path)], cwd=ROOT,
                            env=environment, capture_output=True, timeout=120)
    assert replay.returncode == 0 and b"replaying on core" in replay.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or not Path("/proc/self/autogroup").exists(),
                    reason="needs root (to become an unprivileged user), setpriv and autogroups")
def test_a_process_that_may_not_raise_its_priority_does_not_say_it_did():
    """Without CAP_SYS_NICE neither the thread's nice nor its autogroup's can be raised: the pinned replay
    must not claim "the highest scheduling priority" (its signal handlers are no raised priority)."""
    probe = "from host.pinning import _highest_priority\nwith _highest_priority() as raised:\n    print(raised)"
    done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c",
                           probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_crashing_domain_does_not_disturb_the_others_and_on_crash_is_obeyed(host):
    host.xenrr("create", host.config("steady", cpus="0"))
    host.xenrr("create", host.config("kept", guest="hostile", cpus="0", on_crash="preserve"))
    host.xenrr("create", host.config("reborn", guest="hostile", cpus="0", on_crash="restart"))
    host.xenrr("create", host.config("dropped", guest="hostile", cpus="0"))
    for name in ("kept", "reborn", "dropped"):
        assert host.xenrr("console", name, stdin=b"u\x1d").status == 0
    host.wait_for(lambda: host.domains().get("kept", {}).get("state") == "crashed", "kept to crash")
    host.wait_for(lambda: "dropped" not in host.domains(), "dropped to go (on_crash = destroy)")
    reborn = host.domains()["reborn"]
    assert reborn["state"] != "crashed" and reborn["domid"] == 3            # restarted with its domid
    shown = host.console_until("reborn", b"hostile ready", 2)          # booted again after the crash
    assert shown.count(b"hostile: ud2") == 1
    steady = host.domains()["steady"]["instructions"]
    host.wait_for(lambda: host.domains()["steady"]["instructions"] > steady, "steady to go on running")
    assert host.xenrr("destroy", "kept").status == 0
    assert host.xenrr("destroy", "reborn").status == 0


def test_a_dead_worker_stops_the_host_in_one_line_and_the_rest_exits(host):
    host.xenrr("create", host.config("victim", cpus="0"))
    workers = _workers(host)
    os.kill(workers[0], 9)
    assert host.process.wait(timeout=60) == 2
    stderr = host.process.stderr.read().decode()
    assert "xenrr: error: pCPU" in stderr and "worker died" in stderr and "Traceback" not in stderr, stderr
    assert not host.socket.exists()
