"""The `check` and `invoke` commands, run in-process through bridge.cli.main."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.logs import current_function
from tests.support.isolation import logging_restored


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Undo what the commands change in the process: logging, sys.stderr, imports, sys.path."""
    path = list(sys.path)
    monkeypatch.chdir(tmp_path)  # the config path is given explicitly: cwd must not matter
    with logging_restored():
        yield
    sys.path[:] = path
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def run(*argv: str) -> int:
    """main()'s exit status, whether returned or raised as SystemExit (as the console script sees it)."""
    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


class Project:
    def __init__(self, root: Path) -> None:
        self.conf_dir = root / "conf"
        self.handlers = self.conf_dir / "handlers"
        self.handlers.mkdir(parents=True)
        self.config = self.conf_dir / "bridge.toml"

    def handler(self, name: str, source: str) -> None:
        (self.handlers / f"{name}.py").write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")

    def write_config(self, routes: list[dict[str, object]], extra: str = "") -> str:
        lines = ['handlers_dir = "handlers"', extra]
        for route in routes:
            lines.append("[[routes]]")
            for key, value in route.items():
                lines.append(f"{key} = {_toml(value)}")
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(self.config)


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path)


ECHO = """
import logging

def handle(req):
    logging.getLogger("echo").info("called with %d bytes", len(req.body))
    return {
        "status_code": 200,
        "headers": {"X-Echo": "yes"},
        "body": {
            "method": req.method,
            "path": req.path,
            "body": req.body.decode(),
            "custom": req.headers.get("x-custom"),
            "tags": req.headers.getlist("X-Tag"),
            "topic": req.headers.get("X-Topic"),
            "length": req.headers.get("Content-Length"),
            "query": req.query.to_dict(flat=False),
        },
    }
"""


# -- check --------------------------------------------------------------------------------------

def test_check_passes_when_every_function_imports(project, capfd):
    project.handler("cli_echo", ECHO)
    project.handler("cli_async", "async def handle_async(req):\n    return None\n")
    config = project.write_config([
        {"topic": "a/#", "handler": "cli_echo"},
        {"topic": "b/#", "handler": "cli_async"},
    ])
    assert run("check", "--config", config) == 0
    out = capfd.readouterr().out
    assert out == f"{config}: 2 route(s), every function imports\n"


def test_check_lists_every_broken_function_and_exits_1(project, capfd):
    project.handler("cli_good", "def handle(req):\n    return None\n")
    project.handler("cli_raises", "raise ImportError('No module named requests_oauth')\n")
    project.handler("cli_noentry", "def main(req):\n    return None\n")
    project.handler("cli_arity", "def handle(a, b, c):\n    return None\n")
    thing = {"space": "s", "thing_id": "t", "client_id_secret": "cid", "client_secret_secret": "cs"}
    config = project.write_config([
        {"topic": "a", "handler": "cli_good"},
        {"topic": "b", "handler": "cli_raises"},
        {"topic": "c", "handler": "cli_missing"},
        {"topic": "d", "handler": "cli_noentry"},
        {"topic": "e", "handler": "cli_good:other"},
        {"topic": "f", "handler": "cli_arity"},
        {"topic": "g", "thing": thing},  # no handler: nothing to import
    ])
    assert run("check", "--config", config) == 1
    out = capfd.readouterr().out.splitlines()
    assert out == [
        "routes[1].handler (cli_raises): importing cli_raises.py failed: ImportError: No module named requests_oauth (cli_raises.py:1)",
        f"routes[2].handler (cli_missing): no module 'cli_missing' in {project.handlers}",
        "routes[3].handler (cli_noentry): cli_noentry.py has no function handle or handle_async",
        "routes[4].handler (cli_good:other): cli_good.py has no function other",
        "routes[5].handler (cli_arity): cli_arity: expected handle(req) or handle(event, context), got 3 parameters",
        f"5 problem(s) in {config}",
    ]


