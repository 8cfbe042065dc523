"""The xl-like commands of the multi-domain host: up, down, create, list, console, shutdown, destroy,
pause, unpause, vcpu-list, vcpu-pin, sched-credit, and `record NAME` (a running domain).

Owns their arguments, output and messages; dom0/cli.py hooks them in (`add_host_commands`,
`HOST_COMMANDS`) and reports `HostCommandError` in one line with exit status 2. Every command but
`up` talks to a running host over its control socket (host/control.py).
Invariant: a refused request prints one line and exits non-zero; `xenrr console` always gives the
terminal back as it found it.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
from pathlib import Path

from dom0.consoleinput import TerminalInput
from host import control
from host.control import ControlError
from host.xlcfg import ConfigError, parse_cpus, read_config_text

DOWN_WAIT_SECONDS = 120


class HostCommandError(Exception):
    """A host command that failed: one line."""


def _socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH", type=Path,
                        help="the host's control socket (default: $XENRR_SOCKET, else "
                             "$XDG_RUNTIME_DIR/xenrr/control.sock, else /tmp/xenrr-UID/control.sock)")


def _name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the domain's name (name= in its config)")


def add_host_commands(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "up", help="start the multi-domain host (hypervisor with a control socket)",
        description="Start the host: one worker process per physical CPU, each pinned to a host core, and a "
                    "control socket the other host commands (create, list, console, ...) talk to. Runs in the "
                    "foreground until `xenrr down`, SIGTERM or Ctrl-C, which destroy every domain; with "
                    "--daemon it detaches once the socket is ready.")
    up.add_argument("--pcpus", metavar="N", type=int, default=len(os.sched_getaffinity(0)),
                    help="physical CPUs (worker processes) to run domains on (default: the host's cores)")
    up.add_argument("--daemon", action="store_true", help="run in the background")
    _socket_option(up)
    down = subparsers.add_parser("down", help="stop the host and destroy every domain",
                                 description="Stop the host: every domain is destroyed, every worker exits.")
    _socket_option(down)
    create = subparsers.add_parser(
        "create", help="create a domain from an xl.cfg file",
        description="Create and start a domain from CFG, an xl.cfg(5) file (keys: name, kernel, memory, vcpus, "
                    "cpus, cpu_weight, cap, extra/cmdline, on_poweroff, on_crash, type). A relative kernel path "
                    "is taken from the current directory, as xl does.")
    create.add_argument("config", metavar="CFG", type=Path, help="the domain's xl config file")
    create.add_argument("--record", metavar="LOG", type=Path,
                        help="record the domain from its first instruction into LOG (never replaced if it exists); "
                             "the log ends when the domain does (END says shutdown, crashed or destroyed) and "
                             "`xenrr replay LOG` replays it alone")
    _socket_option(create)
    listing = subparsers.add_parser("list", help="list the host's domains",
                                    description="One line per domain: name, domid, memory, vCPUs, state, pCPU, "
                                                "pinning, weight, cap and instructions run.")
    listing.add_argument("--json", action="store_true", help="a JSON array of domains instead")
    _socket_option(listing)
    console = subparsers.add_parser("console", help="attach to a domain's console (Ctrl-] detaches)",
                                    description="Show the domain's console (its recent output first) and type "
                                                "into it; Ctrl-] detaches, as `xl console` does.")
    _name(console)
    _socket_option(console)
    for command, text in (("shutdown", "ask a domain to power off (control/shutdown = poweroff in xenstore)"),
                          ("destroy", "stop a domain at once"), ("pause", "stop scheduling a domain"),
                          ("unpause", "schedule a paused domain again")):
        parser = subparsers.add_parser(command, help=text, description=text[0].upper() + text[1:] + ".")
        _name(parser)
        _socket_option(parser)
    vcpu_list = subparsers.add_parser("vcpu-list", help="list vCPUs, their pCPU and hard affinity",
                                      description="As `xl vcpu-list`: one line per vCPU.")
    vcpu_list.add_argument("name", metavar="NAME", nargs="?", help="only this domain")
    _socket_option(vcpu_list)
    vcpu_pin = subparsers.add_parser("vcpu-pin", help="set a vCPU's hard affinity",
                                     description="As `xl vcpu-pin NAME VCPU CPUS`: CPUS in xl's syntax "
                                                 "(\"all\", \"1\", \"0-1\", \"0-3,^2\"). A domain running on "
                                                 "a pCPU outside CPUS moves to one inside it (a recording of it "
                                                 "goes on in the same log).")
    _name(vcpu_pin)
    vcpu_pin.add_argument("vcpu", metavar="VCPU", help="the vCPU number, or all")
    vcpu_pin.add_argument("cpus", metavar="CPUS", help="the pCPUs it may run on")
    _socket_option(vcpu_pin)
    sched = subparsers.add_parser("sched-credit", help="show or set a domain's credit-scheduler weight and cap",
                                  description="As `xl sched-credit`: without -d, every domain's weight and cap; "
                                              "with -d NAME and -w and/or -c, set them.")
    sched.add_argument("-d", "--domain", metavar="NAME", help="the domain")
    sched.add_argument("-w", "--weight", metavar="N", type=int, help="relative weight (1-65535, default 256)")
    sched.add_argument("-c", "--cap", metavar="PERCENT", type=int,
                       help="at most this percentage of one pCPU (0: no cap; at most 100 per vCPU of the domain, "
                            "as libxl allows)")
    _socket_option(sched)


def _path(args: argparse.Namespace) -> Path:
    return args.socket or control.default_socket_path()


def _call(args: argparse.Namespace, request: dict) -> dict:
    try:
        return control.call(_path(args), request)
    except ControlError as error:
        raise HostCommandError(str(error)) from None


def command_up(args: argparse.Namespace) -> int:
    from host.hypervisor import HostError, Hypervisor      # here: the other commands start without it
    path = _path(args)
    if args.daemon:
        return _up_in_background(args, path)
    try:
        host = Hypervisor(path, args.pcpus)
    except HostError as error:
        raise HostCommandError(str(error)) from None
    print(f"xenrr: host up: {args.pcpus} pCPUs, control socket {path}", file=sys.stderr, flush=True)
    try:
        host.serve()
    except HostError as error:
        raise HostCommandError(str(error)) from None
    print("xenrr: host down", file=sys.stderr, flush=True)
    return 0


def _up_in_background(args: argparse.Namespace, path: Path) -> int:
    """Fork a host that outlives this command; report once its socket is ready (or why it is not)."""
    from host.hypervisor import HostError, Hypervisor
    ready_read, ready_write = os.pipe()
    if os.fork() != 0:
        os.close(ready_write)
        with os.fdopen(ready_read) as ready:
            answer = ready.read()
        if answer != "ok":
            raise HostCommandError(answer or "the host did not start")
        print(f"xenrr: host up in the background: {args.pcpus} pCPUs, control socket {path}", file=sys.stderr)
        return 0
    os.close(ready_read)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for descriptor in (0, 1, 2):
        os.dup2(null, descriptor)
    status = 0
    try:
        try:
            host = Hypervisor(path, args.pcpus)
        except HostError as error:
            os.write(ready_write, str(error).encode())
            status = 2
        else:
            os.write(ready_write, b"ok")
            os.close(ready_write)
            try:
                host.serve()
            except HostError:
                status = 1
    finally:
        os._exit(status)


def command_down(args: argparse.Namespace) -> int:
    path = _path(args)
    _call(args, {"cmd": "down"})
    deadline = time.monotonic() + DOWN_WAIT_SECONDS
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    print("xenrr: host stopped; every domain destroyed", file=sys.stderr)
    return 0


def command_create(args: argparse.Namespace) -> int:
    try:
        text = read_config_text(args.config)
    except ConfigError as error:
        raise HostCommandError(str(error)) from None
    wire = control.encode_config(text, str(args.config), Path.cwd())
    request = {"cmd": "create", "config": wire}
    if args.record is not None:
        request["record"] = str(args.record.absolute())
    created = _call(args, request)
    print(f"xenrr: created domain {created['name']} (domid {created['domid']}) on pCPU {created['pcpu']}",
          file=sys.stderr)
    return 0


def command_list(args: argparse.Namespace) -> int:
    domains = _call(args, {"cmd": "list"})["domains"]
    if args.json:
        print(json.dumps(domains, indent=1))
        return 0
    print(f"{'Name':<20} {'ID':>4} {'Mem':>5} {'VCPUs':>5} {'State':<9} {'pCPU':>4} {'Affinity':<9} "
          f"{'Weight':>6} {'Cap':>4} {'Instructions':>14}")
    for domain in domains:
        print(f"{domain['name']:<20} {domain['domid']:>4} {domain['memory']:>5} {domain['vcpus']:>5} "
              f"{domain['state']:<9} {domain['pcpu']:>4} {domain['pinning']:<9} {domain['weight']:>6} "
              f"{domain['cap']:>4} {domain['instructions']:>14}")
    return 0


def _simple(command: str):
    def run(args: argparse.Namespace) -> int:
        _call(args, {"cmd": command, "name": args.name})
        return 0
    return run


def _listed(args: argparse.Namespace, name: str | None) -> list[dict]:
    """The host's domains (`list`), or only the one named."""
    domains = _call(args, {"cmd": "list"})["domains"]
    if name is not None:
        domains = [domain for domain in domains if domain["name"] == name]
        if not domains:
            raise HostCommandError(f"no domain named {name!r} (see `xenrr list`)")
    return domains


