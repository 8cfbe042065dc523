"""The host's one xenstore as replicas (dom0/xenstored.py): each domain's xenstored answers its own
requests and hands what it commits to the others, which apply it as that domain made it. The rules
checked are docs/misc/xenstore.txt's and io/xs_wire.h's, as one C xenstored applies them to every
domain: a node another domain may read shows its value and fires its watches; one it may not read
stays hidden (EACCES, no event); a transaction's changes reach the others at its commit, all at once;
a new domain's replica starts from the store as it is."""
from __future__ import annotations

import struct

import pytest

from dom0.xenstored import MAX_QUEUED_OUTPUT, Xenstored
from xen import abi
from xen.logrecord import MAX_PAYLOAD
from xen.xenstore import XenstoreChange, XenstoreOp

HEADER = struct.Struct("<IIII")


class Replica:
    """One domain's xenstored, spoken to as its guest would (xsd_sockmsg requests), and what it committed."""

    def __init__(self, domid: int):
        self.store = Xenstored(domid)
        self.sent: list[XenstoreChange] = []
        self.store.changes_out = self.sent.append
        self.events: list[str] = []

    def request(self, kind: int, *args: str | bytes, tx: int = 0) -> str:
        payload = b"".join(arg if isinstance(arg, bytes) else arg.encode() + b"\0" for arg in args)
        self.store.receive(HEADER.pack(kind, 7, tx, len(payload)) + payload)
        reply = None
        data = self.store.take_output(1 << 20)
        while data:
            kind_out, _, _, length = HEADER.unpack_from(data)
            body = data[HEADER.size:HEADER.size + length]
            data = data[HEADER.size + length:]
            if kind_out == abi.XS_WATCH_EVENT:
                self.events.append(body.split(b"\0")[0].decode())
            else:
                reply = ("error " if kind_out == abi.XS_ERROR else "") + body.rstrip(b"\0").decode()
        return reply

    def watch_events(self) -> list[str]:
        self.request(abi.XS_DIRECTORY, "/")            # anything: collects the events queued meanwhile
        found, self.events = self.events, []
        return found


def share(source: Replica, *others: Replica) -> None:
    """What the host does with what `source` committed: to every other replica, in order, as record payloads."""
    for change in source.sent:
        for payload in change.to_payloads(MAX_PAYLOAD):
            for other in others:
                other.store.apply_change(XenstoreChange.from_bytes(payload))
    source.sent.clear()


def test_a_node_shared_with_perms_is_read_and_watched_by_the_other_domain_and_a_private_one_is_not():
    a, b = Replica(1), Replica(2)
    for replica in (a, b):                 # the toolstack's homes: the domain owns data/ (libxl's rwperm)
        for domid in (1, 2):
            replica.store.mkdir(f"/local/domain/{domid}", (("n", 0), ("r", domid)))
            replica.store.mkdir(f"/local/domain/{domid}/data", (("n", domid),))
        replica.sent.clear()
    assert b.request(abi.XS_WATCH, "/local/domain/1/data/shared", "t") == "OK"
    assert b.request(abi.XS_WATCH, "/local/domain/1/data/private", "t") == "OK"
    assert b.watch_events() == ["/local/domain/1/data/shared", "/local/domain/1/data/private"]    # on registration

    assert a.request(abi.XS_WRITE, b"data/shared\0hello") == "OK"
    assert a.request(abi.XS_SET_PERMS, "data/shared", "n1", "r2") == "OK"
    assert a.request(abi.XS_WRITE, b"data/private\0secret") == "OK"          # owned by a, nobody else may read
    assert [str(change) for change in a.sent] == [
        "d1 write /local/domain/1/data/shared = 'hello'", "d1 set-perms /local/domain/1/data/shared n1,r2",
        "d1 write /local/domain/1/data/private = 'secret'"]
    share(a, b)
    assert b.watch_events() == ["/local/domain/1/data/shared"]     # the set-perms: b could not read the write
    assert b.request(abi.XS_READ, "/local/domain/1/data/shared") == "hello"
    a.request(abi.XS_WRITE, b"data/shared\0world")
    share(a, b)
    assert b.watch_events() == ["/local/domain/1/data/shared"]
    assert b.request(abi.XS_READ, "/local/domain/1/data/shared") == "world"
    assert b.request(abi.XS_GET_PERMS, "/local/domain/1/data/shared") == "n1\x00r2"
    assert b.request(abi.XS_READ, "/local/domain/1/data/private") == "error EACCES"
    assert b.request(abi.XS_WRITE, b"/local/domain/1/data/shared\0mine") == "error EACCES"   # read-only for b
    assert b.sent == []                    # applied changes are not sent on again
    assert a.store.state_bytes() != b.store.state_bytes()     # each replica has its own watches...
    assert a.store.listing() == b.store.listing()             # ...and the same tree


