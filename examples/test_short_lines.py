"""kbdshell's line history when no line is too long: what must keep holding once the bug is fixed.

Recording: short_lines.keys - `echo hello`, `calc (2+4)*7`, `hist`, `halt`, each ended by Enter.
Only submit_line may write `ed.hist_count`, one increment per line entered.

Run: `xenrr check short_lines.xrr examples/test_short_lines.py`, or `pytest examples`.
"""


def test_only_submit_line_writes_hist_count_one_increment_per_line(d):
    d.watch("ed.hist_count")
    counts = []
    while (stop := d.cont()).reason == "watchpoint":
        assert stop.function == "submit_line", stop.describe()
        counts.append(int(stop.new_value))
    assert stop.reason == "history-end"
    assert counts == [1, 2, 3, 4]


def test_hist_is_run_after_three_lines(d):
    d.break_at("print_history")
    stop = d.cont()
    assert stop.function == "print_history", stop.describe()
    assert d.eval("ed.hist_count") == 3
    assert [frame.function for frame in d.backtrace()[1:3]] == ["run_command", "submit_line"]


def test_stepping_back_out_of_line_insert_undoes_the_key(d):
    d.break_at("line_insert")
    stop = d.cont()                                          # the first key typed, the `e` of `echo`
    assert stop.reason == "breakpoint", stop.describe()
    assert d.eval("c") == "e"
    assert d.finish().function == "handle_key"
    assert d.eval("ed.len") == 1
    d.delete()
    assert d.reverse_step().function == "line_insert"       # back into the function that just returned
    assert d.reverse_finish().function == "handle_key"      # back to before the call
    assert d.eval("ed.len") == 0
