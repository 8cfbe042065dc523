"""Property: whatever keys arrive when, and however the host interrupts the run loop, replay reproduces
the recording exactly - the same console bytes and the same final state digest.

Each example records kbdshell in-process (`dom0.record.record`, real clock, a real log daemon process,
real shared memory) with a random key script (printable text, CR, backspace, `\\pN` pauses, short
`bench N` runs that keep the vCPU busy across slice boundaries) under random host-side interruptions:
a random scheduler slice size (how often the run loop stops to inject due timers and keys) and, in
some examples, a CPU hog process competing for the two cores. It then replays the log in-process.
The engine's interpreter (jit=False) and 2 MiB of guest memory keep an example at about 0.3 s;
the CLI tests (test_record_replay.py) cover the JIT.
"""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dom0.consoleinput import KeyScript, parse_key_script
from dom0.logfile import LogReader
from dom0.record import record
from dom0.replay import ReplaySession
from xen.builder import build_domain
from xen.digest import parse_end_payload
from xen.domain import Domain
from xen.logrecord import KIND_END

MEMORY_BYTES = 2 * 1024 * 1024
SAFETY_LIMIT = 50_000_000           # random text cannot make the run endless


def as_keys(text: str) -> str:
    """`text` typed literally: a backslash escaped, and digits as \\xNN (after a pause, `\\p5` `1` would be `\\p51`)."""
    return "".join(rf"\x{ord(char):02x}" if char.isdigit() or char == "\\" else char for char in text)


printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12)
key_tokens = st.one_of(
    printable.map(as_keys),
    st.just(r"\r"),
    st.sampled_from([r"\x7f", r"\x08"]),                                  # backspace: DEL or BS
    st.integers(0, 15).map(lambda ms: rf"\p{ms}"),
    st.integers(0, 20_000).map(lambda n: rf"bench {n}\r"),                # up to 160k busy instructions
)
key_scripts = st.lists(key_tokens, max_size=12).map(lambda tokens: "".join(tokens) + r"\rhalt\r")
slice_sizes = st.one_of(st.sampled_from([50, 1000, 1_000_000]), st.integers(50, 1_000_000))


@pytest.fixture(scope="module")
def kbdshell_image(kbdshell_elf) -> bytes:
    return kbdshell_elf.read_bytes()


@pytest.fixture(scope="module")
def cpu_hog():
    """A process that burns a core while running; stopped (SIGSTOP) until an example continues it. It ends
    by itself when pytest does (its parent changes), also when pytest is killed before the fixture ends."""
    burn_while_parent_lives = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
    process = subprocess.Popen([sys.executable, "-c", burn_while_parent_lives])
    process.send_signal(signal.SIGSTOP)
    yield process
    process.kill()
    process.wait()


@settings(max_examples=200, deadline=None)
@given(script=key_scripts, slice_instructions=slice_sizes, busy_host=st.integers(0, 3).map(lambda n: n == 0))
def test_replay_reproduces_console_and_final_digest(tmp_path_factory, kbdshell_elf, kbdshell_image, cpu_hog, script,
                                                    slice_instructions, busy_host):
    path = tmp_path_factory.mktemp("property") / "session.xrr"
    recorded_console = bytearray()
    domain = Domain(build_domain(kbdshell_image, MEMORY_BYTES), jit=False, console_output=recorded_console.extend)
    if busy_host:
        cpu_hog.send_signal(signal.SIGCONT)
    try:
        result = record(domain, kbdshell_elf, KeyScript(parse_key_script(script)), path, clock="real",
                        max_instructions=SAFETY_LIMIT, linger_ns=10**9, slice_instructions=slice_instructions)
    finally:
        cpu_hog.send_signal(signal.SIGSTOP)
    assert result.outcome.reason in ("shutdown", "instruction-limit"), result.outcome

    replayed_console = bytearray()
    session = ReplaySession(path, console_output=replayed_console.extend, jit=False)
    try:
        assert session.damage is None
        session.replayer.run()          # raises ReplayDivergence on any difference, END digest included
        assert session.replayer.recorded_outcome == f"{result.outcome.reason}:{result.outcome.detail}"
        assert session.domain.vcpu.icount == result.outcome.icount
        assert bytes(replayed_console) == bytes(recorded_console)
        with LogReader(path) as log:
            records = list(log.records())
            assert len(records) == result.records
            assert records[-1].kind == KIND_END
            recorded_digest, _ = parse_end_payload(bytes(records[-1].payload))
        assert session.domain.digest(with_memory=True, in_clear=True) == recorded_digest
    finally:
        session.close()
