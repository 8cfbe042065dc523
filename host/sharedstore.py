"""The host's one xenstore, as the hypervisor process keeps it: dom0's replica and the routing of changes.

Owns dom0's replica of the store (`store`: every change in the order the hypervisor receives them -
the order one C xenstored would have applied them in) and which changes are on their way to which
domain. A domain's change goes to every other domain; when it crossed a change still on its way to
that domain and touching the same node (or one above or below it), it goes back to the writer as
well, so that the writer's replica applies it again after the crossing change and ends as every other
replica does (host/pcpu.py injects each delivery as a `xenstore-change` input).

Invariant: once nothing is on its way, every domain's replica holds the same tree as `store` (node
generations and the order of a directory's children may differ where two domains' changes crossed).
"""
from __future__ import annotations

from typing import Callable, Iterable

from dom0.xenstored import DOM0, Xenstored
from xen.logrecord import MAX_PAYLOAD
from xen.xenstore import XenstoreChange


class SharedXenstore:
    """dom0's replica, and the changes sent to domains that have not applied them yet."""

    def __init__(self, send: Callable[[int, list[bytes]], int]):
        """`send(domid, payloads)` delivers a change to a domain's worker; it returns the request id whose
        reply (`applied`) says the domain has applied it."""
        self.store = Xenstored(DOM0)
        self._send = send
        self._on_the_way: dict[int, tuple[int, frozenset[str]]] = {}     # request id -> (domid, paths)

    def snapshot(self) -> list[bytes]:
        """The store as it is, as record payloads: where a new domain's replica starts."""
        return self.store.snapshot().to_payloads(MAX_PAYLOAD)

    def committed(self, domid: int, payloads: list[bytes], domids: Iterable[int]) -> None:
        """Domain `domid` committed a change (its record payloads): into dom0's replica, then to every other
        domain of `domids`, and back to the writer if it crossed a change on its way there."""
        changes = [XenstoreChange.from_bytes(payload) for payload in payloads]
        paths = frozenset(op.path for change in changes for op in change.ops)
        for change in changes:
            self.store.apply_change(change)
        crossed = any(target == domid and _overlap(paths, other) for target, other in self._on_the_way.values())
        for target in domids:
            if target != domid or crossed:
                self._on_the_way[self._send(target, payloads)] = (target, paths)

    def applied(self, request_id: int) -> None:
        """A domain's worker answered a delivery: that domain's replica has it."""
        self._on_the_way.pop(request_id, None)

    def gone(self, domid: int) -> None:
        """The domain went: nothing is on its way to it any more."""
        for request_id in [key for key, (target, _) in self._on_the_way.items() if target == domid]:
            del self._on_the_way[request_id]


def _overlap(paths: frozenset[str], others: frozenset[str]) -> bool:
    """Whether a change of `paths` and one of `others` touch the same node, or one a node below the other."""
    return any(path == other or path.startswith(other + "/") or other.startswith(path + "/") or "/" in (path, other)
               for path in paths for other in others)
