"""Just enough of the Kubernetes API for list + watch, over aiohttp.

Credentials are resolved by `kubeconfig.py` as kubectl resolves them (in-cluster service account, else
`--kubeconfig` / `$KUBECONFIG` / ~/.kube/config with `--context`, exec plugins and rotating tokens included);
the requests themselves are made here, asynchronously, so hundreds of watches cost no threads and the event
loop never blocks on the API. Every request is counted by verb and resource.
"""

from __future__ import annotations

import asyncio
import json
import random
from asyncio import sslproto
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

# Credentials come from kubeconfig.py (re-exported: callers build them by hand in tests).
from .kubeconfig import Credentials as Credentials
from .kubeconfig import load_credentials as load_credentials

# The resources discovery lists and watches, from the one table (re-exported: callers import them from here).
from .resources import ENDPOINT_SLICES as ENDPOINT_SLICES
from .resources import MUTATING_CONFIGS as MUTATING_CONFIGS
from .resources import NAMESPACES as NAMESPACES
from .resources import SERVICES as SERVICES
from .resources import VALIDATING_CONFIGS as VALIDATING_CONFIGS
from .resources import Resource as Resource

LIST_PAGE_SIZE = 500  # what kubectl uses: bounded memory per page on both sides
# TCP connect + TLS handshake of a new connection, as client-go's TLSHandshakeTimeout: a watch retried into a
# black hole gives up (and retries) after this, instead of after the 30 s a dial alone may take.
CONNECT_SECONDS = 10


# asyncio reads a TLS connection through a buffer of `SSLProtocol.max_size` (256 KiB), allocated with the
# connection and held while it is open: a watch holds its connection for minutes, and 64 probes in flight hold
# 16 MiB. A TLS record carries at most 16 KiB, so 32 KiB still takes one whole record per read.
TLS_READ_BUFFER_BYTES = 32 * 1024


def small_tls_read_buffers() -> None:
    """Every TLS connection this process opens from now on reads through a 32 KiB buffer, not 256 KiB.

    A class attribute of asyncio's (CPython's) SSL protocol: there is no per-connection setting, and an event
    loop with its own TLS (uvloop) ignores it.
    """
    sslproto.SSLProtocol.max_size = TLS_READ_BUFFER_BYTES


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop `metadata.managedFields`: a third of a stored object's size, and nothing here reads it."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Gone(ApiError):
    """410: the resourceVersion we resume from was compacted away; a fresh list is needed."""


