"""Property: whatever is typed on the PV keyboard, and however the host interrupts the run loop, replay
reproduces the recording exactly - the same console bytes and the same final state digest, which covers
the keyboard backend's state (io/kbdif.h ring indices, XenbusState, mapped grant, bound port).

As tests/dom0/test_record_property.py for the console: kbdshell recorded in-process under the real clock
(a real log daemon process) with a random key script - printable text (Shift for capitals and symbols),
Enter, Backspace, keys held by name, pauses - and a random scheduler slice size; then replayed.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dom0.keyboard import KeyEventScript
from dom0.record import record
from dom0.replay import ReplaySession
from dom0.toolstack import connect_xenstore, xenstore_config
from xen.builder import build_domain
from xen.domain import Domain

MEMORY_BYTES = 2 * 1024 * 1024
SAFETY_LIMIT = 20_000_000


def as_keys(text: str) -> str:
    return "".join(rf"\x{ord(char):02x}" if char.isdigit() or char == "\\" else char for char in text)


key_tokens = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=10).map(as_keys),
    st.just(r"\r"),
    st.just(r"\x7f"),
    st.sampled_from([r"\d{LEFTSHIFT}ab\u{LEFTSHIFT}", r"\k{UP}", r"\d{LEFTCTRL}c\u{LEFTCTRL}"]),
    st.integers(0, 15).map(lambda ms: rf"\p{ms}"),
)
key_scripts = st.lists(key_tokens, max_size=8).map(lambda tokens: "".join(tokens) + r"\rhalt\r")


@pytest.fixture(scope="module")
def kbdshell_image(kbdshell_elf) -> bytes:
    return kbdshell_elf.read_bytes()


@settings(max_examples=10, deadline=None)
@given(script=key_scripts, slice_instructions=st.sampled_from([100, 5000, 1_000_000]))
def test_replay_reproduces_a_keyboard_recording(tmp_path_factory, kbdshell_elf, kbdshell_image, script,
                                                slice_instructions):
    path = tmp_path_factory.mktemp("vkbd-property") / "session.xrr"
    recorded_console = bytearray()
    domain = Domain(build_domain(kbdshell_image, MEMORY_BYTES), jit=False, console_output=recorded_console.extend)
    config = xenstore_config(kbdshell_elf, "pv")
    connect_xenstore(domain, config)
    result = record(domain, kbdshell_elf, KeyEventScript(script), path, clock="real", max_instructions=SAFETY_LIMIT,
                    linger_ns=10**9, slice_instructions=slice_instructions, xenstore=config, keyboard=True)
    assert result.outcome.reason in ("shutdown", "instruction-limit"), result.outcome
    assert recorded_console.startswith(b"kbdshell ready (PV keyboard)")
    replayed_console = bytearray()
    session = ReplaySession(path, console_output=replayed_console.extend, jit=False)
    try:
        session.replayer.run()                 # raises ReplayDivergence on any difference, END digest included
        assert session.replayer.recorded_outcome == f"{result.outcome.reason}:{result.outcome.detail}"
        assert bytes(replayed_console) == bytes(recorded_console)
    finally:
        session.close()
