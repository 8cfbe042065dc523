"""The README's demo transcript says what `make demo` prints (scripts/demo.py runs the same commands)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEMO_KEYS = "echo " + "x" * 59 + r"ABCD\rhist\rhalt\r"
README_CHECKOUT = "/work/main"       # where the README's byte count was measured (it says so)


def _transcript_line(prefix: str) -> str:
    return next(line.strip() for line in README.splitlines() if line.strip().startswith(prefix))


def test_the_demo_record_and_replay_lines_match_a_real_run(xenrr, kbdshell_elf, tmp_path):
    log = tmp_path / "long-line.xrr"
    recorded = xenrr("record", kbdshell_elf, "-o", log, "--force", "--clock", "virtual", "--keys", DEMO_KEYS)
    replayed = xenrr("replay", log, "--quiet")
    # The log's size depends on how many blocks the daemon flushed (a flush also happens on a timer, so a
    # loaded machine writes a few more block headers): the README's figure must be this run's within 10 %.
    readme_line = _transcript_line("xenrr: domain shut down (poweroff) after")
    readme_size = int(re.search(r"\((\d+) bytes\)", readme_line).group(1))
    size_there = log.stat().st_size - (len(str(kbdshell_elf.resolve())) -
                                       len(f"{README_CHECKOUT}/guests/kbdshell/kbdshell.elf"))
    assert abs(readme_size - size_there) <= size_there // 10, (readme_size, size_there)
    expected_record = re.sub(r"\(\d+ bytes\)", f"({readme_size} bytes)",
                             recorded.stderr.strip().replace(str(log), "build/demo/long-line.xrr"))
    assert readme_line == expected_record
    assert _transcript_line("xenrr: replayed to the end") == replayed.stderr.strip()
    command = _transcript_line("$ xenrr record guests/kbdshell/kbdshell.elf -o build/demo/long-line.xrr")
    assert re.sub(r"x{3}\.\.\.x{3}", "x" * 59, command).endswith(f"--force --clock virtual --keys '{DEMO_KEYS}'")
    assert "--force" in (ROOT / "scripts" / "demo.py").read_text()
