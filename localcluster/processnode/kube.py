"""A small dict-based REST layer over the ``kubernetes`` sync client's configuration and TLS pool.

Objects are plain JSON dicts with the API's own camelCase keys, so code here reads like the API
reference. Watches reconnect on errors and relist on ``410 Gone``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client, config

Obj = dict[str, Any]
log = logging.getLogger(__name__)


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = str(json.loads(body).get("reason", ""))
        except ValueError:
            self.reason = ""
        super().__init__(f"{method} {path}: {status} {body[:300]}")


class Kube:
    """Thin REST client: ``get/post/put/patch/delete`` on API paths, plus :meth:`watch`."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        # One worker thread per pod plus the watches share the pool: keep connections for all of them.
        cfg.connection_pool_maxsize = 64
        self.host = cfg.host.rstrip("/")
        self._api = client.ApiClient(cfg)
        self._pool: urllib3.PoolManager = self._api.rest_client.pool_manager
        self._headers = {"Accept": "application/json", "User-Agent": "processnode/0.1"}
        auth = cfg.get_api_key_with_prefix("authorization") if cfg.api_key else None
        if auth:
            self._headers["Authorization"] = auth

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        url = self.host + path + (("?" + urlencode(query)) if query else "")
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        resp = self._pool.request(method, url, body=data, headers=headers, timeout=timeout, retries=False)
        text = resp.data.decode("utf-8", "replace")
        if resp.status >= 300:
            raise ApiError(resp.status, text, method, path)
        return json.loads(text) if text else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, kind: str = "strategic-merge-patch") -> Any:
        return self.request("PATCH", path, body, content_type=f"application/{kind}+json")

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def _stream(self, path: str, query: dict[str, Any], timeout: float) -> Iterator[Obj]:
        url = self.host + path + "?" + urlencode(query)
        resp = self._pool.request(
            "GET",
            url,
            headers=self._headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout),
            retries=False,
        )
        try:
            if resp.status >= 300:
                raise ApiError(resp.status, resp.read().decode("utf-8", "replace"), "WATCH", path)
            buf = b""
            for chunk in resp.stream(64 * 1024, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()

    def watch(
        self,
        path: str,
        handler: Callable[[str, Obj], None],
        stop: threading.Event,
        relisted: Callable[[list[Obj]], None] | None = None,
        **query: Any,
    ) -> None:
        """List then watch ``path`` until ``stop`` is set, calling ``handler(type, object)``.

        Every (re)list calls ``relisted(items)`` first, with the full current list, so callers can
        reconcile objects deleted while the watch was down. Errors reconnect after a short back-off;
        ``410 Gone``/an ERROR event relists.
        """
        backoff = 0.5
        while not stop.is_set():
            try:
                listing = self.get(path, **query)
                rv = listing["metadata"]["resourceVersion"]
                items = listing.get("items", [])
                if relisted is not None:
                    relisted(items)
                else:
                    for item in items:
                        handler("ADDED", item)
                backoff = 0.5
                while not stop.is_set():
                    wq = dict(query, watch="1", resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds=240)
                    gone = False
                    for event in self._stream(path, wq, timeout=270):
                        etype, obj = event.get("type", ""), event.get("object") or {}
                        if etype == "ERROR":
                            gone = True
                            log.info("watch %s: %s; relisting", path, obj.get("message"))
                            break
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if etype != "BOOKMARK":
                            handler(etype, obj)
                        if stop.is_set():
                            return
                    if gone:
                        break
            except Exception as exc:
                if stop.is_set():
                    return
                log.warning("watch %s failed (%s); retrying in %.1fs", path, exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5)


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def now_micro() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"