def test_a_transaction_reaches_the_others_at_its_commit_and_its_events_fire_once():
    a, b = Replica(1), Replica(2)
    for replica in (a, b):
        replica.store.mkdir("/local/domain/1/data", (("n", 1), ("r", 2)))
        replica.sent.clear()
    b.request(abi.XS_WATCH, "/local/domain/1/data", "t")
    b.watch_events()
    tx = a.request(abi.XS_TRANSACTION_START, "")
    a.request(abi.XS_WRITE, b"data/x\x001", tx=int(tx))
    a.request(abi.XS_WRITE, b"data/x\x002", tx=int(tx))
    a.request(abi.XS_MKDIR, "data/dir", tx=int(tx))
    assert a.sent == []                                       # nothing before the commit
    assert a.request(abi.XS_TRANSACTION_END, "T", tx=int(tx)) == "OK"
    assert [str(change) for change in a.sent] == [
        "d1 write /local/domain/1/data/x = '1'; write /local/domain/1/data/x = '2'; mkdir /local/domain/1/data/dir"]
    share(a, b)
    assert b.watch_events() == ["/local/domain/1/data/x", "/local/domain/1/data/dir"]
    assert b.request(abi.XS_READ, "/local/domain/1/data/x") == "2"
    aborted = a.request(abi.XS_TRANSACTION_START, "")
    a.request(abi.XS_WRITE, b"data/y\x001", tx=int(aborted))
    a.request(abi.XS_TRANSACTION_END, "F", tx=int(aborted))
    assert a.sent == []


def test_an_open_transaction_of_the_receiver_fails_with_eagain_after_another_domain_changed_what_it_read():
    a, b = Replica(1), Replica(2)
    for replica in (a, b):
        replica.store.mkdir("/local/domain/1/data", (("n", 1), ("b", 2)))
        replica.store.write("/local/domain/1/data/counter", b"0")
        replica.sent.clear()
    tx = b.request(abi.XS_TRANSACTION_START, "")
    assert b.request(abi.XS_READ, "/local/domain/1/data/counter", tx=int(tx)) == "0"
    b.request(abi.XS_WRITE, b"/local/domain/1/data/counter\x001", tx=int(tx))
    a.request(abi.XS_WRITE, b"data/counter\x005")
    share(a, b)
    assert b.request(abi.XS_TRANSACTION_END, "T", tx=int(tx)) == "error EAGAIN"      # as C xenstored: retry
    assert b.request(abi.XS_READ, "/local/domain/1/data/counter") == "5"


