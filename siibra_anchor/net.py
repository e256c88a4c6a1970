"""Bounded network calls: a deadline for any call, retries with exponential backoff, a fast reachability probe.

siibra's own HTTP requests carry no timeout, so every siibra call that may touch the network runs through
:func:`call_with_timeout` (a worker thread with a deadline). Offline, :func:`is_online` answers in about a
second so callers can fail fast with a typed error instead of waiting for TCP timeouts.

Set the environment variable ``SIIBRA_ANCHOR_OFFLINE=1`` to force offline behaviour without probing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import InvalidParameterError, NetworkError

__all__ = ["call_with_timeout", "retry", "is_online", "is_reachable", "DEFAULT_HOSTS", "forced_offline"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: (host, port) pairs siibra needs: its configuration mirrors and the EBRAINS data proxy.
DEFAULT_HOSTS: tuple[tuple[str, int], ...] = (
    ("data-proxy.ebrains.eu", 443),
    ("github.com", 443),
    ("gitlab.ebrains.eu", 443),
)

_probe_cache: dict[tuple[tuple[str, int], ...], tuple[float, bool]] = {}
_PROBE_TTL_S = 60.0


def forced_offline() -> bool:
    """True when ``SIIBRA_ANCHOR_OFFLINE`` is set to a true value (1, true, yes)."""
    return os.environ.get("SIIBRA_ANCHOR_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def call_with_timeout(fn: Callable[..., T], *args: Any, timeout_s: float, what: str = "", **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a worker thread and return its value within ``timeout_s`` seconds.

    Exceptions of ``fn`` propagate unchanged. If the deadline passes, :class:`NetworkError` is raised
    (the worker is a daemon thread and is abandoned; it cannot block interpreter exit).
    """
    if not timeout_s or timeout_s <= 0:
        raise InvalidParameterError(f"timeout_s must be > 0, got {timeout_s!r}")
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=work, name=f"siibra-anchor-net:{what or getattr(fn, '__name__', 'call')}", daemon=True)
    t.start()
    if not done.wait(timeout_s):
        raise NetworkError(
            f"{what or getattr(fn, '__name__', 'network call')} did not finish within {timeout_s:g} s; "
            "check the network connection or raise the timeout"
        )
    if "error" in box:
        raise box["error"]
    return box["value"]


def retry(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 3,
    backoff_s: float = 0.5,
    factor: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError),
    **kwargs: Any,
) -> T:
    """Call ``fn`` up to ``attempts`` times, sleeping ``backoff_s * factor**i`` after failure ``i``.

    Only exceptions in ``retry_on`` are retried; the last one is re-raised. The schedule is deterministic
    (no jitter).
    """
    if attempts < 1:
        raise InvalidParameterError(f"attempts must be >= 1, got {attempts}")
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except retry_on as exc:
            if i == attempts - 1:
                raise
            delay = backoff_s * factor**i
            log.info("attempt %d/%d of %s failed (%s); retrying in %.2f s", i + 1, attempts, fn, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def is_reachable(host: str, port: int = 443, timeout_s: float = 1.5) -> bool:
    """True if a TCP connection to ``host:port`` opens within ``timeout_s`` (DNS included)."""
    box: dict[str, bool] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                box["ok"] = True
        except OSError:
            box["ok"] = False

    # DNS resolution ignores the socket timeout; bound the whole probe with a thread deadline
    t = threading.Thread(target=probe, daemon=True, name=f"siibra-anchor-probe:{host}")
    t.start()
    t.join(timeout_s + 0.5)
    return bool(box.get("ok", False))


def is_online(hosts: Sequence[tuple[str, int]] = DEFAULT_HOSTS, timeout_s: float = 1.5, refresh: bool = False) -> bool:
    """Whether the services siibra needs are reachable (any of ``hosts``); cached for 60 s.

    Returns False at once when :func:`forced_offline`. The probes run in parallel, so the answer comes within
    about ``timeout_s`` seconds even with no network at all.
    """
    if forced_offline():
        return False
    key = tuple((str(h), int(p)) for h, p in hosts)
    now = time.monotonic()
    hit = _probe_cache.get(key)
    if hit is not None and not refresh and now - hit[0] < _PROBE_TTL_S:
        return hit[1]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda h=h, p=p: results.append(is_reachable(h, p, timeout_s))) for h, p in key]
    for t in threads:
        t.daemon = True
        t.start()
    deadline = time.monotonic() + timeout_s + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    ok = any(results)
    _probe_cache[key] = (now, ok)
    log.debug("network probe %s -> %s", key, ok)
    return ok
