"""The PV keyboard backend (vkbd): the dom0 end of io/kbdif.h, connected through xenstore watches.

Owns the device as libxl configures it (`vkb = [ "" ]`) and a vkbd backend serves it: the device's
xenstore directories (backend /local/domain/0/backend/vkbd/DOMID/0, frontend
/local/domain/DOMID/device/vkbd/0), the features kbdif.h defines as the backend offering them (a
keyboard, no pointer: feature-disable-pointer 1, feature-abs-pointer / -raw-pointer / -multi-touch 0),
and the XenbusState handshake (io/xenbus.h) driven by a dom0 watch on the frontend's state:

    backend  Initialising -> InitWait (features written, before the domain runs)
    frontend Initialised  -> backend maps page-gref (a grant for dom0, through the domain's grant table;
                             the legacy page-ref names the frame itself), binds event-channel (a port
                             the frontend allocated for dom0) -> Connected
    frontend Closing / Closed -> backend unmaps, unbinds -> Closing / Closed;
    frontend Initialising again after Closed -> InitWait (the device can reconnect).

A frontend that misbehaves - a grant that does not map, a port that is not its unbound port for dom0,
ring indices out of range or moved where only the backend moves them, a state out of order or not a
XenbusState - gets the device closed as a Linux backend's xenbus_dev_fatal closes it: the page unmapped,
the port unbound, the reason written to dom0's error/<backend path>/error node, the backend switched to
Closing (the frontend answers Closed, and may start over) - and one line on the hypervisor console,
never an exception.
Invariant: the backend changes state only in a guest request to xenstore or a notification on its port
(hypercalls, deterministic) or in a logged keyboard event (the funnel), and its whole state -
`VkbdState` - is in checkpoints and digests; the ring page is guest memory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dom0.xenstored import DOM0, Perms, Xenstored
from xen import abi
from xen.domain import Domain
from xen.grant import GrantError
from xen.kbdif import KeyboardRing, KeyEvent, RingIndexError

DEVICE = "vkbd"
FEATURES = {"feature-disable-keyboard": "0", "feature-disable-pointer": "1", "feature-abs-pointer": "0",
            "feature-raw-pointer": "0", "feature-multi-touch": "0"}
STATE_NAMES = {abi.XenbusStateUnknown: "Unknown", abi.XenbusStateInitialising: "Initialising",
               abi.XenbusStateInitWait: "InitWait", abi.XenbusStateInitialised: "Initialised",
               abi.XenbusStateConnected: "Connected", abi.XenbusStateClosing: "Closing",
               abi.XenbusStateClosed: "Closed", abi.XenbusStateReconfiguring: "Reconfiguring",
               abi.XenbusStateReconfigured: "Reconfigured"}


def frontend_path(domid: int) -> str:
    return f"/local/domain/{domid}/device/{DEVICE}/0"


def backend_path(domid: int) -> str:
    return f"/local/domain/{DOM0}/backend/{DEVICE}/{domid}/0"


@dataclass(frozen=True)
class VkbdState:
    """The backend's own state: its XenbusState, and while connected the mapped ring and bound port."""
    state: int = abi.XenbusStateInitialising
    handle: int | None = None          # grant handle of the mapped page (None: legacy page-ref, or not mapped)
    ring_address: int | None = None    # machine address of the frontend's xenkbd_page
    in_prod: int = 0                   # the backend's copy of the in ring's producer index
    port: int | None = None


class _Misbehaviour(Exception):
    """The frontend broke the protocol: the device is closed with this reason."""