def test_rm_and_the_toolstack_writes_replicate_and_a_new_replica_starts_from_a_snapshot():
    a, dom0 = Replica(1), Replica(0)
    a.store.mkdir("/local/domain/1", (("n", 0), ("r", 1)))
    a.store.mkdir("/local/domain/1/data", (("n", 1),))
    a.request(abi.XS_WRITE, b"data/dir/leaf\x00v")
    a.request(abi.XS_RM, "data/dir")
    a.request(abi.XS_RM, "data/missing")                     # removes nothing: nothing to send
    a.request(abi.XS_MKDIR, "data")                          # exists: nothing to send
    share(a, dom0)
    assert dom0.store.listing() == a.store.listing()
    assert dom0.store.read("/local/domain/1/data/dir") is None

    a.request(abi.XS_WRITE, b"data/kept\x00x" + bytes(range(1, 200)))
    share(a, dom0)
    late = Replica(3)
    for payload in dom0.store.snapshot().to_payloads(MAX_PAYLOAD):
        late.store.apply_change(XenstoreChange.from_bytes(payload))
    assert late.store.listing() == a.store.listing()
    assert late.request(abi.XS_READ, "/local/domain/1/data/kept") == "error EACCES"
    assert a.store.children("/local/domain/1/data") == ["kept"]


def test_the_change_wire_form_is_small_splits_between_operations_and_refuses_garbage():
    change = XenstoreChange(1, (XenstoreOp("write", "/local/domain/1/data/x", b"hi"),))
    payload, = change.to_payloads(MAX_PAYLOAD)
    assert len(payload) == 2 + 1 + len("data/x") + 1 + 2 + 2      # domid, op, path relative to the home, len, value
    assert XenstoreChange.from_bytes(payload) == change
    many = XenstoreChange(0, tuple(XenstoreOp("write", f"/n{i}", bytes(2000)) for i in range(100)))
    payloads = many.to_payloads(MAX_PAYLOAD)
    assert len(payloads) == 4 and all(len(p) <= MAX_PAYLOAD for p in payloads)
    assert sum((XenstoreChange.from_bytes(p).ops for p in payloads), ()) == many.ops
    with pytest.raises(ValueError, match="does not fit a record"):
        XenstoreChange(0, (XenstoreOp("write", "/x", bytes(70000)),)).to_payloads(MAX_PAYLOAD)
    for garbage in (b"", b"\x01\x00", b"\x01\x00\x09path\x00\x00\x00", b"\x01\x00\x00path",
                    b"\x01\x00\x00p\x00\x05\x00ab"):
        with pytest.raises(ValueError):
            XenstoreChange.from_bytes(garbage)


def test_a_flood_of_other_domains_changes_cannot_queue_unbounded_watch_events_for_a_guest_that_does_not_read():
    """C xenstored drops a watch event that would take the guest past its memory quota (XSA-326)."""
    b = Replica(2)
    b.store.mkdir("/local/domain/1/data", (("n", 1), ("r", 2)))
    b.request(abi.XS_WATCH, "/local/domain/1/data", "t")
    for index in range(20000):
        b.store.apply_change(XenstoreChange(1, (XenstoreOp("write", "/local/domain/1/data/x", b"%d" % index),)))
    queued = b.store.take_output(1 << 30)
    assert MAX_QUEUED_OUTPUT <= len(queued) < MAX_QUEUED_OUTPUT + 200
    assert b.request(abi.XS_READ, "/local/domain/1/data/x") == "19999"       # the store itself is up to date


