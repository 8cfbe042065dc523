"""xenstored for the domain: the store, permissions, watches, transactions, and the xs_wire protocol.

Owns the xenstore database and the guest's connection to it, as docs/misc/xenstore.txt and
io/xs_wire.h specify and C xenstored behaves: messages are a struct xsd_sockmsg header and a payload;
errors are XS_ERROR replies carrying the errno's name ("ENOENT"); paths are absolute or relative to
/local/domain/<domid>; every node has a permission list whose first entry names its owner and the
access of domains not listed (dom0 may do anything); a node an unprivileged domain creates is owned
by it and otherwise inherits its parent's permissions; watches fire for changes at or below their
path (a recursive removal also fires the watches below the removed node, with the watch's path),
once when registered, and only for nodes the watcher may read; transactions work on a copy of the
store and fail with EAGAIN at commit when a node they read or wrote changed in between.

Implements xen.xenstore.XenstoreServer: the hypervisor hands it the guest's request bytes when the
guest notifies the store port and writes back what `take_output` returns. Invariant: the state
changes only through a guest request (deterministic) or `write` (a dom0 write: a funnel input, recorded), and
`save_state`/`load_state`/`state_bytes` cover all of it - tree, watches, transactions and bytes in flight.
"""
from __future__ import annotations

import copy
import struct
from dataclasses import dataclass, field
from typing import Callable

from xen import abi
from xen.domain import deep_copy
from xen.xenstore import XenstoreProtocolError

DOM0 = 0
_HEADER = struct.Struct("<IIII")
_PATH_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@")
_PERM_BITS = {"n": 0, "r": 1, "w": 2, "b": 3}
READ, WRITE = 1, 2
# C xenstored's default quotas (xenstored -h): per-transaction, per-domain limits for unprivileged domains.
MAX_TRANSACTIONS = 10
MAX_WATCHES = 128
MAX_ENTRY_BYTES = 2048
MAX_NODES = 1000
# Types a client may send that have no operation (replies and events, XS_RESTRICT's removed number 20,
# anything from XS_TYPE_COUNT on): C xenstored answers ENOSYS ("Client unknown operation").
_NO_OPERATION = (abi.XS_WATCH_EVENT, abi.XS_ERROR, abi.XS_SET_TARGET + 1)
_PRIVILEGED_ONLY = (abi.XS_CONTROL, abi.XS_INTRODUCE, abi.XS_RELEASE, abi.XS_IS_DOMAIN_INTRODUCED,
                    abi.XS_RESUME, abi.XS_SET_TARGET)


