"""xenstored over the domain's real ring, message by message, against io/xs_wire.h.

Each test writes struct xsd_sockmsg requests into the req[] ring of a real domain's xenstore page
(struct xenstore_domain_interface), notifies the store port as the guest's EVTCHNOP_send does, and
reads the replies and watch events from rsp[]. Expected behaviour is docs/misc/xenstore.txt and
C xenstored's: error replies are XS_ERROR with the errno's name (xsd_errors), relative paths are
under /local/domain/<domid>, watches fire once on registration and for changes at or below their
path, conflicting transactions fail with EAGAIN.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from dom0.toolstack import GUEST_DOMID, connect_xenstore, xenstore_config
from dom0.xenstored import MAX_TRANSACTION_CHANGES
from xen import abi
from xen.builder import build_domain
from xen.domain import Domain
from xen.inject import Kind
from xen.xenstore import REQUESTS_WAIT_ABOVE

ROOT = Path(__file__).resolve().parents[2]
HEADER = ctypes.sizeof(abi.XsdSockmsg)
HOME = f"/local/domain/{GUEST_DOMID}"


class Guest:
    """The guest's side of the xenstore ring, driven from the test (as a frontend driver would)."""

    def __init__(self):
        image = build_domain((ROOT / "guests/kbdshell/kbdshell.elf").read_bytes(), 4 << 20)
        self.domain = Domain(image)
        self.store = connect_xenstore(self.domain, xenstore_config(Path("kbdshell.elf")))
        self.page = image.store_frame * abi.PAGE_SIZE       # the ring by machine address
        self.next_id = 1

    def _field(self, name: str) -> int:
        return getattr(abi.XenstoreDomainInterface, name).offset

    def index(self, name: str) -> int:
        return int.from_bytes(self.domain.vcpu.machine.read(self.page + self._field(name), 4), "little")

    def set_index(self, name: str, value: int) -> None:
        self.domain.vcpu.machine.write(self.page + self._field(name), (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def put(self, data: bytes) -> None:
        """Write request bytes as a frontend does: as much as the ring has room for, notify, repeat."""
        while data:
            producer = self.index("req_prod")
            room = abi.XENSTORE_RING_SIZE - (producer - self.index("req_cons"))
            for offset, byte in enumerate(data[:room]):
                address = self.page + self._field("req") + (producer + offset) % abi.XENSTORE_RING_SIZE
                self.domain.vcpu.machine.write(address, bytes([byte]))
            self.set_index("req_prod", producer + min(room, len(data)))
            data = data[room:]
            self.notify()

    def notify(self) -> None:
        """What the guest's EVTCHNOP_send on the store port does."""
        self.domain.guest_notified(self.domain.store_port)

    def raw(self) -> bytes:
        """Everything the server has put in rsp[] that the guest has not consumed; consumes it."""
        consumer, producer = self.index("rsp_cons"), self.index("rsp_prod")
        data = bytes(self.domain.vcpu.machine.read(self.page + self._field("rsp") + (consumer + i) % abi.XENSTORE_RING_SIZE,
                                           1)[0] for i in range(producer - consumer))
        self.set_index("rsp_cons", producer)
        return data

    def messages(self) -> list[tuple[int, int, int, bytes]]:
        data, found = self.raw(), []
        while data:
            header = abi.XsdSockmsg.from_buffer_copy(data[:HEADER])
            found.append((header.type, header.req_id, header.tx_id, data[HEADER:HEADER + header.len]))
            data = data[HEADER + header.len:]
        return found

    def request(self, kind: int, *strings: str | bytes, tx: int = 0, raw: bytes | None = None):
        payload = raw if raw is not None else b"".join(
            (s.encode() if isinstance(s, str) else s) + b"\0" for s in strings)
        req_id = self.next_id
        self.next_id += 1
        self.put(bytes(abi.XsdSockmsg(kind, req_id, tx, len(payload))) + payload)
        replies = self.messages()
        answers = [message for message in replies if message[0] != abi.XS_WATCH_EVENT]
        assert answers and answers[0][1] == req_id and answers[0][2] == tx, replies
        return replies

    def call(self, kind: int, *strings: str | bytes, tx: int = 0, raw: bytes | None = None) -> tuple[int, bytes]:
        """One request whose only answer is its reply (no watch events): (type, payload)."""
        replies = self.request(kind, *strings, tx=tx, raw=raw)
        assert len(replies) == 1, replies
        return replies[0][0], replies[0][3]


def ok(reply: tuple[int, bytes], kind: int) -> bytes:
    assert reply[0] == kind, reply
    return reply[1]


def error(reply: tuple[int, bytes]) -> str:
    assert reply[0] == abi.XS_ERROR, reply
    assert reply[1].endswith(b"\0")
    return reply[1][:-1].decode()


@pytest.fixture
def guest() -> Guest:
    return Guest()


def test_server_advertises_the_error_feature_on_introduction(guest):
    assert guest.index("server_features") == abi.XENSTORE_SERVER_FEATURE_ERROR
    assert guest.index("error") == abi.XENSTORE_ERROR_NONE


def test_read_the_tree_libxl_writes(guest):
    assert ok(guest.call(abi.XS_READ, "name"), abi.XS_READ) == b"kbdshell"
    assert ok(guest.call(abi.XS_READ, f"{HOME}/domid"), abi.XS_READ) == str(GUEST_DOMID).encode()
    assert ok(guest.call(abi.XS_READ, "memory/target"), abi.XS_READ) == b"4096"
    assert ok(guest.call(abi.XS_READ, "store/port"), abi.XS_READ) == str(guest.domain.store_port).encode()
    assert ok(guest.call(abi.XS_READ, "console/type"), abi.XS_READ) == b"xenconsoled"
    assert ok(guest.call(abi.XS_READ, "control/platform-feature-xs_reset_watches"), abi.XS_READ) == b"1"


def test_write_read_mkdir_directory_rm(guest):
    assert ok(guest.call(abi.XS_WRITE, raw=b"data/a/b\0hello"), abi.XS_WRITE) == b"OK\0"
    assert ok(guest.call(abi.XS_READ, "data/a/b"), abi.XS_READ) == b"hello"
    assert ok(guest.call(abi.XS_READ, "data/a"), abi.XS_READ) == b""           # parents created empty
    assert ok(guest.call(abi.XS_MKDIR, "data/a/c"), abi.XS_MKDIR) == b"OK\0"
    assert ok(guest.call(abi.XS_MKDIR, "data/a/c"), abi.XS_MKDIR) == b"OK\0"   # exists: fine
    assert ok(guest.call(abi.XS_DIRECTORY, "data/a"), abi.XS_DIRECTORY) == b"b\0c\0"
    assert ok(guest.call(abi.XS_DIRECTORY, "data/a/b"), abi.XS_DIRECTORY) == b""
    assert ok(guest.call(abi.XS_RM, "data/a"), abi.XS_RM) == b"OK\0"
    assert error(guest.call(abi.XS_READ, "data/a/b")) == "ENOENT"
    assert ok(guest.call(abi.XS_RM, "data/a"), abi.XS_RM) == b"OK\0"           # gone, parent exists: fine
    assert error(guest.call(abi.XS_RM, "data/x/y")) == "ENOENT"                 # parent missing too


def test_values_are_binary_and_keep_nuls(guest):
    ok(guest.call(abi.XS_WRITE, raw=b"data/bin\0a\0b\xff"), abi.XS_WRITE)
    assert ok(guest.call(abi.XS_READ, "data/bin"), abi.XS_READ) == b"a\0b\xff"


def test_directory_part_gives_generation_and_terminated_list(guest):
    ok(guest.call(abi.XS_WRITE, raw=b"data/d/x\0"), abi.XS_WRITE)
    ok(guest.call(abi.XS_WRITE, raw=b"data/d/yy\0"), abi.XS_WRITE)
    generation, _, rest = ok(guest.call(abi.XS_DIRECTORY_PART, "data/d", "0"), abi.XS_DIRECTORY_PART).partition(b"\0")
    assert generation.isdigit() and rest == b"x\0yy\0\0"
    assert ok(guest.call(abi.XS_DIRECTORY_PART, "data/d", "2"), abi.XS_DIRECTORY_PART).partition(b"\0")[2] == b"yy\0\0"


def test_get_domain_path(guest):
    assert ok(guest.call(abi.XS_GET_DOMAIN_PATH, "7"), abi.XS_GET_DOMAIN_PATH) == b"/local/domain/7\0"


def test_errors_are_xsd_error_names(guest):
    assert error(guest.call(abi.XS_READ, "no/such/node")) == "ENOENT"
    assert error(guest.call(abi.XS_READ, "bad//path")) == "EINVAL"
    assert error(guest.call(abi.XS_READ, "trailing/")) == "EINVAL"
    assert error(guest.call(abi.XS_READ, "bad char!")) == "EINVAL"
    assert error(guest.call(abi.XS_READ, "x" * (abi.XENSTORE_REL_PATH_MAX + 1))) == "EINVAL"
    assert error(guest.call(abi.XS_WRITE, raw=b"data/no-separator")) == "EINVAL"
    assert error(guest.call(abi.XS_READ, raw=b"name")) == "EINVAL"                  # not nul-terminated
    assert error(guest.call(abi.XS_RM, "/")) == "EINVAL"
    assert error(guest.call(abi.XS_TRANSACTION_END, "T")) == "ENOENT"          # no such transaction
    assert error(guest.call(abi.XS_READ, "name", tx=12345)) == "ENOENT"
    assert error(guest.call(abi.XS_WRITE, raw=b"data/big\0" + b"v" * 2049)) == "ENOSPC"   # xenstored's entry quota


@pytest.mark.parametrize("kind", [abi.XS_CONTROL, abi.XS_INTRODUCE, abi.XS_RELEASE, abi.XS_IS_DOMAIN_INTRODUCED,
                                  abi.XS_RESUME, abi.XS_SET_TARGET])
def test_privileged_requests_are_refused(guest, kind):
    assert error(guest.call(kind, "1")) == "EACCES"


def test_permissions(guest):
    # dom0 owns the home directory, the domain may read it but not write in it (libxl's roperm)
    assert ok(guest.call(abi.XS_GET_PERMS, HOME), abi.XS_GET_PERMS) == f"n0\0r{GUEST_DOMID}\0".encode()
    assert error(guest.call(abi.XS_WRITE, raw=b"name\0evil")) == "EACCES"
    assert error(guest.call(abi.XS_WRITE, raw=b"newdir/x\0v")) == "EACCES"
    assert error(guest.call(abi.XS_RM, "name")) == "EACCES"
    # the domain owns what it creates in its writable directories
    ok(guest.call(abi.XS_WRITE, raw=b"data/mine\0v"), abi.XS_WRITE)
    assert ok(guest.call(abi.XS_GET_PERMS, "data/mine"), abi.XS_GET_PERMS) == f"n{GUEST_DOMID}\0".encode()
    # dom0-only nodes: not readable, and a missing node below one reports EACCES, not ENOENT
    assert error(guest.call(abi.XS_READ, "/libxl/1/type")) == "EACCES"
    assert error(guest.call(abi.XS_READ, "/libxl/1/missing")) == "EACCES"
    assert error(guest.call(abi.XS_DIRECTORY, "/libxl")) == "EACCES"


def test_set_perms(guest):
    ok(guest.call(abi.XS_WRITE, raw=b"data/shared\0v"), abi.XS_WRITE)
    assert ok(guest.call(abi.XS_SET_PERMS, "data/shared", f"n{GUEST_DOMID}", "r0", "b5"),
              abi.XS_SET_PERMS) == b"OK\0"
    assert ok(guest.call(abi.XS_GET_PERMS, "data/shared"), abi.XS_GET_PERMS) == f"n{GUEST_DOMID}\0r0\0b5\0".encode()
    assert error(guest.call(abi.XS_SET_PERMS, "data/shared", "b0")) == "EPERM"    # may not give it away
    assert error(guest.call(abi.XS_SET_PERMS, "data/shared", "x1")) == "EINVAL"
    assert error(guest.call(abi.XS_SET_PERMS, "data/shared")) == "EINVAL"
    assert error(guest.call(abi.XS_SET_PERMS, "data/none", "n1")) == "ENOENT"
    assert error(guest.call(abi.XS_SET_PERMS, "name", "n0", "b1")) == "EACCES"


def test_watch_fires_once_on_registration_then_on_writes_at_or_below(guest):
    replies = guest.request(abi.XS_WATCH, "data", "tok")
    assert [(kind, payload) for kind, _, _, payload in replies] == [
        (abi.XS_WATCH, b"OK\0"), (abi.XS_WATCH_EVENT, b"data\0tok\0")]
    replies = guest.request(abi.XS_WRITE, raw=b"data/a/b\0v")
    assert [(kind, payload) for kind, _, _, payload in replies] == [
        (abi.XS_WATCH_EVENT, b"data/a/b\0tok\0"), (abi.XS_WRITE, b"OK\0")]   # relative watch: relative path
    assert [p for k, _, _, p in guest.request(abi.XS_WRITE, raw=b"datum\0v") if k == abi.XS_WATCH_EVENT] == []
    assert error(guest.call(abi.XS_WATCH, "data", "tok")) == "EEXIST"


def test_watch_on_absolute_path_and_recursive_removal(guest):
    guest.request(abi.XS_WRITE, raw=b"data/a/b/c\0v")
    guest.request(abi.XS_WATCH, f"{HOME}/data/a/b/c", "deep")
    replies = guest.request(abi.XS_RM, "data/a")
    events = [p for k, _, _, p in replies if k == abi.XS_WATCH_EVENT]
    assert events == [f"{HOME}/data/a/b/c\0deep\0".encode()]   # removal of a parent: the watch's own path


def test_unwatch_and_reset_watches(guest):
    guest.request(abi.XS_WATCH, "data", "t1")
    assert ok(guest.call(abi.XS_UNWATCH, "data", "t1"), abi.XS_UNWATCH) == b"OK\0"
    assert error(guest.call(abi.XS_UNWATCH, "data", "t1")) == "ENOENT"
    assert [k for k, *_ in guest.request(abi.XS_WRITE, raw=b"data/q\0v")] == [abi.XS_WRITE]
    guest.request(abi.XS_WATCH, "data", "t2")
    assert ok(guest.call(abi.XS_RESET_WATCHES), abi.XS_RESET_WATCHES) == b"OK\0"
    assert [k for k, *_ in guest.request(abi.XS_WRITE, raw=b"data/q\0w")] == [abi.XS_WRITE]


def test_special_watch_paths_are_accepted(guest):
    replies = guest.request(abi.XS_WATCH, "@releaseDomain", "rel")
    assert [(k, p) for k, _, _, p in replies] == [(abi.XS_WATCH, b"OK\0"),
                                                  (abi.XS_WATCH_EVENT, b"@releaseDomain\0rel\0")]


def test_no_events_for_nodes_the_watcher_cannot_read(guest):
    guest.request(abi.XS_WATCH, "/libxl", "hidden")
    guest.store.write("/libxl/1/type", b"pvh")
    guest.domain.xenstore_changed()
    assert guest.messages() == []


def test_dom0_write_through_the_funnel_fires_a_watch_and_notifies(guest):
    guest.request(abi.XS_WATCH, "control/shutdown", "ctl")
    guest.domain.funnel.inject(Kind.XENSTORE_WRITE, f"{HOME}/control/shutdown\0".encode() + b"poweroff")
    assert guest.domain.events.upcall_pending()
    assert guest.messages() == [(abi.XS_WATCH_EVENT, 0, 0, b"control/shutdown\0ctl\0")]
    assert ok(guest.call(abi.XS_READ, "control/shutdown"), abi.XS_READ) == b"poweroff"


def test_transaction_commits_and_fires_watches_at_commit(guest):
    guest.request(abi.XS_WATCH, "data", "w")
    tx = int(ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)[:-1])
    assert tx != 0
    assert guest.request(abi.XS_WRITE, raw=b"data/t\0inside", tx=tx)[0][0] == abi.XS_WRITE
    assert len(guest.request(abi.XS_WRITE, raw=b"data/t\0inside", tx=tx)) == 1        # no event yet
    assert ok(guest.call(abi.XS_READ, "data/t", tx=tx), abi.XS_READ) == b"inside"
    assert error(guest.call(abi.XS_READ, "data/t")) == "ENOENT"                       # not visible outside
    replies = guest.request(abi.XS_TRANSACTION_END, "T", tx=tx)
    assert [(kind, payload) for kind, _, _, payload in replies] == [
        (abi.XS_WATCH_EVENT, b"data/t\0w\0"), (abi.XS_TRANSACTION_END, b"OK\0")]   # one event per node
    assert ok(guest.call(abi.XS_READ, "data/t"), abi.XS_READ) == b"inside"
    assert error(guest.call(abi.XS_READ, "data/t", tx=tx)) == "ENOENT"                 # tx is gone


def test_conflicting_transaction_fails_with_eagain(guest):
    ok(guest.call(abi.XS_WRITE, raw=b"data/n\0one"), abi.XS_WRITE)
    tx = int(ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)[:-1])
    assert ok(guest.call(abi.XS_READ, "data/n", tx=tx), abi.XS_READ) == b"one"
    ok(guest.call(abi.XS_WRITE, raw=b"data/other\0x", tx=tx), abi.XS_WRITE)
    ok(guest.call(abi.XS_WRITE, raw=b"data/n\0two"), abi.XS_WRITE)                  # outside, after the read
    assert error(guest.call(abi.XS_TRANSACTION_END, "T", tx=tx)) == "EAGAIN"
    assert error(guest.call(abi.XS_READ, "data/other")) == "ENOENT"            # nothing of it applied


