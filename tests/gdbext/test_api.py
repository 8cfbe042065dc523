"""The scripted debugging API (gdbext.api) on a real recording, through real GDB and `xenrr serve`.

The recording types kbdshell's long-line bug (examples/long_line.keys): `echo ` + 59 x `x` + `ABCD`,
Enter, `hist`, Enter, `halt`, Enter. Event 1 is the boot time; the n-th key typed is event n + 1.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from gdbext.api import DebugError, Debugger, xenrr_debug

LINE = "echo " + "x" * 59 + "ABCD"
ENTER_AFTER_LINE = len(LINE) + 2          # the event of the Enter that ends the long line
ABCD = int.from_bytes(b"ABCD", "little")


@pytest.fixture(scope="module")
def session(long_line_recording) -> Path:
    return long_line_recording


@pytest.fixture(scope="module")
def debugger(session) -> Debugger:
    with xenrr_debug(session) as debugger:
        yield debugger


@pytest.fixture
def d(debugger) -> Debugger:
    debugger.reset()
    return debugger


def test_a_new_debugger_stands_at_the_first_instruction_with_the_guest_symbols(d):
    stop = d.last_stop
    assert (stop.icount, stop.event, stop.function) == (0, 0, "_start")
    assert d.image.name == "kbdshell.elf" and d.damage() is None
    assert d.eval("sizeof(ed.line)") == 64


def test_events_list_every_key_with_its_instruction_count(d):
    events = d.events()
    assert events[0].number == 1 and events[0].kind == "time"
    keys = [event for event in events if event.kind == "console-input"]
    assert [event.detail for event in keys[64:68]] == ["keys 'A'", "keys 'B'", "keys 'C'", "keys 'D'"]
    assert [event.number for event in d.events(66, 69)] == [66, 67, 68, 69]
    assert all(earlier.icount <= later.icount for earlier, later in zip(events, events[1:]))
    assert d.event_count == len(events)


def test_goto_event_stops_just_before_the_event(d):
    event = d.event(ENTER_AFTER_LINE)
    stop = d.goto_event(event.number)
    assert stop.reason == "goto"
    assert (stop.event, stop.icount) == (event.number - 1, event.icount)
    assert d.when() == (event.number - 1, event.icount)
    assert d.eval("ed.hist_count") == ABCD
    assert d.registers()["rip"] == stop.pc


def test_after_goto_event_the_backtrace_reaches_the_waiting_caller_and_finish_returns_to_it(d):
    """The replay stops in the hypercall page, where kbdshell blocks for the key; the stub's symbol file
    for the page (stub/hypercall_frames.py) lets GDB unwind through it, also when the API loaded the
    guest's symbols after connecting."""
    stop = d.goto_event(ENTER_AFTER_LINE)
    frames = d.backtrace()
    assert [frame.function for frame in frames[:4]] == ["hypercall_page", "HYPERVISOR_sched_op", "events_block",
                                                        "console_read_wait"], frames
    assert frames[-1].function == "_start" and all(frame.pc for frame in frames)
    finished = d.finish()
    assert finished.function == "events_block" and finished.pc == frames[1].pc
    assert finished.event == stop.event + 1                     # the Enter was injected on the way


def test_reverse_continue_to_the_write_names_the_writer_and_the_key(d):
    d.goto_event(ENTER_AFTER_LINE)
    number = d.watch("ed.hist_count")
    stop = d.reverse_continue()
    assert stop.reason == "watchpoint"
    assert (stop.function, Path(stop.file).name) == ("line_insert", "editor.c")
    assert stop.fullname and Path(stop.fullname).is_file()
    assert (int(stop.old_value), int(stop.new_value)) == (ABCD, int.from_bytes(b"ABC", "little"))
    assert [frame.function for frame in d.backtrace()] == ["line_insert", "handle_key", "guest_main",
                                                           "start_kernel", "_start"]
    assert d.event(stop.event).detail == "keys 'D'"
    assert d.eval("c") == "D"
    d.delete(number)
    assert d.reverse_continue().reason == "history-start"


def test_forward_and_reverse_instruction_steps_are_exact(d):
    d.break_at("line_insert")
    start = d.cont()
    registers = d.registers()
    d.delete()
    assert d.reverse_stepi().icount == start.icount - 1
    assert d.stepi().icount == start.icount
    assert d.registers() == registers


def test_finish_and_reverse_finish_return_to_the_same_call(d):
    d.break_at("line_insert")
    entry = d.cont()
    assert (entry.reason, entry.function) == ("breakpoint", "line_insert")
    d.delete()
    after = d.finish()
    assert after.reason == "finish" and after.function == "handle_key"
    assert d.eval("ed.len") == 1
    assert d.reverse_step().function == "line_insert"
    before = d.reverse_finish()
    assert before.function == "handle_key" and before.icount < entry.icount
    assert d.eval("ed.len") == 0


def test_next_and_reverse_next_move_by_source_lines(d):
    d.break_at("line_insert")
    first = d.cont()
    d.delete()
    second = d.next()
    assert second.function == "line_insert" and second.line > first.line
    assert d.reverse_next().line == first.line
    assert d.step().line == second.line


def test_read_memory_agrees_with_gdb_values(d):
    d.goto_event(ENTER_AFTER_LINE)
    assert d.read_memory("&ed.hist_count", 4) == b"ABCD"
    address = d.eval("&ed")
    assert d.read_memory(address, 64) == LINE[:64].encode()


