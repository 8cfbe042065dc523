"""The fork server (dom0/forkserver.py) and its client, the `xenrr` program (dom0/launch.py).

Every case runs real processes: a real server on a private socket of its own (tmp_path), real clients
(`python -m dom0.launch`, what the `xenrr` console script runs) and real guests. The rest of the suite
runs xenrr in-process (`-m dom0.cli`, and XENRR_SERVER=off from conftest); these tests turn it on.
"""
from __future__ import annotations

import os
import pty
import resource
import re
import signal
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from dom0.launch import MAX_REQUEST_BYTES, code_fingerprint, process_attributes, receive_message, send_message
from dom0.logfile import LogReader
from tests.conftest import ROOT

KEYS = r"help\rhalt\r"


def _environment(directory: Path, mode: str = "manual", **extra: str) -> dict[str, str]:
    return {**os.environ, "XENRR_SERVER": mode, "XENRR_SERVER_SOCKET": str(directory / "server.sock"),
            "XENRR_SERVER_IDLE": "60", **extra}


def _client(environment: dict[str, str], *arguments, stdin=subprocess.DEVNULL, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dom0.launch", *map(str, arguments)], cwd=ROOT, env=environment,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def _xenrr(environment: dict[str, str], *arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dom0.launch", *map(str, arguments)], cwd=ROOT, env=environment,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def _sizes_left_out(text: str) -> str:
    """A recording's message without the file sizes (how the daemon cut the log into blocks follows timing)."""
    return re.sub(r"\(\d+ bytes\)", "(N bytes)", text)


def _logged(log: Path) -> tuple:
    """A log's header and records (how the daemon cut them into blocks depends on timing)."""
    with LogReader(log) as reader:
        assert reader.damage is None
        return reader.header, [(record.seq, record.kind, record.vcpu, record.icount, record.rip, bytes(record.payload))
                               for record in reader.records()]


def _served(environment: dict[str, str]) -> int:
    status = _xenrr(environment, "server", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    return int(status.stdout.split(" served")[0].rsplit(" ", 1)[1])


def _server_pid(environment: dict[str, str]) -> int:
    return int(_xenrr(environment, "server", "status").stdout.split()[3])


def _gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def server(tmp_path):
    """A running server on a private socket of this test; stopped (and waited for) afterwards."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    environment = _environment(directory)
    started = _xenrr(environment, "server", "start")
    assert started.returncode == 0 and "server started" in started.stdout, started.stdout + started.stderr
    pid = _server_pid(environment)
    yield environment
    _xenrr(environment, "server", "stop")
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)


def test_a_served_recording_is_the_recording_made_in_process(server, tmp_path, kbdshell_elf):
    """Determinism through the server: the forked engine is indistinguishable from a new one. The same
    keys recorded through the server and in-process give the same log (header and every record) and the
    same snapshots, byte for byte;
    the server replays both and verifies every digest; output and status are what in-process gives."""
    served_log, local_log = tmp_path / "served.xrr", tmp_path / "local.xrr"
    options = ("--keys", KEYS, "--clock", "virtual", "--snapshot-every", "20000")
    served = _xenrr(server, "record", kbdshell_elf, "-o", served_log, *options)
    local = subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(kbdshell_elf), "-o", str(local_log),
                            *options], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert served.returncode == local.returncode == 0, served.stderr
    assert served.stdout == local.stdout and "halt" in served.stdout
    assert _sizes_left_out(served.stderr.replace(str(served_log), str(local_log))) == _sizes_left_out(local.stderr)
    assert _logged(served_log) == _logged(local_log)
    assert Path(f"{served_log}.snap").read_bytes() == Path(f"{local_log}.snap").read_bytes()
    for log in (served_log, local_log):
        replayed = _xenrr(server, "replay", log, "--quiet")
        assert replayed.returncode == 0 and "replayed to the end" in replayed.stderr, replayed.stderr
        assert "state digest" in replayed.stderr
    assert _served(server) == 3


def test_statuses_errors_and_input_pass_through(server, tmp_path, minimal_elf):
    """The child has the client's descriptors, working directory and arguments: a usage error is the
    same one line and status 2, keys typed on the client's stdin reach the guest."""
    missing = _xenrr(server, "run", tmp_path / "nothing.elf")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"xenrr: error: cannot read guest kernel {tmp_path / 'nothing.elf'}: "
                                                   "No such file or directory"]
    bad = _xenrr(server, "dump", "--kind", "no-such-kind", tmp_path / "x.xrr")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    typed = subprocess.run([sys.executable, "-m", "dom0.launch", "run", str(minimal_elf.relative_to(ROOT)),
                            "--clock", "virtual"], cwd=ROOT, env=server, input="typed on stdin\r", capture_output=True,
                           text=True, timeout=120)
    assert typed.returncode == 0, typed.stderr
    assert "read 'typed on stdin'" in typed.stdout
    assert _served(server) == 3
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)     # a request too long to read: refused
    connection.connect(server["XENRR_SERVER_SOCKET"])
    connection.sendall((MAX_REQUEST_BYTES + 1).to_bytes(4, "big") + b"x" * 1000)
    assert receive_message(connection)[0] == {"reason": "too long"}
    connection.close()
    assert _served(server) == 3                   # and the server goes on


