"""Loading user functions, calling them in their own style, and the worker pool
(bridge.functions, bridge.workers)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from bridge.contract import Context, Event
from bridge.errors import HandlerLoadError
from bridge.functions import Function, Unavailable, load_function, respond, respond_async
from bridge.workers.local import ThreadPool as WorkerPool

WAIT = 5.0  # seconds: upper bound for a condition that holds at once when the code is right


@pytest.fixture(autouse=True)
def _isolated_imports(tmp_path):
    """Forget handler modules imported from this test's tmp_path, and restore sys.path."""
    saved_path = list(sys.path)
    yield
    sys.path[:] = saved_path
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def _write(directory: Path, name: str, source: str) -> Path:
    path = directory.joinpath(*name.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
    return path


def _call(function: Function, event: Event | None = None, context: Context | None = None):
    event = event if event is not None else Event(b"payload", path="/t", topic="t")
    context = context or Context("edge-host")
    if function.is_async:
        return asyncio.run(respond_async(function, event, context))
    return respond(function, lambda: function.call(event, context))


# -- entry points and styles --------------------------------------------------------------------

def test_one_argument_handle_is_iot_studio_style(tmp_path):
    path = _write(tmp_path, "echo1.py", """
        def handle(req):
            return {"body": {"method": req.method, "body": req.body.decode(), "path": req.path}}
    """)
    function = load_function(tmp_path, "echo1")
    assert (function.name, function.is_async, function.wants_context, function.source_file) == (
        "echo1", False, False, str(path))
    resp = _call(function, Event(b"hi", method="PUT", path="/a/b"))
    assert resp.status == 200
    assert resp.data == {"method": "PUT", "body": "hi", "path": "/a/b"}


def test_two_argument_handle_is_openfaas_style_and_gets_the_context(tmp_path):
    _write(tmp_path, "faas1.py", """
        def handle(event, context):
            return {"statusCode": 201, "body": context.hostname + ":" + event.body.decode()}
    """)
    function = load_function(tmp_path, "faas1")
    assert function.wants_context is True and function.is_async is False
    resp = _call(function, Event(b"x"), Context("edge-7"))
    assert (resp.status, resp.body) == (201, b"edge-7:x")


def test_async_handle_is_detected_and_awaited(tmp_path):
    _write(tmp_path, "async1.py", """
        import asyncio

        async def handle(req):
            await asyncio.sleep(0)
            return {"body": "async " + req.body.decode()}
    """)
    function = load_function(tmp_path, "async1")
    assert function.is_async is True and function.wants_context is False
    assert _call(function, Event(b"ok")).body == b"async ok"


def test_async_two_argument_handle(tmp_path):
    _write(tmp_path, "async2.py", """
        async def handle(event, context):
            return {"body": {"host": context.hostname}}
    """)
    function = load_function(tmp_path, "async2")
    assert (function.is_async, function.wants_context) == (True, True)
    assert _call(function, context=Context("h1")).data == {"host": "h1"}


def test_handle_async_is_the_entry_point_when_there_is_no_handle(tmp_path):
    _write(tmp_path, "seed_async.py", """
        async def handle_async(req):
            return {"body": "from handle_async"}
    """)
    function = load_function(tmp_path, "seed_async")
    assert function.func.__name__ == "handle_async"
    assert function.is_async is True
    assert _call(function).body == b"from handle_async"


def test_handle_is_preferred_over_handle_async(tmp_path):
    _write(tmp_path, "both.py", """
        def handle(req):
            return {"body": "handle"}

        async def handle_async(req):
            return {"body": "handle_async"}
    """)
    function = load_function(tmp_path, "both")
    assert function.func.__name__ == "handle"
    assert _call(function).body == b"handle"


def test_module_colon_function_picks_the_named_function(tmp_path):
    _write(tmp_path, "multi.py", """
        def handle(req):
            return {"body": "handle"}

        def other(req):
            return {"body": "other"}
    """)
    function = load_function(tmp_path, "multi:other")
    assert function.name == "multi:other"
    assert _call(function).body == b"other"


def test_package_module_and_sibling_imports(tmp_path):
    _write(tmp_path, "helpers_x.py", "PREFIX = 'helped: '\n")
    _write(tmp_path, "pkg1/__init__.py", "")
    _write(tmp_path, "pkg1/fn.py", """
        import helpers_x

        def handle(req):
            return {"body": helpers_x.PREFIX + req.body.decode()}
    """)
    function = load_function(tmp_path, "pkg1.fn")
    assert function.source_file == str(tmp_path / "pkg1" / "fn.py")
    assert _call(function, Event(b"x")).body == b"helped: x"


def test_a_package_directory_is_a_module(tmp_path):
    _write(tmp_path, "pkgfn/__init__.py", "def handle(req):\n    return {'body': 'pkg'}\n")
    function = load_function(tmp_path, "pkgfn")
    assert function.source_file == str(tmp_path / "pkgfn" / "__init__.py")
    assert _call(function).body == b"pkg"


def test_loading_twice_reuses_the_module_and_reload_reimports(tmp_path):
    path = _write(tmp_path, "counter1.py", """
        LOADS = []
        LOADS.append(1)

        def handle(req):
            return {"body": "v1"}
    """)
    first = load_function(tmp_path, "counter1")
    second = load_function(tmp_path, "counter1")
    assert second.func is first.func
    assert sys.modules["counter1"].LOADS == [1]
    path.write_text("def handle(req):\n    return {'body': 'version two'}\n", encoding="utf-8")
    reloaded = load_function(tmp_path, "counter1", reload=True)
    assert _call(reloaded).body == b"version two"


# -- load errors --------------------------------------------------------------------------------

def test_missing_module(tmp_path):
    with pytest.raises(HandlerLoadError) as info:
        load_function(tmp_path, "nope")
    assert str(info.value) == f"no module 'nope' in {tmp_path}"


def test_missing_entry_point(tmp_path):
    _write(tmp_path, "noentry.py", "def main(req):\n    return None\nhandle = 'not callable'\n")
    with pytest.raises(HandlerLoadError) as info:
        load_function(tmp_path, "noentry")
    assert str(info.value) == "noentry.py has no function handle or handle_async"


def test_missing_named_function(tmp_path):
    _write(tmp_path, "named.py", "def handle(req):\n    return None\n")
    with pytest.raises(HandlerLoadError) as info:
        load_function(tmp_path, "named:process")
    assert str(info.value) == "named.py has no function process"


def test_module_that_raises_on_import(tmp_path):
    _write(tmp_path, "broken1.py", """
        raise RuntimeError("no database configured")

        def handle(req):
            return None
    """)
    for _ in range(2):  # not cached: a second load fails the same way
        with pytest.raises(HandlerLoadError) as info:
            load_function(tmp_path, "broken1")
        # file:line names where the developer must look
        assert str(info.value) == "importing broken1.py failed: RuntimeError: no database configured (broken1.py:1)"
        assert isinstance(info.value.__cause__, RuntimeError)
        assert "broken1" not in sys.modules


def test_module_with_a_syntax_error(tmp_path):
    _write(tmp_path, "syntax1.py", "def handle(req)\n    return None\n")
    with pytest.raises(HandlerLoadError) as info:
        load_function(tmp_path, "syntax1")
    assert str(info.value) == "importing syntax1.py failed: SyntaxError: expected ':' (syntax1.py:1)"


def test_module_that_exits_on_import(tmp_path):
    _write(tmp_path, "exits1.py", "import sys\nsys.exit(3)\n")
    with pytest.raises(HandlerLoadError) as info:
        load_function(tmp_path, "exits1")
    assert str(info.value) == "importing exits1.py failed: SystemExit: 3 (exits1.py:2)"


def test_module_name_clash_with_an_already_imported_module(tmp_path):
    real_json = sys.modules["json"]
    _write(tmp_path, "json.py", "def handle(req):\n    return {'body': 'shadow'}\n")
    with pytest.raises(HandlerLoadError) as info:
        load_function(tmp_path, "json")
    assert str(info.value).startswith("module name 'json' clashes with an already imported module (")
    assert str(info.value).endswith("); rename the handler file")
    assert sys.modules["json"] is real_json
    assert json.dumps({"a": 1}) == '{"a": 1}'


def test_reload_does_not_replace_an_unrelated_module(tmp_path):
    real_json = sys.modules["json"]
    _write(tmp_path, "json.py", "def handle(req):\n    return {'body': 'shadow'}\n")
    try:
        with pytest.raises(HandlerLoadError) as info:
            load_function(tmp_path, "json", reload=True)
        assert "clashes with an already imported module" in str(info.value)
        assert sys.modules["json"] is real_json
    finally:
        sys.modules["json"] = real_json


@pytest.mark.parametrize("params, count", [("", 0), ("a, b, c", 3)])
def test_wrong_number_of_parameters(tmp_path, params, count):
    name = f"arity{count}"
    _write(tmp_path, f"{name}.py", f"def handle({params}):\n    return None\n")
    with pytest.raises(HandlerLoadError) as info:
        load_function(tmp_path, name)
    assert str(info.value) == f"{name}: expected handle(req) or handle(event, context), got {count} parameters"


def test_unavailable_carries_the_reason():
    u = Unavailable("broken", "importing broken.py failed: RuntimeError: x")
    assert (u.name, u.reason) == ("broken", "importing broken.py failed: RuntimeError: x")


# -- respond: results and errors ----------------------------------------------------------------

BOOM = """
def helper(value):
    return 100 // value


def handle(req):
    n = int(req.body)
    return {"body": str(helper(n))}
"""


def test_no_return_is_an_empty_200(tmp_path):
    _write(tmp_path, "none1.py", "def handle(req):\n    pass\n")
    resp = _call(load_function(tmp_path, "none1"))
    assert (resp.status, resp.body) == (200, b"")


def test_exception_reports_the_last_line_in_the_handler_file(tmp_path):
    _write(tmp_path, "boom1.py", BOOM)
    function = load_function(tmp_path, "boom1")
    assert _call(function, Event(b"4")).body == b"25"
    resp = _call(function, Event(b"0"))
    assert resp.status == 500
    assert resp.content_type == "application/json"
    assert json.loads(resp.body) == {
        "error": {
            "status": 500,
            "message": "ZeroDivisionError at line 2: integer division or modulo by zero",
            "details": {
                "exception_type": "ZeroDivisionError",
                "exception_info": "integer division or modulo by zero",
                "exception_line_number": 2,
                "exception_line_code": "return 100 // value",
            },
        }
    }


def test_exception_in_another_file_reports_the_calling_line_of_the_handler(tmp_path):
    _write(tmp_path, "lib_parse.py", "def parse(data):\n    raise ValueError(f'bad input {data!r}')\n")
    _write(tmp_path, "caller1.py", """
        import lib_parse


        def handle(req):
            value = lib_parse.parse(req.body)
            return {"body": value}
    """)
    resp = _call(load_function(tmp_path, "caller1"), Event(b"zz"))
    error = resp.data["error"]
    assert error["message"] == "ValueError at line 5: bad input b'zz'"
    assert error["details"]["exception_line_number"] == 5
    assert error["details"]["exception_line_code"] == "value = lib_parse.parse(req.body)"
    assert error["details"]["exception_type"] == "ValueError"
    assert error["details"]["exception_info"] == "bad input b'zz'"


def test_async_exception_reports_the_line_in_the_handler_file(tmp_path):
    _write(tmp_path, "aboom.py", """
        async def handle(req):
            data = {}
            return {"body": data["missing"]}
    """)
    resp = _call(load_function(tmp_path, "aboom"))
    assert resp.status == 500
    assert resp.data["error"]["message"] == "KeyError at line 3: 'missing'"
    assert resp.data["error"]["details"]["exception_line_code"] == 'return {"body": data["missing"]}'


@pytest.mark.parametrize("asynchronous", [False, True])
def test_invalid_result_is_a_500_naming_the_value(tmp_path, asynchronous):
    name = f"status99_{int(asynchronous)}"
    prefix = "async " if asynchronous else ""
    _write(tmp_path, f"{name}.py", f"{prefix}def handle(req):\n    return {{'status_code': 99, 'body': 'x'}}\n")
    resp = _call(load_function(tmp_path, name))
    assert resp.status == 500
    assert resp.data == {"error": {"status": 500, "message": (
        f"function {name} returned an invalid result: invalid status_code 99: expected an int from 200 to 599")}}


def test_non_dict_result_is_a_500(tmp_path):
    _write(tmp_path, "strres.py", "def handle(req):\n    return 'plain string'\n")
    resp = _call(load_function(tmp_path, "strres"))
    assert resp.status == 500
    assert resp.data["error"]["message"] == (
        "function strres returned an invalid result: function returned str, expected a dict or None")


@pytest.mark.parametrize("asynchronous", [False, True])
def test_sys_exit_in_a_function_is_a_500(tmp_path, asynchronous):
    name = f"exiter_{int(asynchronous)}"
    prefix = "async " if asynchronous else ""
    _write(tmp_path, f"{name}.py", f"import sys\n\n{prefix}def handle(req):\n    sys.exit(4)\n")
    function = load_function(tmp_path, name)
    try:
        resp = _call(function)
    except SystemExit:
        pytest.fail("SystemExit escaped from respond")
    assert resp.status == 500
    assert resp.data["error"]["message"] == "SystemExit at line 4: 4"


# -- WorkerPool ---------------------------------------------------------------------------------

class _Tracker:
    """Counts running jobs and remembers the most seen at once."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = 0
        self.peak = 0
        self.done = 0
        self.threads: set[str] = set()
        self.release = threading.Event()

    def job(self) -> None:
        with self.cond:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()
        self.release.wait(WAIT)
        with self.cond:
            self.running -= 1
            self.done += 1
            self.cond.notify_all()

    def wait_for(self, predicate) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, WAIT)


def test_pool_runs_jobs_concurrently_up_to_its_size():
    pool = WorkerPool("conc", 4)
    barrier = threading.Barrier(4, timeout=WAIT)
    cond = threading.Condition()
    passed: list[int] = []

    def job(i: int) -> None:
        barrier.wait()  # breaks (BrokenBarrierError) unless all four run at once
        with cond:
            passed.append(i)
            cond.notify_all()

    for i in range(4):
        pool.submit(job, i)
    with cond:
        assert cond.wait_for(lambda: len(passed) == 4, WAIT * 2)
    assert sorted(passed) == [0, 1, 2, 3]
    pool.shutdown()


def test_pool_never_starts_more_threads_than_its_size():
    pool = WorkerPool("cap", 3)
    tracker = _Tracker()
    for _ in range(10):
        pool.submit(tracker.job)
    assert tracker.wait_for(lambda: tracker.running == 3)
    alive = [t for t in threading.enumerate() if t.name.startswith("fn-cap-")]
    assert sorted(t.name for t in alive) == ["fn-cap-0", "fn-cap-1", "fn-cap-2"]
    assert all(t.daemon for t in alive)
    tracker.release.set()
    assert tracker.wait_for(lambda: tracker.done == 10)
    assert tracker.peak == 3
    assert tracker.threads <= {"fn-cap-0", "fn-cap-1", "fn-cap-2"}
    assert len(pool._threads) == 3
    pool.shutdown()


def test_pool_passes_arguments():
    pool = WorkerPool("args", 2)
    results: list[tuple[int, str]] = []
    done = threading.Event()
    pool.submit(lambda a, b: (results.append((a, b)), done.set()), 7, "x")
    assert done.wait(WAIT)
    assert results == [(7, "x")]
    pool.shutdown()


@pytest.mark.parametrize("exc", [RuntimeError("job failed"), SystemExit(1)], ids=["RuntimeError", "SystemExit"])
def test_pool_keeps_working_after_a_job_raises(exc, caplog):
    pool = WorkerPool("fails", 1)
    done = threading.Event()

    def failing() -> None:
        raise exc

    with caplog.at_level(logging.ERROR, logger="bridge.workers"):
        pool.submit(failing)
        pool.submit(done.set)
        assert done.wait(WAIT)
    assert len(pool._threads) == 1
    failed = [r for r in caplog.records if r.name == "bridge.workers"]
    assert [r.getMessage() for r in failed] == ["worker job failed in pool fails"]
    assert failed[0].exc_info is not None and failed[0].exc_info[1] is exc
    pool.shutdown()


def test_pool_shutdown_ends_idle_threads():
    pool = WorkerPool("stop", 2)
    tracker = _Tracker()
    tracker.release.set()
    pool.submit(tracker.job)
    pool.submit(tracker.job)
    assert tracker.wait_for(lambda: tracker.done == 2)
    threads = list(pool._threads)
    assert threads
    pool.shutdown()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
