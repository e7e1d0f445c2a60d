"""The CLI's remote mode: the same operations as :class:`~api.service.site.Site`, through an
imgsave REST API (``imgsave --api URL ...``) instead of the scheduler and registry.

The token comes from ``$IMGSAVE_TOKEN`` or a file readable only by its owner (default
``~/.config/imgsave/token``), never from argv. The server decides who the caller is.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from api.service.progress import SaveStatus
from api.service.save_request import SaveRequest, SubmittedSave
from core.errors import (
    ConfigError,
    ImgsaveError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from registry.catalog import ImageInfo
from registry.refs import parse_reference, split_name_tag

TOKEN_ENV = "IMGSAVE_TOKEN"
DEFAULT_TOKEN_FILE = Path("~/.config/imgsave/token")
_ERRORS: dict[int, type[ImgsaveError]] = {
    400: InvalidRequest, 413: InvalidRequest, 415: InvalidRequest, 422: InvalidRequest,
    401: PermissionDenied, 403: PermissionDenied, 404: NotFound,
}  # fmt: skip


def read_token(token_file: str | None) -> str:
    """``$IMGSAVE_TOKEN``, else the token file (which must not be readable by others)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    path = Path(token_file).expanduser() if token_file else DEFAULT_TOKEN_FILE.expanduser()
    try:
        info = path.stat()
        text = path.read_text().strip()
    except OSError as e:
        raise ConfigError(
            f"no API token: set {TOKEN_ENV} or put the token from 'imgsave token create' in "
            f"{path} (chmod 600)"
        ) from e
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionDenied(f"{path} is readable by others; run: chmod 600 {path}")
    return text


class ApiClient:
    """JSON over HTTP with the caller's bearer token; errors become imgsave errors."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/") + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def call(self, method: str, path: str, *, json: object = None,
             params: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> Any:
        """The JSON answer to a request; an error answer raises its imgsave error."""
        return self.send(method, path, json=json, params=params, headers=headers).json()

    def send(self, method: str, path: str, *, json: object = None,
             params: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> requests.Response:
        """The response to a request (any content type); an error raises, as :meth:`call`."""
        try:
            response = self.session.request(method, self.url + path, json=json, params=params,
                                            headers=headers, timeout=self.timeout)
        except requests.RequestException as e:
            raise ImgsaveError(f"imgsave API at {self.url} is unreachable: {e}",
                               retryable=True) from e
        if response.status_code < 400:
            return response
        try:
            error = response.json()["error"]
            message, retryable = str(error["message"]), bool(error.get("retryable"))
        except (ValueError, KeyError, TypeError):
            message, retryable = f"HTTP {response.status_code}", response.status_code >= 500
        kind = _ERRORS.get(response.status_code, ImgsaveError)
        raise kind(message, retryable=retryable)


class RemoteSaves:
    """SaveService's operations, answered by the API."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def submit(self, request: SaveRequest, *, admin: bool = False) -> SubmittedSave:
        if request.in_job:
            raise PermissionDenied("the API cannot run a save inside your job (a service "
                                   "account runs no steps in a user's job): run imgsave "
                                   "on the cluster as yourself for --in-job")  # fmt: skip
        body: dict[str, object] = {
            "container": request.container, "target": request.target,
            "formats": [f.value for f in request.formats], "category": request.category,
        }
        if request.node:
            body["node"] = request.node
        if request.job_id:
            body["job_id"] = request.job_id
        if request.full:
            body["full"] = True
        # One key per invocation: a retry after a lost answer returns the same job.
        key = {"Idempotency-Key": uuid.uuid4().hex}
        try:
            data = self.client.call("POST", "/saves", json=body, headers=key)
        except ImgsaveError as e:
            if not e.retryable:
                raise
            data = self.client.call("POST", "/saves", json=body, headers=key)
        target = parse_reference(data["target"], data["target"].split("/", 1)[0])
        return SubmittedSave(data["job_id"], data["request_id"], target, data["node"])

    def status(self, job_ids: Iterable[str], user: str, *, admin: bool = False
               ) -> list[SaveStatus]:
        wanted = list(job_ids)
        data = self.client.call("GET", "/saves", params={"job_ids": ",".join(wanted)})
        found = {s["job_id"]: SaveStatus.from_dict(s) for s in data["saves"]}
        missing = [j for j in wanted if j not in found]
        if missing:
            raise NotFound(f"job {missing[0]} is not an imgsave save job of yours")
        return [found[j] for j in wanted]

    def queue(self, user: str, *, since: datetime | None = None, admin: bool = False
              ) -> list[SaveStatus]:
        params = {"all_users": "1"} if admin else {}
        if since is not None:
            params["since"] = since.strftime("%Y-%m-%d")
        data = self.client.call("GET", "/saves", params=params)
        return sorted((SaveStatus.from_dict(s) for s in data["saves"]),
                      key=lambda s: (len(s.job_id), s.job_id))

    def cancel(self, job_id: str, user: str, *, admin: bool = False) -> None:
        self.client.call("DELETE", f"/saves/{quote(job_id, safe='')}")


class RemoteImages:
    """The image catalog's operations, answered by the API."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def list(self, user: str) -> list[ImageInfo]:
        data = self.client.call("GET", "/images")
        fields = ImageInfo.__dataclass_fields__
        return [ImageInfo(**{k: v for k, v in i.items() if k in fields})
                for i in data["images"]]

    def delete(self, user: str, name_tag: str) -> str:
        data = self.client.call("DELETE", f"/images/{image_path(name_tag)}")
        return str(data.get("digest", ""))


def image_path(name_tag: str) -> str:
    """``name:tag`` as a URL path, checked by the OCI grammar first: a '.' or '..' part
    would be resolved by the HTTP client and name another image, so it never leaves."""
    name, tag = split_name_tag(name_tag)
    parts = [quote(part, safe="") for part in name.split("/")]
    return "/".join(parts) + ":" + quote(tag, safe="")


class RemoteSite:
    """What the CLI needs of a site, over the API."""

    def __init__(self, url: str, token_file: str | None) -> None:
        self.client = ApiClient(url, read_token(token_file))
        self.saves = RemoteSaves(self.client)
        self.images = RemoteImages(self.client)

    def usage(self, params: dict[str, str]) -> dict[str, Any]:
        """The usage report document (as ``imgsave report --format json`` prints it)."""
        doc = self.client.call("GET", "/reports/usage", params=params)
        if not isinstance(doc, dict) or not {"period", "by", "rows", "total"} <= set(doc):
            raise ImgsaveError(f"imgsave API at {self.client.url} sent no usage report")
        return doc

    def usage_png(self, params: dict[str, str]) -> bytes:
        """The same report's bar chart."""
        return self.client.send("GET", "/reports/usage.png", params=params).content
