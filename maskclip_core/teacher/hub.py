"""Model-hub reachability: a quick probe before a download, so a machine without the hub fails in seconds.

huggingface_hub (used by open_clip and timm) retries a download whose host cannot be reached five times with
back-off, about 25 s per file, and both libraries try two files: ~50 s of warnings before the error. A name
that does not resolve, or a host that refuses or does not answer a connection, will not answer a retry
either. So a download first probes the hub's host (or the HTTP(S) proxy the environment names) once, with a
short timeout; when the probe fails the download runs in huggingface_hub's offline mode: weights already in
the local cache still load, anything else fails at once, and the caller names the probe's reason.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

PROBE_TIMEOUT_S = 3.0
VERDICT_TTL_S = 60.0  # a probe's answer is reused this long: one model load asks once, a long worker again later

_verdicts: dict[tuple[str, int], tuple[float, str | None]] = {}
_offline_lock = threading.Lock()
_offline_depth = 0
_offline_saved = False


def hub_endpoint() -> str:
    """The Hugging Face endpoint downloads go to (``HF_ENDPOINT``, else huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _target(url: str) -> tuple[str, int]:
    """(host, port) a request to ``url`` connects to first: the environment's proxy for it, else the host."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return host, port


def _resolve(host: str, port: int, timeout: float) -> list[tuple]:
    """getaddrinfo with a timeout (it has none of its own: a dead resolver can take tens of seconds)."""
    answer: dict[str, object] = {}

    def lookup() -> None:
        try:
            answer["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            answer["error"] = exc

    worker = threading.Thread(target=lookup, name="hub-name-lookup", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in answer:
        raise answer["error"]  # type: ignore[misc]
    return answer["addresses"]  # type: ignore[return-value]


def _probe(host: str, port: int, timeout: float) -> str | None:
    if not host:
        return "no host in the URL"
    deadline = time.monotonic() + timeout
    try:
        addresses = _resolve(host, port, timeout)
    except OSError as exc:
        return f"name lookup of {host} failed ({exc})"
    last: OSError | None = None
    for family, kind, proto, _, address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(left)
            try:
                sock.connect(address)
                return None
            except OSError as exc:
                last = exc
    return f"no connection to {host}:{port} ({last or f'no answer within {timeout:g} s'})"


def unreachable_reason(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url``'s host (or its proxy) accepts a TCP connection within ``timeout`` seconds; otherwise
    one line saying why not. Answers are remembered for :data:`VERDICT_TTL_S`."""
    target = _target(url)
    now = time.monotonic()
    known = _verdicts.get(target)
    if known is not None and now - known[0] < VERDICT_TTL_S:
        return known[1]
    reason = _probe(*target, timeout)
    _verdicts[target] = (now, reason)
    return reason


@contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode (``HF_HUB_OFFLINE``) inside the block: cached files only, no requests.

    It reads the flag at each request; nested and concurrent blocks share it and the first value comes back
    when the last block ends.
    """
    global _offline_depth, _offline_saved
    from huggingface_hub import constants

    with _offline_lock:
        if _offline_depth == 0:
            _offline_saved = constants.HF_HUB_OFFLINE
        _offline_depth += 1
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        with _offline_lock:
            _offline_depth -= 1
            if _offline_depth == 0:
                constants.HF_HUB_OFFLINE = _offline_saved


@contextmanager
def hub_downloads(timeout: float = PROBE_TIMEOUT_S) -> Iterator[str | None]:
    """Around a download from the Hugging Face hub: yields None when the hub answers (or offline mode is
    already on: the client then says so itself); otherwise the reason it does not, with the download inside
    limited to the local cache."""
    from huggingface_hub import constants

    reason = None if constants.is_offline_mode() else unreachable_reason(hub_endpoint(), timeout)
    if reason is None:
        yield None
        return
    with _hub_offline():
        yield reason
