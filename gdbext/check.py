"""Check scripts run by pytest itself, with a plugin that gives each check a Debugger as `d`.

Owns how `xenrr check` runs scripts: `pytest.main` on the scripts (or directories of `test_*.py`
scripts) with `CheckPlugin`, which provides the fixture `d` (one `gdbext.api.Debugger` on the
recording, started at the first check that asks for it and reset before each) and collects each
check's outcome. pytest does the collecting, the `-k` selection and the assertion rewriting, so a
failed `assert` explains its values as in any pytest run; the scripts stay plain pytest files
(examples/conftest.py gives them `d` under plain pytest). Conftest files and pytest configuration
files around the scripts are not read: only the recording given decides what `d` debugs.

Invariant: `run_checks` returns one `CheckResult` per selected check, in the order pytest ran them,
or raises `CheckLoadError` (a script that does not load, nothing to run, a recording that cannot be
debugged) with one line; a Ctrl-C is re-raised as KeyboardInterrupt once GDB and the server are gone.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from gdbext.api import DebugError, Debugger, xenrr_debug


class CheckLoadError(Exception):
    """The checks cannot run at all: one line."""


@dataclass(frozen=True)
class CheckResult:
    """How one check ended. `line` and `source` locate a failure in the script (the deepest line of the
    script in the traceback); `message` is pytest's explanation: an assertion with its values, or
    `Type: message`."""
    name: str
    file: str
    outcome: str                 # "passed", "failed", "error" (its setup failed), "skipped"
    line: int | None = None
    source: str = ""
    message: str = ""
    output: str = ""             # what the check printed (captured by pytest)

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class CheckPlugin:
    """The pytest plugin of one `xenrr check` run."""

    def __init__(self, session: Path, image: Path | None):
        self.session = session
        self.image = image
        self.results: list[CheckResult] = []
        self.load_errors: list[str] = []
        self.fatal: str | None = None            # the recording cannot be debugged
        self.interrupted = False
        self._debugger: Debugger | None = None

    @pytest.fixture
    def d(self) -> Debugger:
        """A Debugger on the recording, reset: no breakpoints, at the first instruction."""
        if self._debugger is None:
            try:
                self._debugger = xenrr_debug(self.session, self.image)
            except DebugError as error:
                self.fatal = str(error)
                pytest.exit(self.fatal, returncode=pytest.ExitCode.USAGE_ERROR)
        self._debugger.reset()
        return self._debugger

    def close(self) -> None:
        if self._debugger is not None:
            self._debugger.close()
            self._debugger = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
        report = yield
        ended = (call.when == "call" or (call.when == "setup" and not report.passed))
        if ended and isinstance(item, pytest.Function):
            self.results.append(_result(item, call, report))
        return report

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.load_errors.append(_load_error(report))

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo) -> None:
        # Also called for pytest.exit and for collection errors (subclasses): only Ctrl-C counts here.
        self.interrupted = excinfo.type is KeyboardInterrupt


def _result(item: pytest.Function, call: pytest.CallInfo, report: pytest.TestReport) -> CheckResult:
    script = Path(item.path)
    name = item.name
    file = str(script.relative_to(Path.cwd())) if script.is_relative_to(Path.cwd()) else str(script)
    if report.skipped:
        return CheckResult(name, file, "skipped")
    if report.passed:
        return CheckResult(name, file, "passed")
    outcome = "failed" if call.when == "call" else "error"
    excinfo = call.excinfo
    in_script = [entry for entry in excinfo.traceback if Path(entry.path) == script]
    line = in_script[-1].lineno + 1 if in_script else None
    source = " ".join(text.strip() for text in str(in_script[-1].statement).splitlines()) if in_script else ""
    if excinfo.errisinstance(AssertionError):
        message = str(excinfo.value) or "assert"
    else:
        message = f"{excinfo.typename}: {_one_line(str(excinfo.value))}" if call.when == "call" \
            else _setup_error(report)
    return CheckResult(name, file, outcome, line, source, message, report.capstdout)


def _setup_error(report: pytest.TestReport) -> str:
    """A setup failure (an unknown fixture, ...) in one line: the `E` line pytest reports."""
    text = str(report.longrepr)
    errors = [line.strip() for line in text.splitlines() if line.lstrip().startswith("E ")]
    return errors[0].removeprefix("E").strip() if errors else _one_line(text)


def _load_error(report: pytest.CollectReport) -> str:
    """`SCRIPT:LINE: Type: message` for a script that pytest could not import."""
    text = str(report.longrepr)
    error_lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    message = error_lines[-1] if error_lines else _one_line(text)
    places = re.findall(r"^(\S+\.py):(\d+): in <module>$", text, re.MULTILINE)
    if places:
        return f"cannot load {places[-1][0]}:{places[-1][1]}: {message}"
    module = re.search(r"test module '(.+?)'", text)
    return f"cannot load {module.group(1) if module else report.nodeid or 'a check script'}: {message}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_checks(session: Path, scripts: list[Path], image: Path | None = None,
               select: str | None = None) -> list[CheckResult]:
    """Run the checks of `scripts` (files, or directories of test_*.py files) on `session` through
    pytest; `select` is pytest's -k expression."""
    plugin = CheckPlugin(session, image)
    arguments = [*map(str, scripts), "-c", os.devnull, "--rootdir", str(Path.cwd()), "--noconftest",
                 "--import-mode=importlib", "-p", "no:cacheprovider", "-p", "no:terminal", "-p", "no:stepwise"]
    if select is not None:
        arguments += ["-k", select]
    try:
        status = pytest.main(arguments, plugins=[plugin])
    finally:
        plugin.close()
    if plugin.interrupted:
        raise KeyboardInterrupt
    if plugin.load_errors:
        raise CheckLoadError(plugin.load_errors[0])
    if plugin.fatal is not None:
        raise CheckLoadError(plugin.fatal)
    if status == pytest.ExitCode.USAGE_ERROR:
        raise CheckLoadError(f"pytest refused the arguments: {' '.join(map(str, scripts))}"
                             + (f" -k {select}" if select else ""))
    if not plugin.results:
        if select is not None:
            raise CheckLoadError(f"no check matches -k {select!r}")
        raise CheckLoadError(f"{' '.join(map(str, scripts))} has no checks: define functions named test_* "
                             "that take `d`")
    return plugin.results