def test_unrelated_transactions_both_commit_and_abort_discards(guest):
    first = int(ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)[:-1])
    second = int(ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)[:-1])
    assert first != second
    ok(guest.call(abi.XS_WRITE, raw=b"data/one\0" b"1", tx=first), abi.XS_WRITE)
    ok(guest.call(abi.XS_WRITE, raw=b"data/two\0" b"2", tx=second), abi.XS_WRITE)
    assert ok(guest.call(abi.XS_TRANSACTION_END, "T", tx=first), abi.XS_TRANSACTION_END) == b"OK\0"
    # both created a child of data/: the parent's child list changed, so the second one conflicts
    assert error(guest.call(abi.XS_TRANSACTION_END, "T", tx=second)) == "EAGAIN"
    third = int(ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)[:-1])
    ok(guest.call(abi.XS_WRITE, raw=b"data/one\0changed", tx=third), abi.XS_WRITE)
    assert ok(guest.call(abi.XS_TRANSACTION_END, "F", tx=third), abi.XS_TRANSACTION_END) == b"OK\0"
    assert ok(guest.call(abi.XS_READ, "data/one"), abi.XS_READ) == b"1"
    assert error(guest.call(abi.XS_TRANSACTION_START, "", tx=first)) == "EBUSY"
    fourth = int(ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)[:-1])
    assert error(guest.call(abi.XS_TRANSACTION_END, "X", tx=fourth)) == "EINVAL"


