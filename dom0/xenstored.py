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
guest notifies the store port and writes back what `take_output` returns.

On a host of several domains each domain's xenstored is that domain's *replica* of the host's one
store: it answers the domain's own requests at once, hands every change they commit (one request, or
a transaction at its commit) to `changes_out` for the other replicas, and applies theirs with
`apply_change` (a funnel input). Invariant: the state changes only through a guest request
(deterministic), `write`/`remove`/`mkdir` (dom0's writes: funnel inputs, recorded, or the toolstack's
before the first instruction) or `apply_change` (a funnel input, recorded), and
`save_state`/`load_state`/`state_bytes` cover all of it - tree, watches, transactions and bytes in flight.
"""
from __future__ import annotations

import copy
import struct
from dataclasses import dataclass, field
from typing import Callable

from xen import abi
from xen.domain import deep_copy
from xen.xenstore import XenstoreChange, XenstoreOp, XenstoreProtocolError

DOM0 = 0
_HEADER = struct.Struct("<IIII")
_PATH_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@")
_PERM_BITS = {"n": 0, "r": 1, "w": 2, "b": 3}
READ, WRITE = 1, 2
# C xenstored's default quotas (xenstored -h): per-transaction, per-domain limits for unprivileged domains.
MAX_TRANSACTIONS = 10
# Changes one transaction may hold until its commit: past them a change is refused with ENOSPC, the errno C
# xenstored gives past its per-transaction quota (quota_trans_nodes, 1024 nodes). C xenstored counts the
# nodes a transaction touched; xenrr counts its changes, which it keeps to send on to the other replicas at
# commit - so a transaction that writes one node 1,025 times is refused here and not there.
MAX_TRANSACTION_CHANGES = 1024
MAX_WATCHES = 128
MAX_ENTRY_BYTES = 2048
MAX_NODES = 1000
# Watch events waiting for room on the guest's ring beyond this are dropped, as C xenstored drops an event that
# would take a guest past its memory quota (XSA-326): another domain's flood of changes cannot grow them forever.
MAX_QUEUED_OUTPUT = 256 * 1024
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
    events: list[tuple[str, bool, tuple[str, ...]]] = field(default_factory=list)   # fired at commit
    ops: list[XenstoreOp] = field(default_factory=list)                  # sent on to the other replicas at commit


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
        self.changes_out: Callable[[XenstoreChange], None] | None = None   # the host: to the other replicas

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

    def backlog(self) -> int:
        return len(self._output)

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
        transactions = [(number, nodes(t.nodes), sorted(t.seen.items()), sorted(t.modified), t.events, t.ops)
                        for number, t in sorted(self._transactions.items())]
        return repr((nodes(self._nodes), self._generation, [(w.path, w.token) for w in self._watches],
                     transactions, self._next_transaction, bytes(self._input), bytes(self._output))).encode()

    # ------------------------------------------------------------------ dom0's own access (the toolstack)
    def write(self, path: str, value: bytes) -> None:
        """Write as dom0 (outside any transaction); fires the guest's watches and dom0's."""
        op = XenstoreOp("write", self._canonical(path, DOM0), value)
        self._apply(self._nodes, None, DOM0, op)
        self._commit(None, DOM0, op)
        self._deliver_dom0_events()

    def remove(self, path: str) -> None:
        """Remove `path` and everything below it as dom0 (nothing if it is missing)."""
        op = XenstoreOp("rm", self._canonical(path, DOM0))
        if self._apply(self._nodes, None, DOM0, op):
            self._commit(None, DOM0, op)
        self._deliver_dom0_events()

    def apply_change(self, change: XenstoreChange) -> None:
        """Another domain's (or dom0's) committed change to the host's one store, applied to this replica
        as that domain made it - its permissions checked here again, its new nodes owned by it - and not
        sent on. Our guest's watches fire for what it may read, once per change as for a transaction's
        commit; dom0's watches fire. An op the replica no longer allows (the node changed here in the
        meantime: two domains changed it at once) is skipped, as the writer would have been refused."""
        applied = Transaction(self._nodes)          # the live store, only to gather the events
        for op in change.ops:
            try:
                self._apply(self._nodes, applied, change.domid, op)
            except XenstoreError:
                continue
        self._fire_once(applied.events)
        self._deliver_dom0_events()

    def snapshot(self) -> XenstoreChange:
        """The whole tree as dom0 would write it afresh: each node, parents first and children in creation
        order, written with its value and given its permissions - what a new domain's replica starts from."""
        ops: list[XenstoreOp] = []
        for path, node in self._walk():
            ops.append(XenstoreOp("write", path, node.value))
            ops.append(XenstoreOp("set-perms", path, _perms_bytes(node.perms)))
        return XenstoreChange(DOM0, tuple(ops))

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
        ops = [XenstoreOp("mkdir", absolute)] + ([] if perms is None else [XenstoreOp("set-perms", absolute,
                                                                                      _perms_bytes(perms))])
        for op in ops:
            if self._apply(self._nodes, None, DOM0, op):
                self._commit(None, DOM0, op)
        self._deliver_dom0_events()

    def read(self, path: str) -> bytes | None:
        node = self._nodes.get(self._canonical(path, DOM0))
        return None if node is None else node.value

    def children(self, path: str) -> list[str]:
        """The names of `path`'s children in creation order (none when it is missing)."""
        node = self._nodes.get(self._canonical(path, DOM0))
        return [] if node is None else list(node.children)

    def listing(self) -> list[tuple[int, str, bytes, Perms]]:
        """The whole tree depth first, children in creation order: (depth, name, value, perms)."""
        return [(path.count("/") - 1, _name(path), node.value, node.perms) for path, node in self._walk()]

    def _walk(self) -> list[tuple[str, Node]]:
        """Every node but the root, depth first, children in creation order."""
        rows: list[tuple[str, Node]] = []

        def visit(path: str) -> None:
            for child in self._nodes[path].children:
                child_path = _join(path, child)
                rows.append((child_path, self._nodes[child_path]))
                visit(child_path)
        visit("/")
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
            return self._end_transaction(tx_id, _one_arg(payload), caller), []
        nodes = self._nodes if transaction is None else transaction.nodes
        if kind in (abi.XS_READ, abi.XS_DIRECTORY, abi.XS_GET_PERMS):
            node = self._lookup(nodes, transaction, caller, self._canonical(_one_arg(payload), caller), READ)
            if kind == abi.XS_READ:
                return node.value, []
            if kind == abi.XS_DIRECTORY:
                return b"".join(child.encode() + b"\0" for child in node.children), []
            return _perms_bytes(node.perms), []
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
            op = XenstoreOp("write", self._canonical(path.decode("latin-1"), caller), value)
        elif kind == abi.XS_MKDIR:
            op = XenstoreOp("mkdir", self._canonical(_one_arg(payload), caller))
        elif kind == abi.XS_RM:
            op = XenstoreOp("rm", self._canonical(_one_arg(payload), caller))
        elif kind == abi.XS_SET_PERMS:
            path, *texts = _strings(payload)
            if not texts:
                raise XenstoreError("EINVAL")
            perms = tuple(_parse_perm(text) for text in texts)
            op = XenstoreOp("set-perms", self._canonical(path, caller), _perms_bytes(perms))
        else:
            raise XenstoreError("ENOSYS")
        if transaction is not None and caller != DOM0 and len(transaction.ops) >= MAX_TRANSACTION_CHANGES:
            raise XenstoreError("ENOSPC")
        if self._apply(nodes, transaction, caller, op):
            self._commit(transaction, caller, op)
        return b"OK\0", []

    def _apply(self, nodes: dict[str, Node], transaction: Transaction | None, caller: int, op: XenstoreOp) -> bool:
        """Make one change as `caller` (permissions checked: XenstoreError); whether anything changed
        (mkdir of a node that exists and rm of one that does not change nothing)."""
        if op.op == "write":
            self._write(nodes, transaction, caller, op.path, op.data)
        elif op.op == "mkdir":
            if op.path in nodes:
                self._lookup(nodes, transaction, caller, op.path, WRITE)
                return False
            self._create(nodes, transaction, caller, op.path, b"")
        elif op.op == "rm":
            return self._remove(nodes, transaction, caller, op.path)
        else:
            texts = op.data.decode("latin-1").split("\0")[:-1]
            self._set_perms(nodes, transaction, caller, op.path, tuple(_parse_perm(text) for text in texts))
        return True

    def _commit(self, transaction: Transaction | None, caller: int, op: XenstoreOp) -> None:
        """A change made: for the other replicas now, or at the transaction's commit."""
        if transaction is not None:
            transaction.ops.append(op)
        elif self.changes_out is not None:
            self.changes_out(XenstoreChange(caller, (op,)))

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

    def _readable(self, path: str, node: Node) -> tuple[str, ...]:
        """(path,) if our guest may read `node` at `path`, else ()."""
        return (path,) if self._allowed(self.domid, node, READ) else ()

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

    def _event(self, transaction: Transaction | None, path: str, removal: bool, readable: tuple[str, ...]) -> None:
        """A change at `path` (`removal`: of it and everything below); `readable`: the changed nodes our
        guest may read (as they were before a removal)."""
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
        self._event(transaction, path, False, self._readable(path, node))

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
        self._event(transaction, path, False, self._readable(path, nodes[path]))

    def _remove(self, nodes: dict[str, Node], transaction: Transaction | None, caller: int, path: str) -> bool:
        if path == "/":
            raise XenstoreError("EINVAL")
        self._touch(nodes, transaction, path)
        if path not in nodes:
            # Not an error when the parent exists (docs/misc/xenstore.txt); the parent's error otherwise.
            self._lookup(nodes, transaction, caller, _parent(path), READ)
            return False
        self._lookup(nodes, transaction, caller, path, WRITE)
        doomed = [path]
        for doomed_path in doomed:
            doomed.extend(_join(doomed_path, child) for child in nodes[doomed_path].children)
        readable = tuple(doomed_path for doomed_path in doomed if self._allowed(self.domid, nodes[doomed_path], READ))
        for doomed_path in doomed:
            self._touch(nodes, transaction, doomed_path)
            del nodes[doomed_path]
            self._changed(nodes, transaction, doomed_path)
        parent_path = _parent(path)
        nodes[parent_path].children.remove(_name(path))
        self._changed(nodes, transaction, parent_path)
        self._event(transaction, path, True, readable)
        return True

    def _set_perms(self, nodes: dict[str, Node], transaction: Transaction | None, caller: int, path: str,
                   perms: Perms) -> None:
        node = self._lookup(nodes, transaction, caller, path, WRITE)
        if caller != DOM0 and perms[0][1] != node.perms[0][1]:
            raise XenstoreError("EPERM")          # unprivileged domains may not give a node away
        node.perms = perms
        self._changed(nodes, transaction, path)
        self._event(transaction, path, False, self._readable(path, node))

    def _end_transaction(self, tx_id: int, verdict: str, caller: int) -> bytes:
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
        self._fire_once(transaction.events)
        if transaction.ops and self.changes_out is not None:
            self.changes_out(XenstoreChange(caller, tuple(transaction.ops)))
        return b"OK\0"

    def _fire_once(self, events: list[tuple[str, bool, tuple[str, ...]]]) -> None:
        for path, removal, readable in dict.fromkeys(events):       # once per change, in order
            self._fire(path, removal, readable)

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

    def _fire(self, path: str, removal: bool, readable: tuple[str, ...]) -> None:
        """Queue the events of a change at `path` (a recursive removal if `removal`) for matching watches:
        dom0's always; the guest's if it may read the node changed - for a watch on a node a removal took
        away with an ancestor, that node, as C xenstored fires each removed node's watches with its own
        permissions."""
        for target, callback in self._dom0_watches:
            event_path = _watch_event_path(target, path, removal)
            if event_path is not None:
                self._dom0_events.append((callback, event_path))
        for watch in self._watches:
            event_path = _watch_event_path(watch.absolute, path, removal)
            if event_path is not None and (path in readable or event_path in readable) \
                    and len(self._output) < MAX_QUEUED_OUTPUT:
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


def _perms_bytes(perms: Perms) -> bytes:
    """Permissions as XS_SET_PERMS carries them: each "<letter><domid>" ending in a nul."""
    return b"".join(f"{letter}{domid}\0".encode() for letter, domid in perms)


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