def command_vcpu_list(args: argparse.Namespace) -> int:
    domains = _listed(args, args.name)
    print(f"{'Name':<20} {'ID':>4} {'VCPU':>4} {'CPU':>4} {'State':<9} {'Instructions':>14}  Affinity (Hard)")
    for domain in domains:
        print(f"{domain['name']:<20} {domain['domid']:>4} {0:>4} {domain['pcpu']:>4} {domain['state']:<9} "
              f"{domain['instructions']:>14}  {domain['pinning']}")
    return 0


def command_vcpu_pin(args: argparse.Namespace) -> int:
    vcpu: int | str = "all" if args.vcpu == "all" else _number(args.vcpu, "VCPU")
    try:
        cpus = parse_cpus(args.cpus)
    except ValueError as error:
        raise HostCommandError(f"CPUS: {error}") from None
    _call(args, {"cmd": "vcpu-pin", "name": args.name, "vcpu": vcpu,
                 "cpus": None if cpus is None else sorted(cpus)})
    return 0


def _number(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HostCommandError(f"{what} must be a number or all, not {text!r}") from None


def command_sched_credit(args: argparse.Namespace) -> int:
    if args.weight is not None or args.cap is not None:
        if args.domain is None:
            raise HostCommandError("-w/-c need -d NAME (the domain to change)")
        _call(args, {"cmd": "sched-credit", "name": args.domain, "weight": args.weight, "cap": args.cap})
        return 0
    domains = _listed(args, args.domain)
    print(f"{'Name':<20} {'ID':>4} {'Weight':>6} {'Cap':>4}")
    for domain in domains:
        print(f"{domain['name']:<20} {domain['domid']:>4} {domain['weight']:>6} {domain['cap']:>4}")
    return 0


def command_console(args: argparse.Namespace) -> int:
    """Attach: the domain's output to stdout, stdin to the guest, until Ctrl-] or the domain goes."""
    try:
        connection = control.connect(_path(args))
        control.send_request(connection, {"cmd": "console", "name": args.name})
    except ControlError as error:
        raise HostCommandError(str(error)) from None
    connection.settimeout(None)
    keys = TerminalInput(sys.stdin.fileno())
    how = "the domain is gone"
    try:
        while True:
            watched = [connection] + ([keys.fileno()] if keys.fileno() is not None else [])
            readable = select.select(watched, [], [])[0]
            if connection in readable:
                data = connection.recv(65536)
                if not data:
                    break
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            if keys.fileno() is not None and keys.fileno() in readable or keys.detached:
                typed = keys.take(0, 65536)
                if typed:
                    connection.sendall(typed)
                if keys.detached:
                    how = "detached"
                    _hang_up(connection)
                    break
    finally:
        keys.restore()
        connection.close()
    print(f"\nxenrr: console of {args.name}: {how}", file=sys.stderr)
    return 0


def _hang_up(connection) -> None:
    """Detach without losing the last keys: closing a Unix socket with output still unread would reset
    the connection and the host could lose what was typed, so say we are done and read to its end."""
    connection.shutdown(socket.SHUT_WR)
    connection.settimeout(DOWN_WAIT_SECONDS)
    try:
        while connection.recv(65536):
            pass
    except OSError:
        pass


def record_running_domain(name: str, log: Path, socket_path: Path | None) -> int:
    """`xenrr record NAME -o LOG`, NAME a domain of the running host: it is recorded from its current
    instruction count (the log carries its state then) until it shuts down or is destroyed - the exit
    status as `xenrr record` gives it - or until Ctrl-C, which stops the recording while the domain runs
    on (exit 130). The host stops the recording whenever this command's connection closes."""
    path = socket_path or control.default_socket_path()
    if log.exists():
        raise HostCommandError(f"{log} already exists (a recording is never replaced: give another -o)")
    try:
        connection = control.connect(path)
    except ControlError:
        raise HostCommandError(f"cannot read guest kernel {name}: no such file, and no host is running at {path} "
                               "to record a domain of that name") from None
    interrupted = False
    try:
        try:
            started = control.send_request(connection, {"cmd": "record", "name": name, "log": str(log.absolute())})
        except ControlError as error:
            raise HostCommandError(f"cannot record {name}: {error}") from None
        print(f"xenrr: recording {name} from instruction {started['icount']} into {log} (Ctrl-C stops the "
              "recording; the domain runs on)", file=sys.stderr, flush=True)
        connection.settimeout(None)
        reply = bytearray()
        while not reply.endswith(b"\n"):
            try:
                data = connection.recv(65536)
            except KeyboardInterrupt:
                interrupted = True
                connection.shutdown(socket.SHUT_WR)       # the host stops the recording and answers
                continue
            if not data:
                break
            reply += data
    finally:
        connection.close()
    if not reply.endswith(b"\n"):
        raise HostCommandError(f"the host went away while recording {name}; {log} is valid up to its last "
                               "complete block")
    return _recorded(name, json.loads(reply)["recorded"], interrupted)


def _recorded(name: str, summary: dict, interrupted: bool) -> int:
    """Say how a running domain's recording ended; the exit status."""
    outcome = summary["outcome"] or ""
    reason, _, detail = outcome.partition(":")
    logged = (f"{summary['records']} records logged to {summary['log']} (instructions {summary['from_icount']} "
              f"to {summary['to_icount']})")
    if summary["failure"] is not None:
        print(f"xenrr: error: recording of {name} stopped: {summary['failure']}", file=sys.stderr)
        return 4
    texts = {"shutdown": f"domain {name} shut down ({detail})", "crashed": f"domain {name} crashed: {detail}",
             "destroyed": f"domain {name} destroyed", "recording-stopped": f"recording stopped; {name} runs on"}
    print(f"xenrr: {texts.get(reason, outcome)}; {logged}", file=sys.stderr)
    if interrupted:
        return 130
    if reason == "crashed" or (reason == "shutdown" and detail == "crash"):
        return 1
    return 0 if reason == "shutdown" else 3


HOST_COMMANDS = {"up": command_up, "down": command_down, "create": command_create, "list": command_list,
                 "console": command_console, "shutdown": _simple("shutdown"), "destroy": _simple("destroy"),
                 "pause": _simple("pause"), "unpause": _simple("unpause"), "vcpu-list": command_vcpu_list,
                 "vcpu-pin": command_vcpu_pin, "sched-credit": command_sched_credit}
