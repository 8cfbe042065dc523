"""The host's control socket: where it is, and the JSON-lines protocol spoken on it.

Owns the socket path and the wire form of requests. The socket is a Unix stream socket (mode 0600) at
`--socket PATH`, else $XENRR_SOCKET, else $XDG_RUNTIME_DIR/xenrr/control.sock, else
/tmp/xenrr-UID/control.sock. A client sends one JSON object per line, `{"cmd": NAME, ...}`, and gets one
JSON object per line back: `{"ok": true, ...}` or `{"ok": false, "error": "one line"}`. After a
successful `console` request the connection carries raw bytes instead: the domain's console output
to the client, keys from the client to the guest; closing it detaches.
Invariant: every reply is a single line, and a request that fails changes nothing on the host.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from dom0.launch import user_runtime_directory
from host.xlcfg import ConfigError, DomainConfig, parse_config

CONSOLE_HISTORY_BYTES = 64 * 1024          # console output a newly attached console is shown first
CONNECT_TIMEOUT_SECONDS = 600.0            # a create builds the domain before answering


class ControlError(Exception):
    """A request the host refused, or no host to ask: one line."""


def default_socket_path() -> Path:
    if os.environ.get("XENRR_SOCKET"):
        return Path(os.environ["XENRR_SOCKET"])
    return Path(user_runtime_directory()) / "control.sock"


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(CONNECT_TIMEOUT_SECONDS)
    try:
        client.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        raise ControlError(f"no host is running at {path} (start one with `xenrr up`)") from None
    except OSError as error:
        client.close()
        raise ControlError(f"cannot reach the host at {path}: {error.strerror}") from None
    return client


def send_request(client: socket.socket, request: dict) -> dict:
    """Send one request on an open connection and read its reply line (nothing beyond it)."""
    client.sendall(json.dumps(request).encode() + b"\n")
    reply = bytearray()
    while not reply.endswith(b"\n"):
        byte = client.recv(1)
        if not byte:
            raise ControlError("the host closed the connection without answering")
        reply += byte
    answer = json.loads(reply)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "the host refused the request"))
    return answer


def call(path: Path, request: dict) -> dict:
    """One request on a fresh connection."""
    with connect(path) as client:
        return send_request(client, request)


def encode_config(text: str, source: str, base: Path) -> dict:
    """A config file as a create request carries it: the host parses it (xl's grammar) itself."""
    return {"text": text, "source": source, "base": str(base)}


def decode_config(wire: object) -> DomainConfig:
    if not isinstance(wire, dict) or not all(isinstance(wire.get(key), str) for key in ("text", "source", "base")):
        raise ControlError("create wants a config: {\"text\": ..., \"source\": ..., \"base\": ...}")
    try:
        return parse_config(wire["text"], wire["source"], Path(wire["base"]))
    except ConfigError as error:
        raise ControlError(str(error)) from None
