"""xen/abi.py against the real Xen public headers in /usr/include/xen.

A C program generated from xen.abi's own structures and constants is compiled with gcc against the
headers and prints, for every structure, its size and the offset, size and signedness of every field
(nested ones by their C path, e.g. console.domU.mfn), and the value of every constant. Any drift on
either side - a field moved, resized, renamed or missing in C, a constant changed - fails here.
"""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xen import abi

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not Path("/usr/include/xen/xen.h").exists(),
    reason="needs gcc and the Xen public headers (libxen-dev)",
)

# Every top-level structure in xen.abi and its C type. Nested helper types (unions, anonymous
# members) are checked through the fields of these.
C_TYPES: dict[type, str] = {
    abi.VcpuTimeInfo: "struct vcpu_time_info",
    abi.ArchVcpuInfo: "struct arch_vcpu_info",
    abi.VcpuInfo: "struct vcpu_info",
    abi.VcpuRunstateInfo: "struct vcpu_runstate_info",
    abi.VcpuRegisterRunstateMemoryArea: "struct vcpu_register_runstate_memory_area",
    abi.VcpuRegisterVcpuInfo: "struct vcpu_register_vcpu_info",
    abi.MulticallEntry: "struct multicall_entry",
    abi.XenMachphysMapping: "struct xen_machphys_mapping",
    abi.XenMemoryMap: "struct xen_memory_map",
    abi.ArchSharedInfo: "struct arch_shared_info",
    abi.SharedInfo: "struct shared_info",
    abi.StartInfo: "struct start_info",
    abi.XenconsInterface: "struct xencons_interface",
    abi.IretContext: "struct iret_context",
    abi.SchedShutdown: "struct sched_shutdown",
    abi.SchedPoll: "struct sched_poll",
    abi.EvtchnAllocUnbound: "struct evtchn_alloc_unbound",
    abi.EvtchnBindInterdomain: "struct evtchn_bind_interdomain",
    abi.EvtchnBindVirq: "struct evtchn_bind_virq",
    abi.EvtchnBindIpi: "struct evtchn_bind_ipi",
    abi.EvtchnBindVcpu: "struct evtchn_bind_vcpu",
    abi.EvtchnClose: "struct evtchn_close",
    abi.EvtchnSend: "struct evtchn_send",
    abi.EvtchnUnmask: "struct evtchn_unmask",
    abi.EvtchnStatus: "struct evtchn_status",
    abi.VcpuSetPeriodicTimer: "struct vcpu_set_periodic_timer",
    abi.VcpuSetSingleshotTimer: "struct vcpu_set_singleshot_timer",
    abi.XenFeatureInfo: "struct xen_feature_info",
    abi.XenPlatformParameters: "struct xen_platform_parameters",
    abi.CallbackRegister: "struct callback_register",
    abi.CallbackUnregister: "struct callback_unregister",
    abi.TrapInfo: "struct trap_info",
    abi.CpuUserRegs: "struct cpu_user_regs",
    abi.VcpuGuestContext: "struct vcpu_guest_context",
    abi.XsdSockmsg: "struct xsd_sockmsg",
    abi.XenstoreDomainInterface: "struct xenstore_domain_interface",
    abi.GrantEntryV1: "struct grant_entry_v1",
    abi.GnttabSetupTable: "struct gnttab_setup_table",
    abi.GnttabQuerySize: "struct gnttab_query_size",
    abi.PhysdevEoi: "struct physdev_eoi",
    abi.PhysdevPirqEoiGmfn: "struct physdev_pirq_eoi_gmfn",
    abi.PhysdevIrqStatusQuery: "struct physdev_irq_status_query",
    abi.PhysdevSetIopl: "struct physdev_set_iopl",
    abi.PhysdevSetIobitmap: "struct physdev_set_iobitmap",
    abi.PhysdevGetFreePirq: "struct physdev_get_free_pirq",
    abi.PhysdevMapPirq: "struct physdev_map_pirq",
    abi.PhysdevUnmapPirq: "struct physdev_unmap_pirq",
    abi.GnttabSetVersion: "struct gnttab_set_version",
    abi.GnttabGetVersion: "struct gnttab_get_version",
    abi.MmuUpdate: "struct mmu_update",
    abi.MmuextOp: "struct mmuext_op",
    abi.XenkbdPage: "struct xenkbd_page",
    abi.XenkbdKey: "struct xenkbd_key",
}