def test_check_gives_up_on_an_import_that_never_ends_naming_it(project, capfd):
    """``check`` (and the daemon in ``thread`` mode) imports the handlers in a throwaway
    process: one whose import loops for ever is named after workers.load_timeout."""
    project.handler("cli_loops", "while True:\n    pass\n")
    config = project.write_config([{"topic": "a", "handler": "cli_loops"}], extra="[workers]\nload_timeout = 1")
    assert run("check", "--config", config) == 1
    assert ("the handlers were not imported within 1 s (workers.load_timeout): still importing cli_loops"
            in capfd.readouterr().err)


def test_check_exits_2_on_an_invalid_config_naming_the_key(project, capfd):
    project.handler("cli_good2", "def handle(req):\n    return None\n")
    config = project.write_config([{"topic": "a", "handler": "cli_good2", "qos": 3}])
    assert run("check", "--config", config) == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("iot-bridge: invalid configuration:")
    assert "routes[0].qos: Input should be 0, 1 or 2" in captured.err


@pytest.mark.parametrize("route, key", [
    ({"topic": "a/#/b", "handler": "h"}, "routes[0].topic"),
    ({"topic": "a", "handler": "h", "reply_topic": "r/+"}, "routes[0].reply_topic"),
    ({"topic": "a", "handler": "h", "reply_topic": "r/{nope}"}, "routes[0].reply_topic"),
    ({"topic": "a", "handler": "h", "handlr": "x"}, "routes[0].handlr"),
])
def test_check_names_the_bad_key(project, capfd, route, key):
    config = project.write_config([route])
    assert run("check", "--config", config) == 2
    assert f"\n  {key}: " in capfd.readouterr().err


def test_check_exits_2_on_an_attribute_placeholder(project, capfd):
    config = project.write_config([{"topic": "a", "handler": "h", "reply_topic": "r/{topic.x}"}])
    assert run("check", "--config", config) == 2
    assert "routes[0].reply_topic" in capfd.readouterr().err


def test_check_exits_2_when_the_config_file_is_missing(tmp_path, capfd):
    assert run("check", "--config", str(tmp_path / "absent.toml")) == 2
    assert capfd.readouterr().err == f"iot-bridge: config file not found: {tmp_path / 'absent.toml'}\n"


# -- invoke -------------------------------------------------------------------------------------

def _reply(capfd) -> dict:
    return json.loads(capfd.readouterr().out)


def test_invoke_sync_function_with_body_headers_query_and_method(project, capfd):
    project.handler("cli_echo", ECHO)
    config = project.write_config([])
    status = run("invoke", "--config", config, "cli_echo", "--body", "héllo", "--header", "X-Custom=a=b",
                 "--header", "X-Tag=1", "--header", "x-tag=2", "--query", "a=1&a=2&b=", "--method", "get")
    captured = capfd.readouterr()
    assert status == 0
    assert json.loads(captured.out) == {
        "status_code": 200,
        "headers": {"X-Echo": "yes", "Content-Type": "application/json"},
        "body": {
            "method": "GET",
            "path": "/functions/python/cli_echo",
            "body": "héllo",
            "custom": "a=b",
            "tags": ["1", "2"],
            "topic": "functions/python/cli_echo",
            "length": str(len("héllo".encode())),
            "query": {"a": ["1", "2"], "b": [""]},
        },
    }
    # The function's own log record is tagged with its name.
    assert "INFO    [cli_echo] echo: called with 6 bytes" in captured.err
    assert current_function.get() is None


def test_invoke_defaults_to_post_with_an_empty_body_and_honours_topic(project, capfd):
    project.handler("cli_echo", ECHO)
    config = project.write_config([])
    assert run("invoke", "--config", config, "cli_echo", "--topic", "sensors/r1/temp") == 0
    body = _reply(capfd)["body"]
    assert (body["method"], body["path"], body["topic"], body["body"], body["length"], body["query"]) == (
        "POST", "/sensors/r1/temp", "sensors/r1/temp", "", "0", {})


def test_invoke_body_file(project, capfd, tmp_path):
    project.handler("cli_echo", ECHO)
    config = project.write_config([])
    payload = tmp_path / "payload.json"
    payload.write_bytes(b'{"temperature": 27}')
    assert run("invoke", "--config", config, "cli_echo", "--body-file", str(payload)) == 0
    assert _reply(capfd)["body"]["body"] == '{"temperature": 27}'