class XenstoreError(Exception):
    """Ends a request with an XS_ERROR reply; `name` is one of io/xs_wire.h's xsd_errors."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


Perms = tuple[tuple[str, int], ...]      # ((letter, domid), ...): the first entry is the owner's


@dataclass
class Node:
    value: bytes
    perms: Perms
    children: list[str] = field(default_factory=list)
    generation: int = 0


@dataclass
class Watch:
    path: str            # as the guest gave it (relative, absolute or @special)
    token: str
    absolute: str        # the path it matches against


@dataclass
class Transaction:
    nodes: dict[str, Node]                 # the store as it was at TRANSACTION_START, then changed
    seen: dict[str, int | None] = field(default_factory=dict)   # path -> generation at first access
    modified: set[str] = field(default_factory=set)
    events: list[tuple[str, bool, bool]] = field(default_factory=list)   # fired at commit


def is_valid_path(path: str) -> bool:
    """An absolute path xenstored accepts (docs/misc/xenstore.txt: characters, length, slashes)."""
    return path.startswith("/") and len(path) <= abi.XENSTORE_ABS_PATH_MAX and "//" not in path \
        and (path == "/" or not path.endswith("/")) and set(path) <= _PATH_CHARACTERS


def format_perms(perms: Perms) -> str:
    return ",".join(f"{letter}{domid}" for letter, domid in perms)


class Xenstored:
    """The store and one guest domain's connection to it."""

    def __init__(self, domid: int):
        self.domid = domid
        self.domain_path = f"/local/domain/{domid}"
        self._nodes: dict[str, Node] = {"/": Node(b"", (("n", DOM0),))}
        self._generation = 0
        self._watches: list[Watch] = []
        self._transactions: dict[int, Transaction] = {}
        self._next_transaction = 1
        self._input = bytearray()
        self._output = bytearray()
        self._dom0_watches: list[tuple[str, Callable[[str], None]]] = []    # a backend's: configuration
        self._dom0_events: list[tuple[Callable[[str], None], str]] = []    # queued while a request runs
        self._delivering = False

    # ------------------------------------------------------------------ XenstoreServer
    def receive(self, data: bytes) -> None:
        self._input += data
        while len(self._input) >= _HEADER.size:
            kind, req_id, tx_id, length = _HEADER.unpack_from(self._input)
            if length > abi.XENSTORE_PAYLOAD_MAX:
                raise XenstoreProtocolError(f"xenstore request of {length} bytes (limit {abi.XENSTORE_PAYLOAD_MAX})")
            if len(self._input) < _HEADER.size + length:
                return
            payload = bytes(self._input[_HEADER.size:_HEADER.size + length])
            del self._input[:_HEADER.size + length]
            self._request(kind, req_id, tx_id, payload)
            self._deliver_dom0_events()

    def take_output(self, limit: int) -> bytes:
        data = bytes(self._output[:limit])
        del self._output[:limit]
        return data

    def save_state(self) -> object:
        return deep_copy((self._nodes, self._generation, self._watches, self._transactions,
                          self._next_transaction, bytes(self._input), bytes(self._output)))

    def load_state(self, state: object) -> None:
        (self._nodes, self._generation, self._watches, self._transactions, self._next_transaction,
         inbound, outbound) = deep_copy(state)
        self._input, self._output = bytearray(inbound), bytearray(outbound)

    def state_bytes(self) -> bytes:
        def nodes(table: dict[str, Node]) -> list:
            return [(path, n.value, n.perms, n.children, n.generation) for path, n in sorted(table.items())]
        transactions = [(number, nodes(t.nodes), sorted(t.seen.items()), sorted(t.modified), t.events)
                        for number, t in sorted(self._transactions.items())]
        return repr((nodes(self._nodes), self._generation, [(w.path, w.token) for w in self._watches],
                     transactions, self._next_transaction, bytes(self._input), bytes(self._output))).encode()

    # ------------------------------------------------------------------ dom0's own access (the toolstack)
    def write(self, path: str, value: bytes) -> None:
        """Write as dom0 (outside any transaction); fires the guest's watches and dom0's."""
        self._write(self._nodes, None, DOM0, self._canonical(path, DOM0), value)
        self._deliver_dom0_events()

    def watch_dom0(self, path: str, callback: Callable[[str], None]) -> None:
        """A dom0 backend's watch: `callback(changed path)` runs for every change at or below the absolute
        `path` once the request that made it has been answered (a backend is a separate client of
        xenstored: it sees the change after the writer's reply), in order, never re-entered.
        Like a guest's watch it fires once when registered."""
        self._dom0_watches.append((path, callback))
        self._dom0_events.append((callback, path))
        self._deliver_dom0_events()

    def _deliver_dom0_events(self) -> None:
        if self._delivering:
            return              # a callback's own writes: their events run after it, from the loop below
        self._delivering = True
        try:
            while self._dom0_events:
                callback, path = self._dom0_events.pop(0)
                callback(path)
        finally:
            self._delivering = False

    def mkdir(self, path: str, perms: Perms | None = None) -> None:
        """Create `path` as dom0 if missing, then (if given) set its permissions."""
        absolute = self._canonical(path, DOM0)
        if absolute not in self._nodes:
            self._create(self._nodes, None, DOM0, absolute, b"")
        if perms is not None:
            self._set_perms(self._nodes, None, DOM0, absolute, perms)
        self._deliver_dom0_events()

    def read(self, path: str) -> bytes | None:
        node = self._nodes.get(self._canonical(path, DOM0))
        return None if node is None else node.value

    def listing(self) -> list[tuple[int, str, bytes, Perms]]:
        """The whole tree depth first, children in creation order: (depth, name, value, perms)."""
        rows: list[tuple[int, str, bytes, Perms]] = []

        def visit(path: str, depth: int) -> None:
            for child in self._nodes[path].children:
                child_path = _join(path, child)
                node = self._nodes[child_path]
                rows.append((depth, child, node.value, node.perms))
                visit(child_path, depth + 1)
        visit("/", 0)
        return rows

    # ------------------------------------------------------------------ requests
    def _request(self, kind: int, req_id: int, tx_id: int, payload: bytes) -> None:
        try:
            reply, after = self._dispatch(kind, tx_id, payload)
        except XenstoreError as error:
            self._send(abi.XS_ERROR, req_id, tx_id, error.name.encode() + b"\0")
            return
        if len(reply) > abi.XENSTORE_PAYLOAD_MAX:
            self._send(abi.XS_ERROR, req_id, tx_id, b"E2BIG\0")
            return
        self._send(kind, req_id, tx_id, reply)
        for event in after:
            self._send(abi.XS_WATCH_EVENT, 0, 0, event)

    def _send(self, kind: int, req_id: int, tx_id: int, payload: bytes) -> None:
        self._output += _HEADER.pack(kind, req_id, tx_id, len(payload)) + payload

    def _dispatch(self, kind: int, tx_id: int, payload: bytes) -> tuple[bytes, list[bytes]]:
        caller = self.domid
        if kind in _NO_OPERATION or kind >= abi.XS_TYPE_COUNT:
            raise XenstoreError("ENOSYS")
        if kind in _PRIVILEGED_ONLY:
            raise XenstoreError("EACCES")
        if kind == abi.XS_WATCH:
            return self._watch(payload)
        if kind == abi.XS_UNWATCH:
            return self._unwatch(payload), []
        if kind == abi.XS_RESET_WATCHES:
            self._watches.clear()
            self._transactions.clear()
            return b"OK\0", []
        if kind == abi.XS_GET_DOMAIN_PATH:
            digits = _one_arg(payload)
            number = int(digits[:len(digits) - len(digits.lstrip("0123456789"))] or "0")   # atoi(), as xenstored
            return f"/local/domain/{number}\0".encode(), []
        if kind == abi.XS_TRANSACTION_START:
            if tx_id != 0:
                raise XenstoreError("EBUSY")
            if len(self._transactions) >= MAX_TRANSACTIONS:
                raise XenstoreError("ENOSPC")
            number = self._next_transaction
            while number == 0 or number in self._transactions:
                number = (number + 1) & 0xFFFFFFFF
            self._next_transaction = (number + 1) & 0xFFFFFFFF
            self._transactions[number] = Transaction(copy.deepcopy(self._nodes))
            return f"{number}\0".encode(), []
        transaction = None
        if tx_id != 0:
            transaction = self._transactions.get(tx_id)
            if transaction is None:
                raise XenstoreError("ENOENT")
        if kind == abi.XS_TRANSACTION_END:
            if transaction is None:
                raise XenstoreError("ENOENT")
            return self._end_transaction(tx_id, _one_arg(payload)), []
        nodes = self._nodes if transaction is None else transaction.nodes
        if kind in (abi.XS_READ, abi.XS_DIRECTORY, abi.XS_GET_PERMS):
            node = self._lookup(nodes, transaction, caller, self._canonical(_one_arg(payload), caller), READ)
            if kind == abi.XS_READ:
                return node.value, []
            if kind == abi.XS_DIRECTORY:
                return b"".join(child.encode() + b"\0" for child in node.children), []
            return b"".join(f"{letter}{domid}\0".encode() for letter, domid in node.perms), []
        if kind == abi.XS_DIRECTORY_PART:
            path, offset_text = _args(payload, 2)
            node = self._lookup(nodes, transaction, caller, self._canonical(path, caller), READ)
            if not offset_text.isdigit():
                raise XenstoreError("EINVAL")
            return _directory_part(node, int(offset_text)), []
        if kind == abi.XS_WRITE:
            path, separator, value = payload.partition(b"\0")
            if not separator:
                raise XenstoreError("EINVAL")
            if len(value) > MAX_ENTRY_BYTES:
                raise XenstoreError("ENOSPC")
            self._write(nodes, transaction, caller, self._canonical(path.decode("latin-1"), caller), value)
            return b"OK\0", []
        if kind == abi.XS_MKDIR:
            absolute = self._canonical(_one_arg(payload), caller)
            if absolute in nodes:
                self._lookup(nodes, transaction, caller, absolute, WRITE)
            else:
                self._create(nodes, transaction, caller, absolute, b"")
            return b"OK\0", []
        if kind == abi.XS_RM:
            self._remove(nodes, transaction, caller, self._canonical(_one_arg(payload), caller))
            return b"OK\0", []
        if kind == abi.XS_SET_PERMS:
            path, *texts = _strings(payload)
            if not texts:
                raise XenstoreError("EINVAL")
            absolute = self._canonical(path, caller)
            self._set_perms(nodes, transaction, caller, absolute, tuple(_parse_perm(text) for text in texts))
            return b"OK\0", []
        raise XenstoreError("ENOSYS")

    # ------------------------------------------------------------------ paths and permissions
    def _canonical(self, path: str, caller: int) -> str:
        if not path:
            raise XenstoreError("EINVAL")
        if not path.startswith("/"):
            if len(path) > abi.XENSTORE_REL_PATH_MAX:
                raise XenstoreError("EINVAL")
            path = f"/local/domain/{caller}/{path}"
        if not is_valid_path(path):
            raise XenstoreError("EINVAL")
        return path

    def _relative(self, watch: Watch, path: str) -> str:
        """An event path as the watcher sees it: relative iff the watch was registered relative."""
        if watch.path.startswith(("/", "@")):
            return path
        return path[len(self.domain_path) + 1:] if path.startswith(self.domain_path + "/") else path

    @staticmethod
    def _allowed(caller: int, node: Node, want: int) -> bool:
        if caller == DOM0 or node.perms[0][1] == caller:
            return True
        letter = next((letter for letter, domid in node.perms[1:] if domid == caller), node.perms[0][0])
        return _PERM_BITS[letter] & want == want

    def _touch(self, nodes: dict[str, Node], transaction: Transaction | None, path: str) -> None:
        """Note a transaction's first access to `path` (with the generation it had: conflict detection)."""
        if transaction is not None and path not in transaction.seen:
            node = nodes.get(path)
            transaction.seen[path] = None if node is None else node.generation

    def _lookup(self, nodes: dict[str, Node], transaction: Transaction | None, caller: int, path: str,
                want: int) -> Node:
        self._touch(nodes, transaction, path)
        node = nodes.get(path)
        if node is None:
            ancestor = _parent(path)
            while ancestor not in nodes:
                ancestor = _parent(ancestor)
            # As xenstored: a missing node under a parent the caller may not read is EACCES, not ENOENT.
            raise XenstoreError("ENOENT" if self._allowed(caller, nodes[ancestor], READ) else "EACCES")
        if not self._allowed(caller, node, want):
            raise XenstoreError("EACCES")
        return node

    # ------------------------------------------------------------------ changes
    def _changed(self, nodes: dict[str, Node], transaction: Transaction | None, path: str) -> None:
        self._touch(nodes, transaction, path)
        self._generation += 1
        if path in nodes:
            nodes[path].generation = self._generation
        if transaction is not None:
            transaction.modified.add(path)

    def _event(self, transaction: Transaction | None, path: str, removal: bool, readable: bool) -> None:
        if transaction is not None:
            transaction.events.append((path, removal, readable))
        else:
            self._fire(path, removal, readable)

    def _write(self, nodes: dict[str, Node], transaction: Transaction | None, caller: int, path: str,
               value: bytes) -> None:
        if path not in nodes:
            self._create(nodes, transaction, caller, path, value)
            return
        node = self._lookup(nodes, transaction, caller, path, WRITE)
        node.value = value
        self._changed(nodes, transaction, path)
        self._event(transaction, path, False, self._allowed(self.domid, node, READ))

    def _create(self, nodes: dict[str, Node], transaction: Transaction | None, caller: int, path: str,
                value: bytes) -> None:
        missing = [path]
        while _parent(missing[-1]) not in nodes:
            missing.append(_parent(missing[-1]))
        for new_path in missing:
            self._touch(nodes, transaction, new_path)
        parent_path = _parent(missing[-1])
        parent = self._lookup(nodes, transaction, caller, parent_path, WRITE)
        if caller != DOM0 and sum(n.perms[0][1] == caller for n in nodes.values()) + len(missing) > MAX_NODES:
            raise XenstoreError("ENOSPC")
        for new_path in reversed(missing):
            perms = parent.perms if caller == DOM0 else ((parent.perms[0][0], caller),) + parent.perms[1:]
            parent.children.append(_name(new_path))
            self._changed(nodes, transaction, parent_path)
            nodes[new_path] = parent = Node(value if new_path == path else b"", perms)
            self._changed(nodes, transaction, new_path)
            parent_path = new_path
        self._event(transaction, path, False, self._allowed(self.domid, nodes[path], READ))

    def _remove(self, nodes: dict[str, Node], transaction: Transaction | None, caller: int, path: str) -> None:
        if path == "/":
            raise XenstoreError("EINVAL")
        self._touch(nodes, transaction, path)
        if path not in nodes:
            # Not an error when the parent exists (docs/misc/xenstore.txt); the parent's error otherwise.
            self._lookup(nodes, transaction, caller, _parent(path), READ)
            return
        node = self._lookup(nodes, transaction, caller, path, WRITE)
        readable = self._allowed(self.domid, node, READ)
        doomed = [path]
        for doomed_path in doomed:
            doomed.extend(_join(doomed_path, child) for child in nodes[doomed_path].children)
        for doomed_path in doomed:
            self._touch(nodes, transaction, doomed_path)
            del nodes[doomed_path]
            self._changed(nodes, transaction, doomed_path)
        parent_path = _parent(path)
        nodes[parent_path].children.remove(_name(path))
        self._changed(nodes, transaction, parent_path)
        self._event(transaction, path, True, readable)

    def _set_perms(self, nodes: dict[str, Node], transaction: Transaction | None, caller: int, path: str,
                   perms: Perms) -> None:
        node = self._lookup(nodes, transaction, caller, path, WRITE)
        if caller != DOM0 and perms[0][1] != node.perms[0][1]:
            raise XenstoreError("EPERM")          # unprivileged domains may not give a node away
        node.perms = perms
        self._changed(nodes, transaction, path)
        self._event(transaction, path, False, self._allowed(self.domid, node, READ))

    def _end_transaction(self, tx_id: int, verdict: str) -> bytes:
        if verdict not in ("T", "F"):
            raise XenstoreError("EINVAL")
        transaction = self._transactions.pop(tx_id)
        if verdict == "F":
            return b"OK\0"
        for path, generation in transaction.seen.items():
            current = self._nodes.get(path)
            if (None if current is None else current.generation) != generation:
                raise XenstoreError("EAGAIN")
        for path in sorted(transaction.modified):
            if path in transaction.nodes:
                self._nodes[path] = copy.deepcopy(transaction.nodes[path])
                self._generation += 1
                self._nodes[path].generation = self._generation
            else:
                self._nodes.pop(path, None)
        for path, removal, readable in dict.fromkeys(transaction.events):       # once per change, in order
            self._fire(path, removal, readable)
        return b"OK\0"

    # ------------------------------------------------------------------ watches
    def _watch(self, payload: bytes) -> tuple[bytes, list[bytes]]:
        path, token = _args(payload, 2)
        absolute = path if path.startswith("@") else self._canonical(path, self.domid)
        if any(w.absolute == absolute and w.token == token for w in self._watches):
            raise XenstoreError("EEXIST")
        if len(self._watches) >= MAX_WATCHES:
            raise XenstoreError("E2BIG")
        self._watches.append(Watch(path, token, absolute))
        return b"OK\0", [_event_payload(path, token)]          # fired once straight away, after the reply

    def _unwatch(self, payload: bytes) -> bytes:
        path, token = _args(payload, 2)
        absolute = path if path.startswith("@") else self._canonical(path, self.domid)
        for index, watch in enumerate(self._watches):
            if watch.absolute == absolute and watch.token == token:
                del self._watches[index]
                return b"OK\0"
        raise XenstoreError("ENOENT")

    def _fire(self, path: str, removal: bool, readable: bool) -> None:
        """Queue the events of a change at `path` (a recursive removal if `removal`) for matching watches:
        the guest's if it may read the node, dom0's always."""
        for target, callback in self._dom0_watches:
            event_path = _watch_event_path(target, path, removal)
            if event_path is not None:
                self._dom0_events.append((callback, event_path))
        if not readable:
            return
        for watch in self._watches:
            event_path = _watch_event_path(watch.absolute, path, removal)
            if event_path is not None:
                self._send(abi.XS_WATCH_EVENT, 0, 0, _event_payload(self._relative(watch, event_path), watch.token))