def test_signals_reach_the_command_and_a_lost_client_ends_it(server, kbdshell_elf):
    """Ctrl-C (SIGINT) at the client interrupts the command as in-process (status 130, one line); a client
    killed outright takes its command with it (SIGHUP), and the server is idle again."""
    interrupted = _client(server, "run", kbdshell_elf, "--clock", "virtual", stdin=subprocess.PIPE)
    _wait_for_output(interrupted, "kbdshell")
    interrupted.send_signal(signal.SIGINT)
    out, err = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130
    assert err.strip().endswith("xenrr: interrupted") and "Traceback" not in err

    orphaned = _client(server, "run", kbdshell_elf, "--clock", "virtual", stdin=subprocess.PIPE)
    _wait_for_output(orphaned, "kbdshell")
    orphaned.kill()
    orphaned.wait()
    deadline = time.monotonic() + 30
    while "0 running" not in _xenrr(server, "server", "status").stdout:
        assert time.monotonic() < deadline, "the lost client's command still runs"
        time.sleep(0.05)


def _wait_for_output(process: subprocess.Popen, text: str) -> None:
    seen = ""
    while text not in seen:
        line = process.stdout.readline()
        assert line, f"no {text!r} in the output: {seen!r}"
        seen += line


@pytest.mark.slow
def test_stale_code_other_environment_and_no_server_run_in_process(server, tmp_path, minimal_elf):
    """A request with another fingerprint (the code changed since the server started), or one it cannot
    read, is refused as stale and the server lets go of its socket and exits; other environments and a missing server run
    the command in the client itself, with the same result."""
    arguments = ("run", minimal_elf, "--keys", r"hello\r", "--clock", "virtual")
    other = _xenrr({**server, "RUST_LOG": "warn"}, *arguments)       # the engine may read it: not served
    assert other.returncode == 0 and "read 'hello'" in other.stdout
    off = _xenrr({**server, "XENRR_SERVER": "off"}, *arguments)
    assert off.returncode == 0 and off.stdout == other.stdout
    assert _served(server) == 0

    for request in ({"op": "run", "fingerprint": "older code", "argv": ["run"], "cwd": "/", "environment": {}},
                    b'{"op": "run"}'):           # the second: a request it cannot read (other code's protocol)
        if _xenrr(server, "server", "status").returncode != 0:
            assert _xenrr(server, "server", "start").returncode == 0
        pid = _server_pid(server)
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(server["XENRR_SERVER_SOCKET"])
        if isinstance(request, dict):
            send_message(connection, request, (0, 1, 2))
        else:
            connection.sendall(len(request).to_bytes(4, "big") + request)
        assert receive_message(connection)[0] == {"reason": "stale"}
        connection.close()
        assert _gone(pid)
        assert not Path(server["XENRR_SERVER_SOCKET"]).exists()
    alone = _xenrr(server, *arguments)         # manual mode: no server, so in-process, and none started
    assert alone.returncode == 0 and alone.stdout == off.stdout
    assert not Path(server["XENRR_SERVER_SOCKET"]).exists()