def test_transaction_quota(guest):
    for _ in range(10):
        ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)
    assert error(guest.call(abi.XS_TRANSACTION_START, "")) == "ENOSPC"


def test_a_transaction_holds_at_most_its_quota_of_changes(guest):
    """Past MAX_TRANSACTION_CHANGES a change in a transaction gets ENOSPC (C xenstored's errno past its
    per-transaction quota, quota_trans_nodes), so a guest cannot grow one without bound; the changes made
    before commit."""
    tx = int(ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)[:-1])
    for index in range(MAX_TRANSACTION_CHANGES):
        ok(guest.call(abi.XS_WRITE, raw=f"data/n{index % 2}\0{index}".encode(), tx=tx), abi.XS_WRITE)
    assert error(guest.call(abi.XS_WRITE, raw=b"data/n0\0again", tx=tx)) == "ENOSPC"
    ok(guest.call(abi.XS_TRANSACTION_END, "T", tx=tx), abi.XS_TRANSACTION_END)
    assert ok(guest.call(abi.XS_READ, "data/n1"), abi.XS_READ) == str(MAX_TRANSACTION_CHANGES - 1).encode()


def test_requests_split_across_notifications_and_ring_wrap(guest):
    payload = b"data/split\0" + b"z" * 600
    message = bytes(abi.XsdSockmsg(abi.XS_WRITE, 77, 0, len(payload))) + payload
    guest.put(message[:10])
    assert guest.messages() == []
    guest.put(message[10:])
    assert guest.messages() == [(abi.XS_WRITE, 77, 0, b"OK\0")]
    for round_ in range(4):                                     # indices wrap the 1 KiB ring several times
        assert ok(guest.call(abi.XS_READ, "data/split"), abi.XS_READ) == b"z" * 600