def test_invoke_async_openfaas_function(project, capfd, monkeypatch):
    monkeypatch.setenv("HOSTNAME", "edge-test-host")
    project.handler("cli_faas", """
        async def handle(event, context):
            return {
                "statusCode": 201,
                "headers": [("X-A", "1"), ("X-A", "2")],
                "body": {"host": context.hostname, "method": event.method, "body": event.body.decode(),
                         "q": event.query.get("name")},
            }
    """)
    config = project.write_config([])
    status = run("invoke", "--config", config, "cli_faas", "--body", "ping", "--method", "PATCH",
                 "--query", "name=x%20y")
    assert status == 0
    # OpenFaaS's rules: headers given with a JSON body replace by name (Flask's headers.update).
    assert _reply(capfd) == {
        "status_code": 201,
        "headers": {"X-A": "2", "Content-Type": "application/json"},
        "body": {"host": "edge-test-host", "method": "PATCH", "body": "ping", "q": "x y"},
    }


def test_invoke_module_colon_function_text_body(project, capfd):
    project.handler("cli_multi", "def handle(req):\n    return None\n\ndef shout(req):\n    return {'body': req.body.decode().upper()}\n")
    config = project.write_config([])
    assert run("invoke", "--config", config, "cli_multi:shout", "--body", "quiet") == 0
    assert _reply(capfd) == {"status_code": 200, "headers": {"Content-Type": "text/plain; charset=utf-8"},
                             "body": "QUIET"}


def test_invoke_exits_1_for_an_exception(project, capfd):
    project.handler("cli_boom", """
        def handle(req):
            value = req.body.decode()
            raise ValueError(f"cannot use {value}")
    """)
    config = project.write_config([])
    assert run("invoke", "--config", config, "cli_boom", "--body", "zz") == 1
    assert _reply(capfd) == {
        "status_code": 500,
        "headers": {"Content-Type": "application/json"},
        "body": {"error": {"status": 500, "message": "ValueError at line 3: cannot use zz", "details": {
            "exception_type": "ValueError", "exception_info": "cannot use zz", "exception_line_number": 3,
            "exception_line_code": 'raise ValueError(f"cannot use {value}")'}}},
    }


def test_invoke_exits_1_for_an_error_status_and_0_below_400(project, capfd):
    project.handler("cli_status", "def handle(req):\n    return {'status_code': int(req.body), 'body': 'x'}\n")
    config = project.write_config([])
    assert run("invoke", "--config", config, "cli_status", "--body", "404") == 1
    assert _reply(capfd)["status_code"] == 404
    assert run("invoke", "--config", config, "cli_status", "--body", "399") == 0
    assert _reply(capfd)["status_code"] == 399


def test_invoke_exits_1_for_an_invalid_result(project, capfd):
    project.handler("cli_bad_result", "def handle(req):\n    return {'status_code': True}\n")
    config = project.write_config([])
    assert run("invoke", "--config", config, "cli_bad_result") == 1
    assert _reply(capfd)["body"]["error"]["message"] == (
        "function cli_bad_result returned an invalid result: invalid status_code True: "
        "expected an int from 200 to 599")


def test_invoke_exits_2_when_the_function_cannot_load(project, capfd):
    project.handler("cli_broken", "raise RuntimeError('boom at import')\n")
    config = project.write_config([])
    assert run("invoke", "--config", config, "cli_broken") == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "iot-bridge: importing cli_broken.py failed: RuntimeError: boom at import" in captured.err


@pytest.mark.parametrize("args", [["--header", "no-equals-sign"], ["--header", "=value"], ["--method", "FETCH"],
                                  ["--body", "a", "--body-file", "f"]])
def test_invoke_bad_command_line_exits_2(project, capfd, args):
    project.handler("cli_echo", ECHO)
    config = project.write_config([])
    assert run("invoke", "--config", config, "cli_echo", *args) == 2
    assert capfd.readouterr().out == ""


def test_invoke_exits_2_on_an_invalid_config(project, capfd):
    project.handler("cli_echo", ECHO)
    config = project.write_config([], extra="[logging]\nlevel = 'LOUD'\n")
    assert run("invoke", "--config", config, "cli_echo") == 2
    assert "logging.level: " in capfd.readouterr().err
