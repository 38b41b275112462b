"""Logging: function records and stderr tagged with the function's name (bridge.logs)."""

from __future__ import annotations

import io
import logging
import re
import sys
import threading

import pytest

from bridge import logs
from bridge.logs import current_function
from tests.support.isolation import logging_restored

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>\w+) +\[(?P<function>[^\]]+)\] (?P<logger>\S+): (?P<msg>.*)$")


@pytest.fixture(autouse=True)
def _restore_logging():
    with logging_restored():
        yield


def _setup(level: str = "INFO", function_level: str = "INFO") -> io.StringIO:
    """Run logs.setup and point its handler at a buffer."""
    logs.setup(level, function_level)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_iot_bridge", False)]
    assert len(ours) == 1
    buf = io.StringIO()
    ours[0].setStream(buf)
    return buf


def _records(buf: io.StringIO) -> list[tuple[str, str, str, str]]:
    out = []
    for line in buf.getvalue().splitlines():
        m = LINE.match(line)
        assert m, f"unexpected log line {line!r}"
        out.append((m["level"], m["function"], m["logger"], m["msg"]))
    return out


def _in_function(name: str, fn) -> None:
    token = current_function.set(name)
    try:
        fn()
    finally:
        current_function.reset(token)


def test_records_inside_a_function_carry_its_name():
    buf = _setup()
    _in_function("thermo", lambda: logging.getLogger("userfn").info("reading %d", 27))
    logging.getLogger("bridge.dispatch").info("outside")
    assert _records(buf) == [
        ("INFO", "thermo", "userfn", "reading 27"),
        ("INFO", "-", "bridge.dispatch", "outside"),
    ]


def test_function_debug_is_dropped_at_function_level_info():
    buf = _setup(level="DEBUG", function_level="INFO")
    fn_log = logging.getLogger("userfn")

    def body():
        fn_log.debug("hidden debug")
        fn_log.info("shown info")
        fn_log.error("shown error")

    _in_function("f", body)
    logging.getLogger("bridge.x").debug("bridge debug")
    assert _records(buf) == [
        ("INFO", "f", "userfn", "shown info"),
        ("ERROR", "f", "userfn", "shown error"),
        ("DEBUG", "-", "bridge.x", "bridge debug"),
    ]


def test_function_level_warning_drops_function_info_but_not_the_bridge():
    buf = _setup(level="INFO", function_level="WARNING")
    _in_function("f", lambda: (logging.getLogger("userfn").info("dropped"),
                               logging.getLogger("userfn").warning("kept")))
    logging.getLogger("bridge.x").info("bridge info")
    logging.getLogger("bridge.x").debug("bridge debug dropped")
    assert _records(buf) == [("WARNING", "f", "userfn", "kept"), ("INFO", "-", "bridge.x", "bridge info")]


def test_function_debug_kept_when_function_level_is_debug():
    buf = _setup(level="INFO", function_level="DEBUG")
    _in_function("f", lambda: logging.getLogger("userfn").debug("debug kept"))
    logging.getLogger("bridge.x").debug("bridge debug dropped")
    assert _records(buf) == [("DEBUG", "f", "userfn", "debug kept")]


def test_stderr_inside_a_function_becomes_records_tagged_with_its_name():
    buf = _setup()
    assert isinstance(sys.stderr, logs._StderrToLog)

    def body():
        print("first line", file=sys.stderr)
        sys.stderr.write("two\n\nlines\n")
        sys.stderr.write("partial ")
        sys.stderr.write("then ended\n")

    _in_function("noisy", body)
    assert _records(buf) == [
        ("WARNING", "noisy", "function", "first line"),
        ("WARNING", "noisy", "function", "two"),
        ("WARNING", "noisy", "function", "lines"),
        ("WARNING", "noisy", "function", "partial then ended"),
    ]


def test_stderr_write_returns_the_length_written():
    _setup()
    token = current_function.set("f")
    try:
        assert sys.stderr.write("abc\n") == 4
    finally:
        current_function.reset(token)


def test_stderr_outside_a_function_goes_straight_through():
    buf = _setup()
    real = io.StringIO()
    sys.stderr.real = real  # type: ignore[attr-defined]
    sys.stderr.write("plain text\n")
    assert real.getvalue() == "plain text\n"
    assert buf.getvalue() == ""


def test_stderr_lines_of_concurrent_functions_are_kept_apart():
    buf = _setup()
    started = threading.Event()
    other_wrote = threading.Event()

    def in_thread():
        token = current_function.set("a")
        sys.stderr.write("from ")
        started.set()
        other_wrote.wait(5)
        sys.stderr.write("a\n")
        current_function.reset(token)

    thread = threading.Thread(target=in_thread)
    thread.start()
    assert started.wait(5)
    _in_function("b", lambda: sys.stderr.write("from b\n"))
    other_wrote.set()
    thread.join(5)
    assert sorted(_records(buf)) == [("WARNING", "a", "function", "from a"), ("WARNING", "b", "function", "from b")]


def test_stderr_partial_line_is_logged_on_flush():
    buf = _setup()

    def body():
        sys.stderr.write("progress 50%")
        sys.stderr.flush()

    _in_function("f", body)
    assert _records(buf) == [("WARNING", "f", "function", "progress 50%")]


def test_setup_is_idempotent():
    _setup()
    wrapper = sys.stderr
    buf = _setup(level="WARNING", function_level="ERROR")
    assert sys.stderr is wrapper  # not wrapped twice
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("bridge").level == logging.WARNING
    _in_function("f", lambda: logging.getLogger("userfn").warning("below function_level"))
    logging.getLogger("bridge.x").warning("bridge warning")
    assert _records(buf) == [("WARNING", "-", "bridge.x", "bridge warning")]


def test_root_level_is_the_lower_of_both_levels():
    _setup(level="WARNING", function_level="DEBUG")
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("bridge").level == logging.WARNING