def test_a_reply_larger_than_the_ring_arrives_as_the_guest_consumes(guest):
    ok(guest.call(abi.XS_WRITE, raw=b"data/big\0" + b"q" * 2000), abi.XS_WRITE)
    guest.put(bytes(abi.XsdSockmsg(abi.XS_READ, 5, 0, 9)) + b"data/big\0")
    received = guest.raw()
    assert len(received) == abi.XENSTORE_RING_SIZE
    while len(received) < HEADER + 2000:
        guest.notify()                                          # the guest consumed: it notifies, more comes
        received += guest.raw()
    assert received[HEADER:] == b"q" * 2000


def test_a_guest_that_never_takes_its_replies_cannot_grow_them_without_bound(guest):
    """C xenstored stops reading a domain's requests while too many of its replies are outstanding
    (quota_req_outstanding in xenstored's domain accounting); xenrr leaves them in req[] once
    REQUESTS_WAIT_ABOVE bytes of replies wait, and serves them when the guest takes its replies."""
    ok(guest.call(abi.XS_WRITE, raw=b"data/big\0" + b"q" * 2000), abi.XS_WRITE)
    read = bytes(abi.XsdSockmsg(abi.XS_READ, 9, 0, 9)) + b"data/big\0"
    sent = 0
    for _ in range(400):                       # 400 ring-fulls of reads, replies never consumed
        producer = guest.index("req_prod")
        if producer - guest.index("req_cons") + len(read) > abi.XENSTORE_RING_SIZE:
            guest.notify()                    # the ring is full: the guest can only notify again
            continue
        for offset, byte in enumerate(read):
            address = guest.page + guest._field("req") + (producer + offset) % abi.XENSTORE_RING_SIZE
            guest.domain.vcpu.machine.write(address, bytes([byte]))
        guest.set_index("req_prod", producer + len(read))
        sent += 1
        guest.notify()
    assert guest.store.backlog() < REQUESTS_WAIT_ABOVE + abi.XENSTORE_RING_SIZE // HEADER * (HEADER + 2000)
    assert guest.index("req_cons") < guest.index("req_prod")      # the rest wait in the guest's ring
    reply = bytes(abi.XsdSockmsg(abi.XS_READ, 9, 0, 2000)) + b"q" * 2000
    received = b""
    while len(received) < sent * len(reply):   # the guest takes its replies: every request is answered
        taken = guest.raw()
        assert taken, "a reply never came"
        received += taken
        guest.notify()
    assert received == reply * sent and guest.index("req_cons") == guest.index("req_prod")


