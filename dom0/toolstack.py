"""The toolstack's part in creating a domain: the xenstore tree libxl writes, and introducing the domain.

Owns what `xl create` leaves in xenstore for a PV domain before it is unpaused (libxl's
libxl__domain_make and libxl__build_post, libxl__device_console_add): the domain's home
/local/domain/N (dom0 owns it, the domain may read it) with name, domid, vm, cpu, memory, control
(the nodes the guest answers in are its own), store and console entries, the /vm/<uuid> node and the
console backend directory; a PV keyboard's device directories are dom0/vkbd.py's. Invariant: the tree is a pure function of the domain's image and the
recorded configuration (`xenstore_config`), so a replay rebuilds exactly what the recording started with.
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path

from dom0.vkbd import VkbdBackend
from dom0.xenstored import DOM0, Perms, Xenstored
from xen.domain import DOMID as GUEST_DOMID
from xen.domain import Domain

CONSOLE_LIMIT = 1048576          # libxl's default console log limit


def xenstore_config(guest: Path, keyboard: str = "console") -> dict:
    """The configuration of a new domain's xenstore, as stored in a recording's header (a domain on a host
    also has its "uuid"): the domain is named after the guest file (characters outside [A-Za-z0-9_.@-]
    become '_', at most 64); with keyboard "pv" it has a PV keyboard device (xl.cfg `vkb = [ "" ]`)."""
    name = re.sub(r"[^A-Za-z0-9_.@-]", "_", guest.stem)[:64] or "domain"
    config = {"domid": GUEST_DOMID, "name": name}
    if keyboard == "pv":
        config["keyboard"] = "pv"
    return config


def connect_xenstore(domain: Domain, config: dict) -> Xenstored:
    """Start a xenstored holding the tree libxl writes for `domain` (and its PV keyboard backend, if
    configured) and introduce the domain to it."""
    domain.domid = config["domid"]
    store = Xenstored(config["domid"])
    write_domain_tree(store, domain, config["domid"], config["name"], config.get("uuid"))
    domain.connect_xenstore(store)
    if config.get("keyboard") == "pv":
        domain.connect_keyboard(VkbdBackend(domain, store))
    return store


def write_domain_tree(store: Xenstored, domain: Domain, domid: int, name: str,
                      vm_uuid: str | None = None) -> None:
    """The tree of domain `domid`; its /vm/<uuid> is `vm_uuid` (a host gives each domain its own, as libxl
    does), else one made from the image's hash (a lone domain's)."""
    image = domain.image
    home = f"/local/domain/{domid}"
    vm_uuid = vm_uuid or str(uuid.UUID(image.image_sha256[:32], version=4))
    vm_path = f"/vm/{vm_uuid}"
    none: Perms = (("n", DOM0),)
    read_only: Perms = (("n", DOM0), ("r", domid))      # libxl's roperm
    read_write: Perms = (("n", domid),)                  # libxl's rwperm: the domain owns it
    backend_perms: Perms = (("n", DOM0), ("r", domid))

    store.mkdir("/local/domain/0", none)
    store.write("/local/domain/0/name", b"Domain-0")
    store.write("/local/domain/0/domid", b"0")
    store.mkdir(home, read_only)
    store.mkdir(vm_path, read_only)
    store.mkdir(f"/libxl/{domid}", none)
    store.mkdir(f"/libxl/{domid}/device", none)
    store.write(f"{home}/vm", vm_path.encode())
    store.write(f"{home}/name", name.encode())
    for directory in ("cpu", "memory", "device", "control"):
        store.mkdir(f"{home}/{directory}", read_only)
    for owned in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                  "control/feature-suspend", "control/sysrq", "device/suspend/event-channel",
                  "data", "drivers", "feature", "attr", "error"):
        store.mkdir(f"{home}/{owned}", read_write)
    store.write(f"{vm_path}/uuid", vm_uuid.encode())
    store.write(f"{vm_path}/name", name.encode())
    store.write(f"{home}/control/platform-feature-multiprocessor-suspend", b"1")
    store.write(f"{home}/control/platform-feature-xs_reset_watches", b"1")
    store.write(f"/libxl/{domid}/type", b"pv")
    memory_kib = image.memory_bytes // 1024
    for key, value in (("memory/static-max", memory_kib), ("memory/target", memory_kib),
                       ("memory/videoram", 0), ("domid", domid),
                       ("store/port", domain.store_port), ("store/ring-ref", image.store_frame),
                       ("cpu/0/availability", "online")):
        store.write(f"{home}/{key}", str(value).encode())
    backend = f"/local/domain/{DOM0}/backend/console/{domid}/0"
    store.mkdir(f"{home}/console", (("n", domid), ("r", DOM0)))     # a frontend: the backend may read it
    for key, value in (("backend", backend), ("backend-id", DOM0), ("limit", CONSOLE_LIMIT),
                       ("type", "xenconsoled"), ("output", "pty"), ("port", domain.console_port),
                       ("ring-ref", image.console_frame)):
        store.write(f"{home}/console/{key}", str(value).encode())
    store.mkdir(backend, backend_perms)
    for key, value in (("frontend", f"{home}/console"), ("frontend-id", domid), ("online", 1), ("state", 1),
                       ("protocol", "vt100")):
        store.write(f"{backend}/{key}", str(value).encode())


def toolstack_paths(store: Xenstored, domid: int) -> list[str]:
    """What libxl removes from xenstore when domain `domid` goes: its home, its /vm and /libxl nodes and
    its backend directories (/local/domain/0/backend/<type>/<domid>), those that exist."""
    home = f"/local/domain/{domid}"
    vm = store.read(f"{home}/vm")
    paths = [home, f"/libxl/{domid}"] + ([vm.decode("latin-1")] if vm and vm.startswith(b"/vm/") else [])
    backends = f"/local/domain/{DOM0}/backend"
    paths += [f"{backends}/{kind}/{domid}" for kind in store.children(backends)]
    return [path for path in paths if store.read(path) is not None]