def test_the_ends_of_history_are_reported(d):
    assert d.reverse_stepi().reason == "history-start"
    end = d.cont()
    assert end.reason == "history-end" and end.event == d.event_count
    assert d.goto_event(2).icount == d.event(2).icount


def test_any_gdb_command_runs_and_motions_through_it_update_the_position(d):
    assert "No breakpoints or watchpoints." in d.gdb("info breakpoints")
    d.gdb("break handle_key")
    d.gdb("continue")
    assert (d.last_stop.reason, d.last_stop.function) == ("breakpoint", "handle_key")


@pytest.mark.parametrize("action, message", [
    (lambda d: d.eval("no_such_symbol"), 'No symbol "no_such_symbol" in current context.'),
    (lambda d: d.goto_event(10_000), "event 10000 does not exist: the recording has events 1 to 80"),
    (lambda d: d.break_at("no_such_function"), 'Function "no_such_function" not defined.'),
    (lambda d: d.watch("ed.len", access="sometimes"), "watch access must be write, read or access"),
    (lambda d: d.event(0), "event 0 does not exist: the recording has events 1 to 80"),
])
def test_errors_are_one_readable_line(d, action, message):
    with pytest.raises(DebugError) as error:
        action(d)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert d.eval("1 + 1") == 2          # the debugger is still usable


def test_sessions_that_cannot_be_debugged_raise_debug_error(tmp_path):
    with pytest.raises(DebugError, match="no such file"):
        xenrr_debug(tmp_path / "missing.xrr")
    not_a_log = tmp_path / "not_a_log.xrr"
    not_a_log.write_bytes(b"hello")
    with pytest.raises(DebugError) as error:
        xenrr_debug(not_a_log)
    assert "\n" not in str(error.value) and not str(error.value).startswith("xenrr:")


def test_events_filter_by_kind_keeping_their_numbers(d):
    keys = d.events(kind="console-input")
    assert [event.number for event in keys] == list(range(2, d.event_count + 1))
    assert d.events(kind="time, timer")[0].number == 1
    assert [event.detail for event in d.events(66, 69, kind="console-input")] == \
        ["keys 'A'", "keys 'B'", "keys 'C'", "keys 'D'"]
    with pytest.raises(DebugError, match="unknown record kind tick"):
        d.events(kind="tick")


def test_a_bookmark_brings_back_the_position_and_the_state(d):
    d.break_at("line_insert")
    first = d.cont()
    d.bookmark("first-key")
    d.cont()
    d.goto_event(60)
    assert d.bookmarks() == {"first-key": first.icount}
    back = d.goto_bookmark("first-key")
    assert (back.reason, back.icount, back.event, back.function) == ("goto", first.icount, first.event, "line_insert")
    assert d.eval("ed.len") == 0
    with pytest.raises(DebugError, match="no bookmark named 'second'"):
        d.goto_bookmark("second")
    with pytest.raises(DebugError, match="one word"):
        d.bookmark("two words")


def test_eval_returns_python_values_by_their_c_type(d):
    d.break_at("run_command")
    d.cont()                                                  # the long line is submitted
    assert d.eval("line") == LINE                             # const char *: the string up to its NUL
    assert (d.eval("*line"), d.eval("(unsigned char) *line")) == ("e", ord("e"))   # char: str; uint8: int
    assert d.eval("ed.line") == LINE[:64]                     # char[64], full: all 64 characters
    assert d.eval("ed") == {"line": LINE[:64], "hist_count": ABCD + 1, "len": 0, "after_cr": d.eval("ed.after_cr")}
    assert d.eval("history.text")[0] == LINE                  # an array of char arrays: a list of str
    assert d.eval("&ed") == int(d.eval_text("(unsigned long) &ed"))
    assert d.eval("(char *) 0") is None
    assert (d.eval("(enum calc_error) 2"), d.eval("(enum calc_error) 7")) == ("CALC_DIV_ZERO", 7)
    assert d.eval("3 / 2.0") == 1.5 and d.eval("ed.len >= 0") == 1
    assert d.eval_text("*line") == "101 'e'"


def test_a_conditional_breakpoint_stops_only_where_its_condition_holds_both_ways(d):
    d.break_at("handle_key if ed.len == 0")          # the first key of each line
    stops, keys = [], []
    while (stop := d.cont()).reason == "breakpoint":
        stops.append(stop.icount)
        keys.append(d.eval("c"))
    assert keys == ["e", "h", "h"] and stop.reason == "history-end"     # echo, hist, halt
    back = []
    while (stop := d.reverse_continue()).reason == "breakpoint":
        back.append(stop.icount)
    assert back == stops[::-1] and stop.reason == "history-start"


def test_motions_report_progress_outside_the_commands_output(d):
    """The stub's progress lines reach `report_progress`'s callback, never a command's output (after=0:
    from the first poll of a motion, so that a short recording reports too)."""
    assert d.cont().reason == "history-end"                        # nothing is reported unless asked for
    end = d.last_stop.icount
    reports: list = []
    d.report_progress(reports.append, after=0)
    try:
        output = d.gdb("reverse-continue")
        assert d.last_stop.reason == "history-start" and "xenrr progress" not in output
        assert reports and {(report.command, report.total) for report in reports} == {("reverse-continue", end)}
        assert all(0 <= report.done <= end for report in reports)
        reports.clear()
        assert d.cont().reason == "history-end" and d.last_stop.icount == end
        assert reports and {(report.command, report.total) for report in reports} == {("continue", end)}
    finally:
        d.report_progress(None)
    reports.clear()
    assert d.reverse_continue().reason == "history-start" and reports == []