def test_oversized_request_sets_the_protocol_error(guest):
    guest.put(bytes(abi.XsdSockmsg(abi.XS_READ, 1, 0, abi.XENSTORE_PAYLOAD_MAX + 1)))
    assert guest.index("error") == abi.XENSTORE_ERROR_PROTO
    guest.put(bytes(abi.XsdSockmsg(abi.XS_READ, 2, 0, 5)) + b"name\0")
    assert guest.messages() == []                               # the connection is dead, the hypervisor fine


def test_corrupt_ring_indices_set_the_ring_index_error(guest):
    guest.set_index("req_prod", guest.index("req_cons") + abi.XENSTORE_RING_SIZE + 1)
    guest.notify()
    assert guest.index("error") == abi.XENSTORE_ERROR_RINGIDX


def test_state_round_trips_through_checkpoints_and_digests(guest):
    before_state, before_digest = guest.domain.save_state(), guest.domain.digest(with_memory=True)
    ok(guest.call(abi.XS_WRITE, raw=b"data/later\0v"), abi.XS_WRITE)
    assert guest.domain.digest(with_memory=True).device_hash != before_digest.device_hash
    guest.domain.load_state(before_state)
    assert guest.domain.digest(with_memory=True).device_hash == before_digest.device_hash
    assert guest.store.read(f"{HOME}/data/later") is None


