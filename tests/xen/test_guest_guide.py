"""docs/guests.md stays true: its hypercall table names exactly the hypercalls xenrr serves, and its
notes table marks required exactly the notes the builder requires."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from xen import abi
from xen.builder import BuildError, build_domain
from xen.hypercalls import HANDLERS

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "guests.md").read_text()


def _table_rows(heading: str) -> list[list[str]]:
    section = GUIDE.split(heading, 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.strip().startswith("|") and "---" not in line][1:]


def test_the_hypercall_table_names_every_hypercall_served_with_its_number():
    named = {}
    for cells in _table_rows("## Hypercalls"):
        for name, number in re.findall(r"`(\w+)` \((\d+)\)", cells[0]):
            named[name] = int(number)
    served = {abi_name[len("HYPERVISOR_"):]: value for abi_name, value in vars(abi).items()
              if abi_name.startswith("HYPERVISOR_") and value in HANDLERS}
    assert named == served


@pytest.mark.parametrize("note", [cells[0].strip("`") for cells in _table_rows("## The image")
                                  if cells[1] == "yes"])
def test_a_note_the_guide_calls_required_is_required(minimal_elf, note):
    image = bytearray(minimal_elf.read_bytes())
    number = getattr(abi, note)
    marker = (4).to_bytes(4, "little")       # namesz of a "Xen" note; its type follows the descsz
    position = next(match.start() for match in re.finditer(re.escape(marker), image)
                    if image[match.start() + 8:match.start() + 12] == number.to_bytes(4, "little")
                    and image[match.start() + 12:match.start() + 16] == b"Xen\0")
    image[position + 8:position + 12] = (0x7777).to_bytes(4, "little")     # an unknown note type instead
    with pytest.raises(BuildError, match=note.removeprefix("XEN_ELFNOTE_")):
        build_domain(bytes(image), 16 << 20)