def _watch_event_path(target: str, path: str, removal: bool) -> str | None:
    """The path a watch on `target` reports for a change at `path` (None: the watch does not fire): the
    changed path at or below the target; the target itself when a removal took it away with an ancestor."""
    if target.startswith("@"):
        return None
    if path == target or target == "/" or path.startswith(target + "/"):
        return path
    if removal and target.startswith(path + "/"):
        return target
    return None


# ---------------------------------------------------------------------- helpers
def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _join(path: str, child: str) -> str:
    return f"/{child}" if path == "/" else f"{path}/{child}"


def _strings(payload: bytes) -> list[str]:
    """The nul-terminated strings of a payload (it must end with a nul)."""
    if not payload.endswith(b"\0"):
        raise XenstoreError("EINVAL")
    return payload[:-1].decode("latin-1").split("\0")


def _one_arg(payload: bytes) -> str:
    strings = _strings(payload)
    if len(strings) != 1:
        raise XenstoreError("EINVAL")
    return strings[0]


def _args(payload: bytes, count: int) -> list[str]:
    strings = _strings(payload)
    if len(strings) < count:
        raise XenstoreError("EINVAL")
    return strings[:count]


def _parse_perm(text: str) -> tuple[str, int]:
    letter, digits = text[:1], text[1:]
    if letter not in _PERM_BITS or not digits.isdigit() or int(digits) > 0xFFFF:
        raise XenstoreError("EINVAL")
    return letter, int(digits)


def _event_payload(path: str, token: str) -> bytes:
    return f"{path}\0{token}\0".encode("latin-1")


def _directory_part(node: Node, offset: int) -> bytes:
    """XS_DIRECTORY_PART: the generation, then the children from byte `offset` of the full list; an
    extra nul ends the list when the rest fits."""
    listing = b"".join(child.encode() + b"\0" for child in node.children)
    if offset > len(listing):
        raise XenstoreError("EINVAL")
    head = f"{node.generation}\0".encode()
    room = abi.XENSTORE_PAYLOAD_MAX - len(head) - 1
    rest = listing[offset:]
    if len(rest) <= room:
        return head + rest + b"\0"
    cut = rest.rfind(b"\0", 0, room) + 1
    return head + rest[:cut]