def test_the_domain_name_comes_from_the_guest_file_and_fits_the_log_header():
    assert xenstore_config(Path("/guests/my guest (v2).elf")) == {"domid": GUEST_DOMID, "name": "my_guest__v2_"}


# Every xsd_sockmsg_type a guest can send (io/xs_wire.h, XS_CONTROL .. XS_TYPE_COUNT, and XS_INVALID) with a
# payload it may carry, and C xenstored's answer to an unprivileged domain: the operation's own reply type,
# or XS_ERROR naming the errno. Types without an operation (replies, events, the removed XS_RESTRICT = 20,
# XS_TYPE_COUNT and beyond) get ENOSYS (xenstored_core.c process_message: "Client unknown operation").
EVERY_TYPE = [
    (abi.XS_CONTROL, ("print", "x"), "EACCES"),
    (abi.XS_DIRECTORY, ("data",), abi.XS_DIRECTORY),
    (abi.XS_READ, ("name",), abi.XS_READ),
    (abi.XS_GET_PERMS, ("name",), abi.XS_GET_PERMS),
    (abi.XS_WATCH, ("data", "t"), abi.XS_WATCH),
    (abi.XS_UNWATCH, ("data", "never"), "ENOENT"),
    (abi.XS_TRANSACTION_START, ("",), abi.XS_TRANSACTION_START),
    (abi.XS_TRANSACTION_END, ("T",), "ENOENT"),
    (abi.XS_INTRODUCE, ("2", "1234", "3"), "EACCES"),
    (abi.XS_RELEASE, ("2",), "EACCES"),
    (abi.XS_GET_DOMAIN_PATH, ("1",), abi.XS_GET_DOMAIN_PATH),
    (abi.XS_WRITE, (b"data/w\0v",), abi.XS_WRITE),
    (abi.XS_MKDIR, ("data/m",), abi.XS_MKDIR),
    (abi.XS_RM, ("data/none",), abi.XS_RM),
    (abi.XS_SET_PERMS, ("data", f"n{GUEST_DOMID}"), abi.XS_SET_PERMS),
    (abi.XS_WATCH_EVENT, ("data", "t"), "ENOSYS"),
    (abi.XS_ERROR, ("EINVAL",), "ENOSYS"),
    (abi.XS_IS_DOMAIN_INTRODUCED, ("1",), "EACCES"),
    (abi.XS_RESUME, ("1",), "EACCES"),
    (abi.XS_SET_TARGET, ("2", "1"), "EACCES"),
    (abi.XS_SET_TARGET + 1, ("x",), "ENOSYS"),          # XS_RESTRICT, removed
    (abi.XS_RESET_WATCHES, ("",), abi.XS_RESET_WATCHES),
    (abi.XS_DIRECTORY_PART, ("data", "0"), abi.XS_DIRECTORY_PART),
    (abi.XS_TYPE_COUNT, ("x",), "ENOSYS"),
    (0xFFFF, ("x",), "ENOSYS"),                          # XS_INVALID: guaranteed to remain invalid
]