@pytest.mark.slow
def test_auto_mode_starts_a_server_that_goes_when_idle(tmp_path, minimal_elf):
    """XENRR_SERVER=auto: the first served command runs in-process and starts a server in the background;
    the next one is run by it; the server exits by itself after its idle time."""
    directory = tmp_path / "run"
    environment = _environment(directory, mode="auto", XENRR_SERVER_IDLE="4")
    arguments = ("run", minimal_elf, "--keys", r"hello\r", "--clock", "virtual")
    directory.mkdir(mode=0o700)
    first = _xenrr(environment, *arguments)
    assert first.returncode == 0 and "read 'hello'" in first.stdout
    deadline = time.monotonic() + 30
    while _xenrr(environment, "server", "status").returncode != 0:
        assert time.monotonic() < deadline, "no server started"
        time.sleep(0.1)
    pid = _server_pid(environment)
    second = _xenrr(environment, *arguments)
    assert second.stdout == first.stdout and _served(environment) == 1
    assert _gone(pid, seconds=60)


def test_a_socket_directory_others_may_enter_is_never_used(tmp_path, minimal_elf):
    """Whoever reaches the socket runs commands as its user: a directory with group or other access is
    refused by the server and ignored by the client (which runs the command itself)."""
    directory = tmp_path / "open"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    environment = _environment(directory)
    started = _xenrr(environment, "server", "start")
    assert started.returncode == 2 and "mode 0700" in started.stderr
    ran = _xenrr({**environment, "XENRR_SERVER": "auto"}, "run", minimal_elf, "--keys", r"hi\r", "--clock", "virtual")
    assert ran.returncode == 0 and "read 'hi'" in ran.stdout
    assert not (directory / "server.sock").exists()


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def test_a_terminal_left_raw_by_a_dead_command_is_restored(server, kbdshell_elf):
    """An interactive run puts the client's terminal in raw mode (from the server's child); when that child
    dies without restoring it (SIGKILL), the client puts the terminal back as it was, and says how the
    command ended: it ends by the same signal, as an in-process command killed so would have."""
    controller, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    client = subprocess.Popen([sys.executable, "-m", "dom0.launch", "run", str(kbdshell_elf)], cwd=ROOT, env=server,
                              stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True)
    shown = b""
    while b"kbdshell ready" not in shown:
        shown += os.read(controller, 4096)
    assert termios.tcgetattr(terminal) != before          # raw, set by the server's child
    [command] = _children_of(_server_pid(server))
    os.kill(command, signal.SIGKILL)
    assert client.wait(timeout=60) == -signal.SIGKILL     # ended by the signal that ended the command
    assert termios.tcgetattr(terminal) == before
    os.close(terminal)
    os.close(controller)


def _inherit_from_the_shell() -> None:
    """What a user's shell may have set before `xenrr`: umask 077, `ulimit -n 200`, `nice -n 3`,
    `taskset -c CPU`, `nohup` (SIGHUP ignored) and a blocked signal."""
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    os.nice(3)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])


