"""Where kbdshell's long-line bug writes out of bounds (guests/kbdshell/README.md, "The deliberate bug").

Recording: long_line.keys - the 68-character line `echo ` + 59 x `x` + `ABCD`, Enter, `hist`, Enter,
`halt`, Enter. `ed.line` holds 64 characters; the 65th to 68th (`ABCD`) land in `ed.hist_count`.
With --clock virtual every key is an input event of its own, so the event that typed the n-th
character is found from `d.events()`.

Run: `xenrr check long_line.xrr examples/test_long_line.py`, or `pytest examples` (conftest.py records).
"""
LINE = "echo " + "x" * 59 + "ABCD"
ABCD = int.from_bytes(b"ABCD", "little")


def keystroke(d, n):
    """The input event that typed the n-th key of the recording (1-based)."""
    keys = [event for event in d.events() if event.kind == "console-input"]
    return keys[n - 1]


def test_hist_count_is_already_wrong_when_the_line_ends(d):
    d.goto_event(keystroke(d, len(LINE) + 1).number)        # just before the Enter that ends the line
    assert d.eval("ed.len") == 68
    assert d.eval("ed.hist_count") == ABCD, "bytes 65-68 of the line should be in hist_count"


def test_the_last_write_before_enter_is_line_insert_called_from_handle_key(d):
    d.goto_event(keystroke(d, len(LINE) + 1).number)
    d.watch("ed.hist_count")
    stop = d.reverse_continue()
    assert stop.reason == "watchpoint", stop.describe()
    assert stop.function == "line_insert", stop.describe()
    assert [frame.function for frame in d.backtrace()[:2]] == ["line_insert", "handle_key"]
    assert d.eval("c") == "D"
    assert stop.event == keystroke(d, 68).number, "the last event applied is the key that typed 'D'"


def test_the_first_write_out_of_bounds_is_the_65th_character(d):
    d.watch("ed.hist_count")
    stop = d.cont()                                          # forwards from the first instruction
    assert stop.function == "line_insert", stop.describe()
    assert stop.event == keystroke(d, 65).number
    d.reverse_stepi()                                        # back to just before the store
    assert d.eval("ed.len") == 64, "line_insert stores at ed.line[64], one past the end"
    assert d.eval("c") == "A"
    assert d.reverse_continue().reason == "history-start", "nothing wrote hist_count before"


def test_from_the_end_the_normal_increments_come_first(d):
    assert d.cont().reason == "history-end"
    d.watch("ed.hist_count")
    writers = [d.reverse_continue().function for _ in range(4)]
    assert writers == ["submit_line"] * 3 + ["line_insert"], "the halt, hist and long lines' ++, then the bug"
