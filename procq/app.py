"""App: the registry of task handlers and their defaults, imported by the fork server."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable

from procq.states import NO_TIMEOUT, _NoTimeout

DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_GRACE_S = 5.0


def asynq_retry_delay(attempt: int, error_text: str) -> float:
    """Return asynq's default backoff in seconds: attempt**4 + 15 + rand(0..29) * (attempt + 1)."""
    return attempt ** 4 + 15 + random.randint(0, 29) * (attempt + 1)


def _check_timeout(option: str, value: Any) -> None:
    if value is None or value is NO_TIMEOUT:
        return
    _check_positive(option, value)


def _check_positive(option: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"invalid {option}: {value!r}; expected a positive number of seconds")


def _check_count(option: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"invalid {option}: {value!r}; expected an integer >= {minimum}")


@dataclass(frozen=True)
class Handler:
    """A registered handler and its own options; None means inherit the App's default."""

    name: str
    function: Callable
    timeout: float | _NoTimeout | None = None
    grace: float | None = None
    max_retry: int | None = None
    max_memory: int | None = None
    queue: str | None = None


class App:
    """A named set of task handlers with defaults for their options.

    `default_timeout` is in seconds (procq.NO_TIMEOUT for no limit), `default_grace` is the
    seconds between the soft signal and SIGKILL, `default_max_memory` is in bytes, and
    `retry_delay(attempt, error_text)` returns the seconds before a retry.
    """

    def __init__(self, name: str, *, default_timeout: float | _NoTimeout = DEFAULT_TIMEOUT_S,
                 default_grace: float = DEFAULT_GRACE_S, default_max_retry: int = 0,
                 default_max_memory: int | None = None,
                 retry_delay: Callable[[int, str], float] | None = None):
        _check_timeout("default_timeout", default_timeout)
        if default_timeout is None:
            raise ValueError("invalid default_timeout: None; use procq.NO_TIMEOUT for no limit")
        _check_positive("default_grace", default_grace)
        _check_count("default_max_retry", default_max_retry, 0)
        _check_count("default_max_memory", default_max_memory, 1)
        self.name = name
        self.default_timeout = default_timeout
        self.default_grace = float(default_grace)
        self.default_max_retry = default_max_retry
        self.default_max_memory = default_max_memory
        self.retry_delay = retry_delay or asynq_retry_delay
        self.handlers: dict[str, Handler] = {}
        self.worker_start_hooks: list[Callable[[], Any]] = []

    def task(self, name: str | Callable | None = None, *, timeout=None, grace=None,
             max_retry=None, max_memory=None, queue=None):
        """Register a handler, as `@app.task` or `@app.task("name", timeout=...)`."""
        if callable(name):
            return self._register(name, None, timeout, grace, max_retry, max_memory, queue)

        def decorator(function: Callable) -> Callable:
            return self._register(function, name, timeout, grace, max_retry, max_memory, queue)

        return decorator

    def _register(self, function, name, timeout, grace, max_retry, max_memory, queue):
        if name is None:
            name = f"{function.__module__}.{function.__qualname__}"
        if not isinstance(name, str) or not name:
            raise ValueError(f"invalid handler name {name!r}; expected a non-empty string")
        if name in self.handlers:
            existing = self.handlers[name].function
            raise ValueError(
                f"handler name {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; give one of them another name"
            )
        _check_timeout(f"timeout of {name}", timeout)
        _check_positive(f"grace of {name}", grace)
        _check_count(f"max_retry of {name}", max_retry, 0)
        _check_count(f"max_memory of {name}", max_memory, 1)
        self.handlers[name] = Handler(name, function, timeout, grace, max_retry, max_memory, queue)
        return function

    def on_worker_start(self, function: Callable[[], Any]) -> Callable[[], Any]:
        """Register a function each worker calls right after it is forked."""
        self.worker_start_hooks.append(function)
        return function

    def describe(self) -> dict[str, Any]:
        """Return the handler names and their resolved defaults as JSON-ready data.

        The supervisor never imports the application, so it validates and resolves
        enqueued tasks with this description, sent by the fork server. A timeout of
        None here means no limit.
        """

        def timeout_s(value):
            return None if value is NO_TIMEOUT else float(value)

        handlers = {}
        for handler in self.handlers.values():
            timeout = self.default_timeout if handler.timeout is None else handler.timeout
            handlers[handler.name] = {
                "timeout_s": timeout_s(timeout),
                "grace_s": float(self.default_grace if handler.grace is None else handler.grace),
                "max_retry": self.default_max_retry if handler.max_retry is None else handler.max_retry,
                "max_memory": self.default_max_memory if handler.max_memory is None else handler.max_memory,
                "queue": handler.queue,
            }
        return {"name": self.name, "handlers": handlers,
                "custom_retry_delay": self.retry_delay is not asynq_retry_delay}