def test_every_message_type_is_covered():
    assert sorted(kind for kind, *_ in EVERY_TYPE) == [*range(abi.XS_TYPE_COUNT + 1), 0xFFFF]


def test_every_message_type_gets_xenstoreds_answer(guest):
    answers = {}
    for kind, arguments, _ in EVERY_TYPE:
        replies = guest.request(kind, raw=arguments[0]) if kind == abi.XS_WRITE else guest.request(kind, *arguments)
        kind_, _, _, payload = next(m for m in replies if m[0] != abi.XS_WATCH_EVENT or kind == abi.XS_WATCH_EVENT)
        answers[kind] = payload[:-1].decode() if kind_ == abi.XS_ERROR else kind_
    assert answers == {kind: answer for kind, _, answer in EVERY_TYPE}


def test_watches_fire_for_every_change_below_their_path_but_not_beside_it(guest):
    guest.request(abi.XS_WATCH, "data/a", "w")
    events = []
    for kind, payload in ((abi.XS_MKDIR, ("data/a/b",)), (abi.XS_WRITE, None), (abi.XS_SET_PERMS, ("data/a/b/c", "n1")),
                          (abi.XS_RM, ("data/a/b",)), (abi.XS_WRITE, b"data/ab\0beside"), (abi.XS_MKDIR, ("data/x/a",))):
        if kind == abi.XS_WRITE:
            replies = guest.request(kind, raw=payload or b"data/a/b/c\0v")
        else:
            replies = guest.request(kind, *payload)
        events += [p for k, _, _, p in replies if k == abi.XS_WATCH_EVENT]
    assert events == [b"data/a/b\0w\0", b"data/a/b/c\0w\0", b"data/a/b/c\0w\0", b"data/a/b\0w\0"]