# Constants whose C spelling differs from the Python name (see xen/abi.py's docstring).
C_EXPRESSIONS = {
    "BOUNCE_FRAME_CS": "(FLAT_KERNEL_CS & ~3)",
    "XENCONS_IN_SIZE": "sizeof(((struct xencons_interface *)0)->in)",
    "XENCONS_OUT_SIZE": "sizeof(((struct xencons_interface *)0)->out)",
}
# Constants no public header defines.
NOT_IN_HEADERS = {"PAGE_SIZE"}

HEADERS = [
    "xen/xen.h",
    "xen/sched.h",
    "xen/event_channel.h",
    "xen/vcpu.h",
    "xen/version.h",
    "xen/callback.h",
    "xen/memory.h",
    "xen/features.h",
    "xen/elfnote.h",
    "xen/io/console.h",
    "xen/io/xs_wire.h",
    "xen/grant_table.h",
    "xen/io/xenbus.h",
    "xen/io/kbdif.h",
]
CFLAGS = ["-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__", "-Wall", "-Werror"]


def is_ctypes_aggregate(ctype: type) -> bool:
    return issubclass(ctype, (ctypes.Structure, ctypes.Union))


def field_paths(cls: type, prefix: str = "", base: int = 0):
    """(C member path, offset, size, ctypes type) of every field, recursing into nested aggregates."""
    for name, ctype in cls._fields_:
        descriptor = getattr(cls, name)
        path = prefix + name
        yield path, base + descriptor.offset, descriptor.size, ctype
        if is_ctypes_aggregate(ctype):
            yield from field_paths(ctype, path + ".", base + descriptor.offset)


def is_signed(ctype: type) -> bool:
    return ctype(-1).value < 0


def is_integer_scalar(ctype: type) -> bool:
    return not issubclass(ctype, (ctypes.Array, ctypes.Structure, ctypes.Union)) and ctype is not ctypes.c_char


def python_constants() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(abi).items()
        if not name.startswith("_") and isinstance(value, int) and not isinstance(value, bool)
    }


def is_errno(name: str) -> bool:
    """XEN_EINVAL and friends: printed by xen/errno.h's XEN_ERRNO() list, not as macros."""
    return re.fullmatch(r"XEN_E[A-Z0-9]+", name) is not None


def c_expression(name: str) -> str:
    if name.removeprefix("HYPERVISOR_") in abi.HYPERCALL_NAMES.values():
        return "__" + name
    return C_EXPRESSIONS.get(name, name)


def c_signedness(member: str) -> str:
    """C expression: 1 if `member` is a signed integer, 0 if unsigned, -1 if a pointer (an address)."""
    member_type = f"__typeof__({member})"
    return f"__builtin_classify_type({member}) == 5 ? -1 : (int)(({member_type})-1L < ({member_type})0)"