class KubeApi:
    """List and watch, counted. One aiohttp session (connection pool) for every request."""

    def __init__(self, credentials: Credentials) -> None:
        self._creds = credentials
        self._session: aiohttp.ClientSession | None = None
        self.requests: Counter[tuple[str, str]] = Counter()
        self.server = credentials.server
        # The first 401/403 on a list: permanent for one-shot commands (`check` fails fast instead of retrying).
        self.refusal: ApiError | None = None
        self.refused = asyncio.Event()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit=0: every watch holds a connection; the number of watches is bounded by discovery itself.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0,
                                                                                 ssl=self._creds.ssl_context))
        return self._session

    async def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "admission-webhook-exporter"}
        # Off the event loop: a kubeconfig exec plugin (cloud IAM) may run a subprocess to refresh the token.
        token = await asyncio.to_thread(self._creds.token)
        if token:
            headers["Authorization"] = token
        return headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            # TLS connections finish their close_notify exchange on later loop turns; give them that time so a
            # stopped exporter (or a one-shot `check`) leaves no half-closed socket behind (aiohttp's advice).
            await asyncio.sleep(0.25)

    @staticmethod
    async def _raise_for(response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        text = await response.text()
        try:
            message = json.loads(text).get("message", text)
        except ValueError:
            message = text
        error = Gone if response.status == 410 else ApiError
        raise error(response.status, str(message)[:300])

    async def list(self, resource: Resource, *, namespace: str | None = None, label_selector: str | None = None,
                   keep: Callable[[dict[str, Any]], bool] | None = None,
                   request_seconds: float = 60) -> tuple[list[dict[str, Any]], str]:
        """Every object (paginated; only those `keep` says, page by page) and the resourceVersion to watch from."""
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            params: dict[str, str | int] = {"limit": LIST_PAGE_SIZE}
            if label_selector:
                params["labelSelector"] = label_selector
            if cont:
                params["continue"] = cont
            self.requests[("list", resource.plural)] += 1
            url = f"{self._creds.server}{resource.path(namespace)}?{urlencode(params)}"
            async with self._client().get(url, headers=await self._headers(),
                                          timeout=aiohttp.ClientTimeout(total=request_seconds),
                                          server_hostname=self._creds.server_hostname,
                                          proxy=self._creds.proxy) as response:
                try:
                    await self._raise_for(response)
                except ApiError as err:
                    if err.status in (401, 403) and self.refusal is None:
                        self.refusal = ApiError(err.status, f"list {resource.plural}: {err.message}")
                        self.refused.set()
                    raise
                body = await response.json()
            for item in body.get("items") or []:
                if keep is None or keep(item):
                    item.setdefault("kind", resource.kind)  # list items come without kind
                    items.append(_slim(item))
            meta = body.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                return items, str(meta.get("resourceVersion", ""))

    async def dry_run_create(self, resource: Resource, body: Mapping[str, Any], *, namespace: str | None = None,
                             request_seconds: float = 60) -> tuple[int, Any]:
        """POST `body` with `dryRun=All`: admitted and validated, webhooks called, nothing stored.

        There is no other write here, and no switch to turn the dry run off: the exporter never writes. The
        answer is returned, never raised (a refusal is what the caller came to read): the HTTP status and the
        decoded body (the object, or the apiserver's `Status`; the raw text when it is not JSON).
        """
        self.requests[("create", resource.plural)] += 1
        url = f"{self._creds.server}{resource.path(namespace)}?{urlencode({'dryRun': 'All'})}"
        headers = {**await self._headers(), "Content-Type": "application/json"}
        async with self._client().post(url, data=json.dumps(body), headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=request_seconds,
                                                                     sock_connect=CONNECT_SECONDS)) as response:
            text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    async def watch(self, resource: Resource, *, resource_version: str, namespace: str | None = None,
                    label_selector: str | None = None, server_timeout: int = 290, idle_timeout: float = 330,
                    on_open: Callable[[], None] | None = None) -> AsyncIterator[tuple[str, Mapping[str, Any]]]:
        """Events from `resource_version` on, with bookmarks; ends when the server closes the watch.

        `idle_timeout` bounds the silence between two lines: the server sends bookmarks, so a watch that
        says nothing for longer than its own timeout is a dead connection, not a quiet cluster.
        `on_open` is called once the server has accepted the watch (2xx headers received), which may be long
        before the first event: the caller learns the watch is established, not merely requested.
        """
        params: dict[str, str | int] = {"watch": 1, "resourceVersion": resource_version,
                                        "allowWatchBookmarks": "true", "timeoutSeconds": server_timeout}
        if label_selector:
            params["labelSelector"] = label_selector
        self.requests[("watch", resource.plural)] += 1
        url = f"{self._creds.server}{resource.path(namespace)}?{urlencode(params)}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS, sock_read=idle_timeout)
        async with self._client().get(url, headers=await self._headers(), timeout=timeout,
                                      server_hostname=self._creds.server_hostname,
                                      proxy=self._creds.proxy) as response:
            await self._raise_for(response)
            if on_open is not None:
                on_open()
            while True:
                line = await response.content.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("type", "")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    status = int(obj.get("code") or 500)
                    error = Gone if status == 410 else ApiError
                    raise error(status, str(obj.get("message", "watch error")))
                if isinstance(obj, dict) and kind != "BOOKMARK":
                    obj.setdefault("kind", resource.kind)
                    _slim(obj)
                yield kind, obj


async def sleep_backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> None:
    """Exponential backoff with full jitter, so many watches failing together do not retry together."""
    await asyncio.sleep(random.uniform(0, min(cap, base * 2 ** min(attempt, 10))))