def _proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def test_the_command_has_the_clients_process_attributes_not_the_servers(server, tmp_path, kbdshell_elf, minimal_elf):
    """A served command's process is the client's as in-process: its umask (the mode of the files `record -o`
    creates), resource limits, nice value, CPU affinity, ignored and blocked signals - not the server's.
    A client under nohup killed outright still takes its command with it (SIGTERM: it ignores SIGHUP)."""
    recorded = subprocess.run([sys.executable, "-m", "dom0.launch", "record", str(minimal_elf), "-o",
                               str(tmp_path / "private.xrr")], cwd=ROOT, env=server, capture_output=True, text=True,
                              timeout=120, preexec_fn=_inherit_from_the_shell)
    assert "records logged" in recorded.stderr, recorded.stderr
    assert {path.name: path.stat().st_mode & 0o777 for path in tmp_path.glob("private.xrr*")} == {
        "private.xrr": 0o600, "private.xrr.snap": 0o600}

    client = _client(server, "run", kbdshell_elf, "--clock", "virtual", stdin=subprocess.PIPE,
                     preexec_fn=_inherit_from_the_shell)
    _wait_for_output(client, "kbdshell")
    [command] = _children_of(_server_pid(server))
    status = _proc_status(command)
    assert int(status["SigIgn"], 16) & (1 << (signal.SIGHUP - 1))
    assert int(status["SigBlk"], 16) & (1 << (signal.SIGUSR1 - 1))
    assert status["Cpus_allowed_list"].strip() == str(min(os.sched_getaffinity(0)))
    assert int(status["Umask"], 8) == 0o077
    assert os.getpriority(os.PRIO_PROCESS, command) == os.getpriority(os.PRIO_PROCESS, 0) + 3
    assert resource.prlimit(command, resource.RLIMIT_NOFILE)[0] == 200
    autogroup = Path(f"/proc/{command}/autogroup").read_text().split()[0]      # the CPU's share: its own
    assert autogroup != Path(f"/proc/{_server_pid(server)}/autogroup").read_text().split()[0]
    assert _served(server) == 2
    client.kill()
    client.wait()
    assert _gone(command), "the nohup'd command outlived its client"


def test_a_background_job_of_the_terminal_runs_in_process(server, kbdshell_elf):
    """`xenrr run GUEST &` at an interactive shell: in-process the kernel stops the job when it sets the
    terminal raw (SIGTTOU) until `fg`; a child of the server, in another session, would run on and take
    keys from the shell. So a background job runs the command itself, and stops as in-process."""
    job = (f"set -m; {sys.executable} -m dom0.launch run {kbdshell_elf} & "
           "for i in $(seq 600); do jobs -l | grep -q Stopped && break; sleep 0.1; done; jobs -l; kill -KILL %1")
    pid, controller = pty.fork()        # bash as the session leader of a new terminal, with job control
    if pid == 0:
        os.chdir(ROOT)
        os.execve("/bin/bash", ["bash", "--norc", "-c", job], server)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:                 # EIO: the terminal's last process has gone
            break
        if not chunk:
            break
        shown += chunk
    os.waitpid(pid, 0)
    os.close(controller)
    assert b"Stopped (tty output)" in shown and b"kbdshell ready" not in shown, shown
    assert _served(server) == 0