def test_a_checkpoint_holds_an_open_transaction_s_changes_for_the_others_and_the_capped_events():
    """save_state/load_state and state_bytes (snapshots, digests, reverse execution) cover what the
    replicas added: the changes an open transaction sends at its commit, and the watch events queued up
    to MAX_QUEUED_OUTPUT (the cap counts the queued bytes, so a restored replica drops the same events)."""
    a = Replica(1)
    a.store.mkdir("/local/domain/1/data", (("n", 1),))
    a.store.mkdir("/local/domain/2/data", (("n", 2), ("r", 1)))
    a.request(abi.XS_WATCH, "/local/domain/2/data", "t")
    tx = int(a.request(abi.XS_TRANSACTION_START, ""))
    a.request(abi.XS_WRITE, b"data/x\x001", tx=tx)
    a.request(abi.XS_MKDIR, "data/d", tx=tx)
    a.sent.clear()
    a.events.clear()
    for index in range(20000):
        a.store.apply_change(XenstoreChange(2, (XenstoreOp("write", "/local/domain/2/data/x", b"%d" % index),)))
    b = Replica(1)
    b.store.load_state(a.store.save_state())
    assert b.store.state_bytes() == a.store.state_bytes()
    for replica in (a, b):
        replica.store.apply_change(XenstoreChange(2, (XenstoreOp("write", "/local/domain/2/data/y", b"y"),)))
    assert b.store.state_bytes() == a.store.state_bytes()
    for replica in (a, b):
        assert replica.request(abi.XS_TRANSACTION_END, "T", tx=tx) == "OK"
    assert a.events == b.events and "/local/domain/2/data/y" not in a.events      # dropped past the cap in both
    assert [str(change) for change in b.sent] == [str(change) for change in a.sent] == [
        "d1 write /local/domain/1/data/x = '1'; mkdir /local/domain/1/data/d"]
    written, perms_set = Replica(1), Replica(1)          # open transactions that differ only in what they send
    for replica in (written, perms_set):
        replica.store.mkdir("/local/domain/1/data", (("n", 1),))
        replica.store.write("/local/domain/1/data/x", b"1")
        assert replica.request(abi.XS_TRANSACTION_START, "") == "1"
    written.request(abi.XS_WRITE, b"data/x\x001", tx=1)           # the value it has: the same tree
    perms_set.request(abi.XS_SET_PERMS, "data/x", "n1", tx=1)      # the perms it has: the same tree
    assert written.store.save_state() != perms_set.store.save_state()
    assert written.store.state_bytes() != perms_set.store.state_bytes()


def test_removing_a_home_the_watcher_may_not_read_fires_its_watch_on_a_node_below_it_may_read():
    """As C xenstored fires the watches of each node a recursive rm deletes with that node's permissions:
    a backend watching a frontend's node learns that the frontend's home went."""
    b = Replica(2)
    b.store.mkdir("/local/domain/1", (("n", 0), ("r", 1)))
    b.store.mkdir("/local/domain/1/data/shared", (("n", 1), ("r", 2)))
    b.store.mkdir("/local/domain/1/data/private", (("n", 1),))
    b.request(abi.XS_WATCH, "/local/domain/1/data/shared", "t")
    b.request(abi.XS_WATCH, "/local/domain/1/data/private", "t")
    b.request(abi.XS_WATCH, "/local/domain/1", "t")
    b.watch_events()
    b.store.apply_change(XenstoreChange(0, (XenstoreOp("rm", "/local/domain/1"),)))
    assert b.watch_events() == ["/local/domain/1/data/shared"]
    assert b.request(abi.XS_READ, "/local/domain/1/data/shared") == "error EACCES"


def test_a_refused_request_sends_nothing_to_the_other_replicas():
    """An oversized value (over C xenstored's 2048-byte quota), a write where the writer may not, a node
    in someone else's home: refused at the writer (ENOSPC, EACCES) and never sent on."""
    a = Replica(1)
    a.store.mkdir("/local/domain/1/data", (("n", 1),))
    a.store.mkdir("/local/domain/2", (("n", 0), ("r", 2)))
    a.sent.clear()
    assert a.request(abi.XS_WRITE, b"data/big\0" + bytes(2049)) == "error ENOSPC"
    assert a.request(abi.XS_WRITE, b"/local/domain/2/x\0v") == "error EACCES"
    assert a.request(abi.XS_RM, "/local/domain/2") == "error EACCES"
    assert a.request(abi.XS_SET_PERMS, "/local/domain/2", "n1") == "error EACCES"
    tx = a.request(abi.XS_TRANSACTION_START, "")
    assert a.request(abi.XS_WRITE, b"/local/domain/2/x\0v", tx=int(tx)) == "error EACCES"
    assert a.request(abi.XS_TRANSACTION_END, "T", tx=int(tx)) == "OK"
    assert a.sent == []
