"""The hypervisor's routing of xenstore changes between replicas (host/sharedstore.py): when two domains
change one node at once, each applies the other's change after its own; the writer whose change the
hypervisor received last gets it back, so every replica - and dom0's - ends with that value, as one C
xenstored applying the two requests in that order would."""
from __future__ import annotations

from dom0.xenstored import Xenstored
from host.sharedstore import SharedXenstore
from xen.logrecord import MAX_PAYLOAD
from xen.xenstore import XenstoreChange, XenstoreOp

NODE = "/shared/x"


class Host:
    """Replicas of domains 1 and 2 and the deliveries the router sends them, applied when the test says."""

    def __init__(self) -> None:
        self.replicas = {domid: Xenstored(domid) for domid in (1, 2)}
        self.deliveries: list[tuple[int, int, list[bytes]]] = []     # (request id, domid, payloads)
        self.router = SharedXenstore(self._send)
        for replica in self.replicas.values():
            replica.mkdir("/shared", (("b", 0),))
        self.router.store.mkdir("/shared", (("b", 0),))
        self.sent: dict[int, list[XenstoreChange]] = {1: [], 2: []}
        for domid, replica in self.replicas.items():
            replica.changes_out = self.sent[domid].append

    def _send(self, domid: int, payloads: list[bytes]) -> int:
        self.deliveries.append((len(self.deliveries) + 1, domid, payloads))
        return len(self.deliveries)

    def write(self, domid: int, value: bytes) -> None:
        """The domain's guest writes NODE: answered by its own replica at once."""
        self.replicas[domid].apply_change(XenstoreChange(domid, (XenstoreOp("write", NODE, value),)))
        self.replicas[domid].changes_out(XenstoreChange(domid, (XenstoreOp("write", NODE, value),)))

    def commit_reaches_hypervisor(self, domid: int) -> None:
        change = self.sent[domid].pop(0)
        self.router.committed(domid, change.to_payloads(MAX_PAYLOAD), [1, 2])

    def deliver_all(self) -> None:
        for request_id, domid, payloads in self.deliveries:
            for payload in payloads:
                self.replicas[domid].apply_change(XenstoreChange.from_bytes(payload))
            self.router.applied(request_id)
        self.deliveries.clear()


def test_two_domains_writing_one_node_at_once_end_with_the_value_the_hypervisor_received_last():
    host = Host()
    host.write(1, b"one")
    host.write(2, b"two")                     # before either change reached the other
    host.commit_reaches_hypervisor(1)
    host.commit_reaches_hypervisor(2)
    assert [(domid, XenstoreChange.from_bytes(p[0]).ops[0].data) for _, domid, p in host.deliveries] == [
        (2, b"one"), (1, b"two"), (2, b"two")]        # two's change crossed one's on its way to 2: back to 2
    host.deliver_all()
    assert [replica.read(NODE) for replica in host.replicas.values()] == [b"two", b"two"]
    assert host.router.store.read(NODE) == b"two"


def test_a_change_made_after_the_other_arrived_is_not_sent_back():
    host = Host()
    host.write(1, b"one")
    host.commit_reaches_hypervisor(1)
    host.deliver_all()                        # 2 has applied one's change
    host.write(2, b"two")
    host.commit_reaches_hypervisor(2)
    assert [domid for _, domid, _ in host.deliveries] == [1]
    host.deliver_all()
    assert [replica.read(NODE) for replica in host.replicas.values()] == [b"two", b"two"]


def test_changes_of_different_nodes_at_once_are_not_sent_back_and_a_gone_domain_is_forgotten():
    host = Host()
    host.replicas[1].changes_out(XenstoreChange(1, (XenstoreOp("write", "/shared/a", b"1"),)))
    host.replicas[2].changes_out(XenstoreChange(2, (XenstoreOp("write", "/shared/b", b"2"),)))
    host.commit_reaches_hypervisor(1)
    host.commit_reaches_hypervisor(2)
    assert [domid for _, domid, _ in host.deliveries] == [2, 1]
    host.router.gone(2)
    host.replicas[2].changes_out(XenstoreChange(2, (XenstoreOp("write", "/shared/a", b"2"),)))
    host.commit_reaches_hypervisor(2)          # what was on its way to 2 no longer counts
    assert [domid for _, domid, _ in host.deliveries] == [2, 1, 1]