def test_a_transaction_that_conflicts_fires_no_watch(guest):
    guest.request(abi.XS_WATCH, "data", "w")
    tx = int(ok(guest.call(abi.XS_TRANSACTION_START, ""), abi.XS_TRANSACTION_START)[:-1])
    assert guest.call(abi.XS_READ, "data", tx=tx)[0] == abi.XS_READ
    guest.request(abi.XS_WRITE, raw=b"data/t\0inside", tx=tx)
    guest.request(abi.XS_WRITE, raw=b"data/u\0outside")                   # changes data's children: a conflict
    assert guest.request(abi.XS_TRANSACTION_END, "T", tx=tx) == [(abi.XS_ERROR, guest.next_id - 1, tx, b"EAGAIN\0")]
    assert error(guest.call(abi.XS_READ, "data/t")) == "ENOENT"


def test_dom0_watches_run_after_the_reply_in_order_and_never_reentered(guest):
    """A dom0 backend's watch (dom0/vkbd.py uses one on its frontend's state) sees a change after the
    guest's request was answered; what it writes fires the guest's watches after that reply too."""
    seen = []

    def backend(path: str) -> None:
        seen.append((path, len(guest.store._output)))
        if path.endswith("/state") and guest.store.read(path) == b"3":
            guest.store.write(f"{HOME}/data/backend-state", b"4")         # nested: queued, not re-entered
            seen.append(("wrote", None))
    guest.store.watch_dom0(f"{HOME}/data/frontend", backend)
    assert seen == [(f"{HOME}/data/frontend", 0)]                         # fired once on registration
    seen.clear()
    guest.request(abi.XS_WATCH, "data/backend-state", "b")
    replies = guest.request(abi.XS_WRITE, raw=b"data/frontend/state\x003")
    assert [(k, p) for k, _, _, p in replies] == [(abi.XS_WRITE, b"OK\0"),
                                                  (abi.XS_WATCH_EVENT, b"data/backend-state\0b\0")]
    assert seen[0][0] == f"{HOME}/data/frontend/state" and seen[1] == ("wrote", None) and len(seen) == 2
