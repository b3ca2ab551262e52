"""The connection to a Label Studio server for ``review push|pull``: the SDK client, one-line errors, served files.

Label Studio's SDK (``label-studio-sdk`` 2.x) authenticates with a legacy token or a personal access token,
whichever the key is, and retries a request that got a 5xx, 408, 409 or 429 answer (``MAX_RETRIES`` times, with
backoff). Network and authentication failures become one-line ``LabelStudioError``s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

MAX_RETRIES = 4  # a transient 5xx (a restarting server, a busy worker) is retried with backoff, then fails


class LabelStudioError(ValueError):
    """A problem the user fixes (server unreachable, key refused, images Label Studio cannot serve)."""


@dataclass(frozen=True)
class LabelStudioTarget:
    """Where to push / pull: the server, the key, and the project (title or id; default from the dataset)."""

    url: str
    api_key: str
    project: str | None = None


@contextmanager
def server_errors(url: str) -> Iterator[None]:
    """Network and HTTP failures of the SDK as one-line ``LabelStudioError``s naming the server."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except httpx.TimeoutException as exc:
        raise LabelStudioError(f"Label Studio at {url} did not answer in time ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise LabelStudioError(f"cannot reach Label Studio at {url}: {exc or type(exc).__name__}") from None
    except ApiError as exc:
        detail = _detail(exc.body)
        if exc.status_code == 401:
            raise LabelStudioError(
                f"Label Studio at {url} refused the API key (HTTP {exc.status_code}: {detail}); use the access token "
                "or legacy token from its Account & Settings page (--api-key or LABEL_STUDIO_API_KEY)"
            ) from None
        raise LabelStudioError(f"Label Studio at {url} answered HTTP {exc.status_code}: {detail}") from None


def connect(url: str, api_key: str, *, timeout: float = 60.0, httpx_client: Any = None) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client whose key the server accepted (checked with one request)."""
    if not api_key:
        raise LabelStudioError("no Label Studio API key: pass --api-key or set LABEL_STUDIO_API_KEY")
    try:
        from label_studio_sdk import LabelStudio
    except ImportError:  # an optional dependency of the review commands
        raise LabelStudioError("label-studio-sdk is not installed: pip install 'label-studio-sdk>=2,<3'") from None
    base = url.rstrip("/")
    with server_errors(base):
        client = LabelStudio(base_url=base, api_key=api_key, timeout=timeout, httpx_client=httpx_client)
        client.users.whoami()
    # Set after the first answer: an unreachable server fails fast, a transient 5xx later is retried longer.
    client._client_wrapper.httpx_client.base_max_retries = MAX_RETRIES  # the SDK's default is 2
    return client


def served_status(client: Any, url: str) -> int:
    """The HTTP status Label Studio answers for ``url`` (e.g. ``/data/local-files/?d=...``) with our key: what
    the labeling UI gets for the image."""
    path, _, query = url.lstrip("/").partition("?")
    # The SDK's own authenticated HTTP client (it refreshes a personal access token's short-lived access token).
    response = client._client_wrapper.httpx_client.request(path, method="GET", params=dict(parse_qsl(query)))
    return int(response.status_code)


def is_missing(exc: BaseException) -> bool:
    """An SDK error saying the object is gone (e.g. a duplicate task another push deleted first)."""
    return getattr(exc, "status_code", None) == 404


def sdk_field(record: Any, name: str) -> Any:
    """A field of an SDK model or of a plain dict (task listings return predictions and annotations as either)."""
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def canonical_json(value: Any) -> str:
    """One spelling of a JSON value (sorted keys, no spaces): what digests of server content hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _detail(body: Any) -> str:
    """The server's reason in one line: its ``detail`` plus any field errors (e.g. a storage path it refused)."""
    if not isinstance(body, Mapping):
        return " ".join(str(body).split())[:500] if body else "no details"
    parts = [str(body["detail"])] if body.get("detail") else []
    errors = body.get("validation_errors")
    if isinstance(errors, Mapping):
        parts += [f"{field}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for field, v in errors.items()]
    elif errors:
        parts.append(str(errors))
    text = "; ".join(parts) if parts else canonical_json(dict(body))
    return " ".join(text.split())[:500]
