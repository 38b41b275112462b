"""Loading user functions from ``handlers_dir`` and calling them in their own style.

A route's ``handler`` is ``"module"`` or ``"module:function"``.  Without a function name the
entry point is ``handle``, else ``handle_async`` (the IoT Studio seed's async example).  The
style is read from the signature: one parameter is IoT Studio's ``handle(req)``, two are
OpenFaaS's ``handle(event, context)``; ``async def`` functions are awaited.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from .contract import Context, Event, Response, error_body, rules_for
from .errors import HandlerLoadError, ResultError

ENTRY_POINTS = ("handle", "handle_async")


@dataclass(frozen=True, slots=True)
class Function:
    """A loaded user function, ready to call with an :class:`Event`."""

    name: str  # the route's handler string, used to tag logs
    func: Callable[..., Any]
    is_async: bool
    wants_context: bool
    source_file: str | None

    def call(self, event: Event, context: Context) -> Any:
        """Call the function; for async functions this returns the coroutine."""
        if self.wants_context:
            return self.func(event, context.for_call())
        return self.func(event)

    @property
    def info(self) -> "FunctionInfo":
        return FunctionInfo(self.name, self.is_async, "openfaas" if self.wants_context else "iot-studio", self.source_file)


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """What the daemon knows of a loaded function, which may live in a worker process."""

    name: str
    is_async: bool
    style: str  # "iot-studio" (handle(req)) or "openfaas" (handle(event, context))
    source_file: str | None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A function whose module failed to import: its route answers 503 with the reason."""

    name: str
    reason: str


def module_path(handlers_dir: Path, module: str) -> Path | None:
    """The file defining ``module`` under ``handlers_dir`` (``a.b`` -> ``a/b.py``), if any."""
    base = handlers_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def split_spec(spec: str) -> tuple[str, str | None]:
    module, _, attr = spec.partition(":")
    return module.strip(), (attr.strip() or None)


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the function's file at every import, never from a cached ``.pyc``: the cache
    is keyed by the file's size and its mtime in whole seconds, so an edit that keeps the size
    within the same second (a quick fix under ``make run``) would reload the old code."""

    def get_code(self, fullname: str) -> Any:
        return self.source_to_code(self.get_data(self.path), self.path)


def _import(module: str, path: Path, reload: bool) -> ModuleType:
    existing = sys.modules.get(module)
    if existing is not None:
        if getattr(existing, "__file__", None) == str(path):
            if not reload:
                return existing
        else:
            raise HandlerLoadError(
                f"module name {module!r} clashes with an already imported module "
                f"({getattr(existing, '__file__', 'built-in')}); rename the handler file"
            )
    spec = importlib.util.spec_from_file_location(module, path, loader=_SourceLoader(module, str(path)))
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException as exc:  # noqa: BLE001 (SystemExit, KeyboardInterrupt at import too)
        sys.modules.pop(module, None)
        raise HandlerLoadError(f"importing {path.name} failed: {_import_failure(exc, path)}") from exc
    return mod


def _import_failure(exc: BaseException, path: Path) -> str:
    """What went wrong at import, with the file:line a developer must look at."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({Path(exc.filename or path).name}:{exc.lineno})"
    last = traceback.format_exception_only(exc)[-1].strip()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f"{last} ({path.name}:{frames[-1].lineno})" if frames else last


def _positional_count(func: Callable[..., Any]) -> int | None:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in kinds)


def load_function(handlers_dir: Path, spec: str, *, reload: bool = False) -> Function:
    """Import the module named by ``spec`` and return its entry point.

    Raises :class:`HandlerLoadError` when the file is missing, fails to import, or has no
    callable entry point taking one or two arguments.
    """
    module, attr = split_spec(spec)
    path = module_path(handlers_dir, module)
    if path is None:
        raise HandlerLoadError(f"no module {module!r} in {handlers_dir}")
    # Functions may import sibling helper modules, as they would in their own template.
    if str(handlers_dir) not in sys.path:
        sys.path.insert(0, str(handlers_dir))
    mod = _import(module, path, reload)
    names = (attr,) if attr else ENTRY_POINTS
    func = next((getattr(mod, n) for n in names if callable(getattr(mod, n, None))), None)
    if func is None:
        wanted = attr or " or ".join(ENTRY_POINTS)
        raise HandlerLoadError(f"{path.name} has no function {wanted}")
    count = _positional_count(func)
    if count not in (None, 1, 2):
        raise HandlerLoadError(
            f"{spec}: expected handle(req) or handle(event, context), got {count} parameters"
        )
    return Function(
        name=spec,
        func=func,
        is_async=inspect.iscoroutinefunction(func),
        wants_context=count == 2,
        source_file=str(path),
    )


def load_functions(handlers_dir: Path, specs: list[str], *, reload: bool = False,
                   loading: Callable[[str], None] | None = None) -> dict[str, Function | Unavailable]:
    """Load every handler in ``specs``; one that fails is :class:`Unavailable` with the reason.

    ``loading(spec)`` is called before each import (a worker reports it, so that an import
    that kills the process is blamed on its module).
    """
    out: dict[str, Function | Unavailable] = {}
    for spec in specs:
        if spec in out:
            continue
        if loading is not None:
            loading(spec)
        try:
            out[spec] = load_function(handlers_dir, spec, reload=reload)
        except HandlerLoadError as exc:
            out[spec] = Unavailable(spec, str(exc))
    return out


def respond(function: Function, produce: Callable[[], Any]) -> Response:
    """Run ``produce`` (which calls ``function``) and apply the result rules of the
    function's style (bridge.contract.rules_for) to its outcome.

    Whatever the function raises becomes what its style makes of it (IoT Studio's 500 error
    object; werkzeug HTTP errors keep their status for OpenFaaS functions), ``KeyboardInterrupt``,
    ``SystemExit`` and other ``BaseException`` subclasses included: a function must never end
    the process serving it.  A result that breaks the rules is a 500 naming the bad value.
    """
    rules = rules_for(function.wants_context)
    try:
        return rules.response(produce())
    except ResultError as exc:
        return error_body(500, f"function {function.name} returned an invalid result: {exc}",
                          kind="ResultError", where=function.source_file or "")
    except BaseException as exc:  # noqa: BLE001 (see the docstring)
        return rules.error(exc, function.source_file)


async def respond_async(function: Function, event: Event, context: Context) -> Response:
    """Await an ``async def`` function and apply the result rules, as :func:`respond` does."""
    try:
        result = await function.call(event, context)
    except asyncio.CancelledError:
        raise  # the bridge cancelled it (a timeout): not the function's doing
    except BaseException as exc:  # noqa: BLE001
        return rules_for(function.wants_context).error(exc, function.source_file)
    return respond(function, lambda: result)