def test_output_that_cannot_be_written_is_reported_as_in_process(tmp_path, minimal_elf):
    """Without PYTHONUNBUFFERED (a user's usual environment) a served command's stdout is buffered as the
    interpreter buffers it, and output the interpreter cannot flush at exit (`xenrr dump LOG > /dev/full`)
    gives the interpreter's message and status 120, served as in-process."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    environment = {name: value for name, value in _environment(directory).items() if name != "PYTHONUNBUFFERED"}
    assert _xenrr(environment, "server", "start").returncode == 0
    pid = _server_pid(environment)
    try:
        log = tmp_path / "minimal.xrr"
        recorded = _xenrr(environment, "record", minimal_elf, "-o", log)
        assert "records logged" in recorded.stderr, recorded.stderr
        outcomes = []
        for mode in ("manual", "off"):
            with open("/dev/full", "w") as full:
                outcomes.append(subprocess.run([sys.executable, "-m", "dom0.launch", "dump", str(log)], cwd=ROOT,
                                               env={**environment, "XENRR_SERVER": mode}, stdout=full,
                                               stderr=subprocess.PIPE, text=True, timeout=120))
        served, local = outcomes
        assert served.returncode == local.returncode == 120, served.stderr
        assert served.stderr == local.stderr and "No space left on device" in served.stderr
        assert _served(environment) == 2
    finally:
        _xenrr(environment, "server", "stop")
        assert _gone(pid)


def test_a_client_whose_server_dies_waits_for_its_command(server, kbdshell_elf):
    """A server killed while it runs a command (the OOM killer, `kill -9`) leaves the command running with
    the client's terminal: the client waits for it to end, as in-process, then says the status is lost."""
    client = _client(server, "run", kbdshell_elf, "--clock", "virtual", stdin=subprocess.PIPE)
    _wait_for_output(client, "kbdshell")
    server_pid = _server_pid(server)
    [command] = _children_of(server_pid)
    os.kill(server_pid, signal.SIGKILL)
    assert _gone(server_pid)
    with pytest.raises(subprocess.TimeoutExpired):
        client.wait(timeout=1)          # still waiting for its command
    out, err = client.communicate("halt\r", timeout=60)
    assert _gone(command, 5)
    assert client.returncode == 1
    assert err.strip().splitlines()[-1].startswith("xenrr: error: the xenrr server went away")


def test_server_start_in_another_environment_replaces_the_server(server):
    """A server whose environment differs from the shell's runs none of its commands: `server status` there
    says so, and `server start` there replaces it (instead of "already running") so they are served."""
    other = {**server, "XENRR_SERVER_TEST_MARK": "another environment"}
    first = _server_pid(server)
    assert "another environment" in _xenrr(other, "server", "status").stdout
    started = _xenrr(other, "server", "start")
    assert "server started" in started.stdout, started.stdout + started.stderr
    assert _gone(first)
    assert "another environment" not in _xenrr(other, "server", "status").stdout
    _xenrr(other, "server", "stop")


def test_a_closed_stdin_is_closed_for_the_command(server, minimal_elf):
    """`xenrr run GUEST <&-`: the client's connection to the server must not become the command's stdin (the
    command waited for keys from it for ever); the client runs it as in-process, which says in one line
    that there is no input to read."""
    outcomes = [subprocess.run([sys.executable, "-m", "dom0.launch", "run", str(minimal_elf), "--clock", "virtual"],
                               cwd=ROOT, env={**server, "XENRR_SERVER": mode}, preexec_fn=lambda: os.close(0),
                               capture_output=True, text=True, timeout=60) for mode in ("manual", "off")]
    served, local = outcomes
    assert served.returncode == local.returncode == 2
    assert served.stderr == local.stderr
    assert served.stderr.strip().splitlines()[-1] == ("xenrr: error: standard input is closed: give keys with --keys "
                                                      "or --keys-file, or none with </dev/null")
    assert _served(server) == 0


def test_a_status_that_comes_with_started_is_not_lost(server, tmp_path):
    """A command that ends before its client reads "started" (a fast one, on a loaded machine) has its
    status already behind "started" in the socket: the client reads one message at a time and gets it (it
    read both at once, dropped the status and said the server went away: 3 of 40 concurrent dumps)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(server["XENRR_SERVER_SOCKET"])
    with open(os.devnull, "r+b") as null:
        send_message(connection, {"op": "run", "fingerprint": code_fingerprint(), "argv": ["dump", "missing.xrr"],
                                  "cwd": str(tmp_path), "environment": server, "process": process_attributes()},
                     (null.fileno(),) * 3)
    deadline = time.monotonic() + 60
    while not (_served(server) == 1 and "0 running" in _xenrr(server, "server", "status").stdout):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "started" in receive_message(connection)[0]
    assert receive_message(connection)[0] == {"status": 2, "signal": None}
    connection.close()