class VkbdBackend:
    """The vkbd backend of one domain's keyboard device 0 (xen.kbdif.KeyboardDevice)."""

    def __init__(self, domain: Domain, store: Xenstored):
        self._domain = domain
        self._store = store
        self._domid = store.domid
        self._frontend = frontend_path(self._domid)
        self._backend = backend_path(self._domid)
        self.state = VkbdState()
        self._write_device_nodes()
        self._switch(abi.XenbusStateInitWait)
        store.watch_dom0(f"{self._frontend}/state", self._frontend_changed)

    # ---------------------------------------------------------------- xenstore
    def _write_device_nodes(self) -> None:
        """What libxl writes for a vkb device, then the backend's features (before the domain runs)."""
        store, domid = self._store, self._domid
        frontend_perms: Perms = (("n", domid), ("r", DOM0))      # the frontend's: the backend may read
        backend_perms: Perms = (("n", DOM0), ("r", domid))
        store.mkdir(self._frontend, frontend_perms)
        for key, value in (("backend", self._backend), ("backend-id", DOM0),
                           ("state", abi.XenbusStateInitialising)):
            store.write(f"{self._frontend}/{key}", str(value).encode())
        store.mkdir(self._backend, backend_perms)
        for key, value in (("frontend", self._frontend), ("frontend-id", domid), ("online", 1),
                           ("state", abi.XenbusStateInitialising), *FEATURES.items()):
            store.write(f"{self._backend}/{key}", str(value).encode())

    def _switch(self, state: int) -> None:
        self.state = dataclasses.replace(self.state, state=state)
        self._store.write(f"{self._backend}/state", str(state).encode())

    def _frontend_value(self, key: str) -> str | None:
        value = self._store.read(f"{self._frontend}/{key}")
        return None if value is None else value.decode("latin-1")

    def _frontend_number(self, key: str) -> int | None:
        """A frontend node holding an unsigned decimal (kbdif.h's <uint>); None if absent."""
        text = self._frontend_value(key)
        if text is None:
            return None
        if not text.isascii() or not text.isdigit() or int(text) > 0xFFFFFFFF:
            raise _Misbehaviour(f"{key} is {text!r}, not a number")
        return int(text)

    # ---------------------------------------------------------------- the handshake
    def _frontend_changed(self, path: str) -> None:
        try:
            self._follow_frontend()
        except _Misbehaviour as error:
            self._close(str(error))
        self._domain.xenstore_changed()

    def _follow_frontend(self) -> None:
        text = self._frontend_value("state")
        if text is None:                                  # the frontend's directory went away
            self._disconnect(abi.XenbusStateClosed)
            return
        if not text.isascii() or not text.isdigit() or int(text) not in STATE_NAMES:
            raise _Misbehaviour(f"frontend state {text!r} is not a XenbusState")
        frontend, backend = int(text), self.state.state
        name = STATE_NAMES[frontend]
        if frontend == abi.XenbusStateInitialising:
            if backend == abi.XenbusStateClosed:          # a frontend starting over: offer the device again
                self._switch(abi.XenbusStateInitWait)
        elif frontend == abi.XenbusStateInitWait:
            pass                                          # a frontend waiting for us: nothing to do
        elif frontend == abi.XenbusStateInitialised:
            if backend == abi.XenbusStateInitWait:
                self._connect()
            elif backend != abi.XenbusStateConnected:
                raise _Misbehaviour(f"frontend Initialised while the backend is {STATE_NAMES[backend]}")
        elif frontend == abi.XenbusStateConnected:
            if backend != abi.XenbusStateConnected:
                raise _Misbehaviour(f"frontend Connected while the backend is {STATE_NAMES[backend]} "
                                    "(it never published Initialised)")
        elif frontend == abi.XenbusStateClosing:
            if backend != abi.XenbusStateClosed:
                self._disconnect(abi.XenbusStateClosing)
        elif frontend == abi.XenbusStateClosed:
            self._disconnect(abi.XenbusStateClosed)
        else:
            raise _Misbehaviour(f"frontend state {name} is not one a keyboard frontend goes through")

    def _connect(self) -> None:
        """Frontend Initialised: map its page, bind its port, check the ring, then Connected."""
        domain = self._domain
        gref = self._frontend_number("page-gref")
        handle = None
        if gref is not None:
            try:
                handle, address = domain.grants.map(gref, DOM0, readonly=False)
            except GrantError as error:
                raise _Misbehaviour(f"page-gref {gref} does not map (GNTST {error.status}: {error})") from None
        else:
            pfn = self._frontend_number("page-ref")
            if pfn is None:
                raise _Misbehaviour("neither page-gref nor page-ref was published")
            if not 0 <= pfn < domain.image.nr_pages:
                raise _Misbehaviour(f"page-ref {pfn:#x} is not a page of the domain")
            address = pfn * abi.PAGE_SIZE
        self.state = dataclasses.replace(self.state, handle=handle, ring_address=address)
        port = self._frontend_number("event-channel")
        if port is None or not domain.events.remote_change_applies("bound", port, DOM0, port):
            raise _Misbehaviour(f"event-channel {port} is not a port the frontend allocated for dom0")
        domain.events.apply_remote_change("bound", port, DOM0, port)     # dom0's end: the same number
        self.state = dataclasses.replace(self.state, port=port)
        ring = KeyboardRing(domain.vcpu.machine, address)
        try:
            ring.check()
        except RingIndexError as error:
            raise _Misbehaviour(f"ring indices out of range at connection: {error}") from None
        self.state = dataclasses.replace(self.state, in_prod=ring.in_prod)
        self._switch(abi.XenbusStateConnected)

    def _disconnect(self, state: int) -> None:
        """Unmap the page and unbind the port (whatever of them is held), then switch to `state`."""
        held = self.state
        if held.handle is not None:
            self._domain.grants.unmap(held.handle)
        if held.port is not None and self._bound(held.port):
            self._domain.events.apply_remote_change("closed", held.port, DOM0, held.port)   # guest's end: unbound
        self.state = VkbdState(state=held.state)
        if held.state != state:
            self._switch(state)

    def _close(self, reason: str) -> None:
        """A misbehaving frontend: the device is closed, the reason said once on the hypervisor console."""
        self._disconnect(abi.XenbusStateClosing)
        message = f"vkbd: domain {self._domid}'s keyboard frontend misbehaved: {reason}; device closed"
        self._store.write(f"/local/domain/{DOM0}/error{self._backend.removeprefix(f'/local/domain/{DOM0}')}/error",
                          message.encode())
        self._domain.hypervisor_console((message + "\n").encode())

    # ---------------------------------------------------------------- the ring (KeyboardDevice)
    def _ring(self) -> KeyboardRing | None:
        """The ring while connected (None also once the frontend closed its event channel)."""
        held = self.state
        if held.state != abi.XenbusStateConnected or held.ring_address is None or held.port is None \
                or not self._bound(held.port):
            return None
        return KeyboardRing(self._domain.vcpu.machine, held.ring_address, held.in_prod)

    def free_slots(self) -> int:
        ring = self._ring()
        return 0 if ring is None else ring.free_slots()

    def push(self, event: KeyEvent) -> None:
        ring = self._ring()
        if ring is None:
            return
        try:
            ring.check()
            if ring.free_slots() == 0:
                raise RingIndexError("the in ring is full")
        except RingIndexError as error:
            self._close(str(error))
            self._domain.xenstore_changed()
            return
        ring.push(event)
        self.state = dataclasses.replace(self.state, in_prod=ring.in_prod)
        self._domain.notify_guest(self.state.port)

    def notified(self) -> None:
        ring = self._ring()
        if ring is None:
            return
        try:
            ring.check()
        except RingIndexError as error:
            self._close(str(error))
            self._domain.xenstore_changed()
            return
        ring.consume_output()

    def owns_port(self, port: int) -> bool:
        return self.state.port == port and self._bound(port)

    def _bound(self, port: int) -> bool:
        """The guest's `port` is still connected to the backend's end (the guest may have closed it)."""
        return self._domain.events.remote_change_applies("closed", port, DOM0, port)

    # ---------------------------------------------------------------- state
    def save_state(self) -> VkbdState:
        return self.state            # frozen: shared, never changed in place

    def load_state(self, state: VkbdState) -> None:
        self.state = state

    def state_bytes(self) -> bytes:
        return repr(dataclasses.astuple(self.state)).encode()