def generate_c_program() -> str:
    lines = ["#include <stdint.h>", "#include <stdio.h>", "#include <stddef.h>"]
    lines += [f"#include <{header}>" for header in HEADERS]
    lines += ["int main(void)", "{"]
    for cls, ctype_name in C_TYPES.items():
        lines.append(f'    printf("size {cls.__name__} %zu\\n", sizeof({ctype_name}));')
        for path, _, _, ctype in field_paths(cls):
            key = f"{cls.__name__}.{path}"
            member = f"(({ctype_name} *)0)->{path}"
            lines.append(f'    printf("offset {key} %zu\\n", offsetof({ctype_name}, {path}));')
            lines.append(f'    printf("size {key} %zu\\n", sizeof({member}));')
            if is_integer_scalar(ctype):
                lines.append(f'    printf("signed {key} %d\\n", {c_signedness(member)});')
    for name in python_constants():
        if is_errno(name) or name in NOT_IN_HEADERS:
            continue
        lines.append(f'    printf("const {name} %llu\\n", (unsigned long long)({c_expression(name)}));')
    lines.append('#define XEN_ERRNO(name, value) printf("const XEN_" #name " %d\\n", value);')
    lines.append("#include <xen/errno.h>")
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory) -> dict[str, int]:
    """Run the generated program; map "size X", "offset X.f", "const N", ... to the header's value."""
    workdir = tmp_path_factory.mktemp("abi")
    source = workdir / "abi_layout.c"
    source.write_text(generate_c_program())
    program = workdir / "abi_layout"
    build = subprocess.run(["gcc", *CFLAGS, "-o", program, source], capture_output=True, text=True)
    assert build.returncode == 0, f"the headers reject xen.abi's names:\n{build.stderr}"
    output = subprocess.run([program], capture_output=True, text=True, check=True).stdout
    facts = {}
    for line in output.splitlines():
        kind, key, value = line.split()
        facts[f"{kind} {key}"] = int(value)
    return facts


def test_every_structure_is_checked():
    checked = set(C_TYPES)
    for cls in C_TYPES:
        checked |= {ctype for *_, ctype in field_paths(cls) if is_ctypes_aggregate(ctype)}
    defined = {
        value
        for value in vars(abi).values()
        if isinstance(value, type) and is_ctypes_aggregate(value) and not value.__name__.startswith("_")
    }
    assert defined <= checked, f"add to C_TYPES: {sorted(c.__name__ for c in defined - checked)}"


@pytest.mark.parametrize("cls", list(C_TYPES), ids=lambda cls: cls.__name__)
def test_structure_layout_matches_headers(cls, c_facts):
    assert ctypes.sizeof(cls) == c_facts[f"size {cls.__name__}"]
    for path, offset, size, ctype in field_paths(cls):
        key = f"{cls.__name__}.{path}"
        assert offset == c_facts[f"offset {key}"], f"offset of {key}"
        assert size == c_facts[f"size {key}"], f"size of {key}"
        if is_integer_scalar(ctype):
            c_signed = c_facts[f"signed {key}"]
            if c_signed == -1:  # a C pointer: an unsigned 64-bit address on our side
                assert ctype is ctypes.c_uint64, f"{key} is a pointer in C"
            else:
                assert is_signed(ctype) == bool(c_signed), f"signedness of {key}"


def test_constants_match_headers(c_facts):
    # The C side prints every value as unsigned long long: negative ones (GNTST_*) arrive modulo 2^64.
    checked = {name: value % 2**64 for name, value in python_constants().items() if name not in NOT_IN_HEADERS}
    header_values = {name: c_facts.get(f"const {name}") for name in checked}
    assert checked == header_values


def test_hypercall_table_is_complete(tmp_path):
    """Every numbered __HYPERVISOR_x the headers define (the arch_N placeholders aside) is named."""
    source = tmp_path / "macros.c"
    source.write_text("#include <stdint.h>\n#include <xen/xen.h>\n")
    macros = subprocess.run(
        ["gcc", *CFLAGS, "-dM", "-E", source], capture_output=True, text=True, check=True
    ).stdout
    defined = {
        match[1]: int(match[2])
        for match in re.finditer(r"^#define __HYPERVISOR_([a-z]\w*) +(\d+)", macros, re.MULTILINE)
        if not match[1].startswith("arch_")
    }
    assert abi.HYPERCALL_NAMES == {number: name for name, number in defined.items()}

