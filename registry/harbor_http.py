"""HTTP to Harbor's API v2.0 (``/api/v2.0``): auth, paths, pages and errors.

Harbor's API is not the registry API: it never challenges. A request with wrong or
no credentials is served as anonymous (``server/middleware/security``: every
authenticator that fails returns nothing), so credentials are sent with every request
and a 401 means "Harbor did not accept them". Paths follow ``api/v2.0/swagger.yaml``:
a repository name is given without its project, and a slash in it is URL-encoded
twice (``a/b`` → ``a%252Fb``, see the ``repositoryName`` parameter). Lists are paged
with ``page``/``page_size`` (at most 100) and answered with ``X-Total-Count`` and a
``Link`` header (``<url>; rel="next" , <url>; rel="prev"``, relative URLs).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests

from core.errors import ImgsaveError, NotFound, PermissionDenied, RegistryError
from registry.oci import RegistryClient
from registry.transport import error_message

log = logging.getLogger(__name__)

API_PREFIX = "/api/v2.0"
PAGE_SIZE = 100  # the swagger's maximum for page_size
MAX_PAGES = 10_000  # a Link header that loops must not hang a save
_LINK = re.compile(r"<([^>]*)>([^<]*)")  # one link: <url> and its ;-params up to the next <
_REL = re.compile(r'rel\s*=\s*"?([^";,]+)"?')


def project_path(project: str) -> str:
    """``/projects/<project>`` with the name quoted (project names have no slash)."""
    return f"/projects/{quote(project, safe='')}"


def repository_path(repository: str) -> str:
    """``/projects/<p>/repositories/<r>`` for a full repository name ("p/ml/torch").

    The name inside the project is encoded twice: Harbor decodes the path once, then
    once more in the handler (``unescapePathParams``), so "ml/torch" → ``ml%252Ftorch``.
    """
    project, sep, rest = repository.partition("/")
    if not sep or not rest:
        raise NotFound(f"repository {repository!r} has no project part (expected 'project/name')")
    return f"{project_path(project)}/repositories/{quote(quote(rest, safe=''), safe='')}"


def reference_path(reference: str) -> str:
    """A tag or digest as a path segment (a digest keeps its ':')."""
    return quote(reference, safe=":")


class HarborApi:
    """Requests to one Harbor's API, over the session of a :class:`RegistryClient`.

    The client's base URL, TLS setting, timeout and credentials are reused, so the
    OCI (``/v2/``) and Harbor (``/api/v2.0/``) sides of one site never disagree.
    """

    def __init__(self, registry: RegistryClient) -> None:
        self.registry = registry
        self.base_url = registry.base_url
        self._netloc = urlsplit(registry.base_url).netloc

    @property
    def who(self) -> str:
        """The account the requests are made as, for messages (never the secret)."""
        creds = self.registry.credentials
        return f"account {creds.username!r}" if creds else "anonymous access"

    # --- sending ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: object | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> requests.Response:
        """Send one API request; return the response if its status is in ``ok``.

        ``path`` is below ``/api/v2.0`` ("/projects") or a URL from a ``Link`` header.
        Put 404 in ``ok`` to look something up that may be absent.
        """
        url = self._url(path)
        creds = self.registry.credentials
        try:
            response = self.registry.session.request(
                method,
                url,
                params=params,
                json=json_body,
                headers={"Accept": "application/json"},
                auth=(creds.username, creds.password) if creds else None,
                timeout=self.registry.timeout,
                # per request, as in registry.transport: REQUESTS_CA_BUNDLE would win
                verify=self.registry.verify,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as e:
            raise RegistryError(
                f"TLS verification of Harbor at {self.base_url} failed: {e}; if the site uses "
                "its own CA, set registry.ca_bundle to its certificate file"
            ) from e
        except (requests.ConnectionError, requests.Timeout) as e:
            raise RegistryError(
                f"Harbor at {self.base_url} is unreachable ({what}): {_short(e)}", retryable=True
            ) from e
        if response.status_code in ok:
            return response
        raise self.error(response, what)

    def get_json(
        self, path: str, what: str, params: Mapping[str, str] | None = None
    ) -> Any:
        """GET and decode a JSON body."""
        response = self.request("GET", path, what, params=params)
        return json_body(response, what)

    def paged(
        self, path: str, what: str, params: Mapping[str, str] | None = None
    ) -> Iterator[Any]:
        """Every item of a paged list, following ``Link: <...>; rel="next"``.

        Stops when there is no next link, a page is empty, ``X-Total-Count`` items
        were read, or a link repeats (a loop).
        """
        url: str | None = path
        query: dict[str, str] | None = {**(params or {}), "page": "1", "page_size": str(PAGE_SIZE)}
        seen: set[str] = set()
        count = 0
        while url and url not in seen and len(seen) < MAX_PAGES:
            seen.add(url)
            response = self.request("GET", url, what, params=query)
            page = json_body(response, what)
            if page is None:
                page = []  # Harbor sends null for an empty list (Go nil slice)
            if not isinstance(page, list):
                raise RegistryError(f"Harbor at {self.base_url}: {what} did not return a list")
            yield from page
            count += len(page)
            total = _total(response)
            if not page or (total is not None and count >= total):
                return
            url = next_link(response.headers.get("Link", ""))
            query = None  # the link carries its own query

    # --- errors -------------------------------------------------------------------------

    def error(self, response: requests.Response, what: str) -> ImgsaveError:
        """The imgsave error for a failed Harbor response; Harbor's own message kept."""
        status = response.status_code
        where = f"Harbor at {self.base_url}"
        message = error_message(response)
        if status == 401:
            return PermissionDenied(
                f"{where} did not accept the credentials of {self.who} ({what}): {message}. "
                "Harbor treats a wrong secret, a disabled or an expired robot account as no "
                "login at all; check the robot secret in registry.credentials_file"
            )
        if status == 403:
            return PermissionDenied(
                f"{where} denied {what} to {self.who}: {message}; give the robot account "
                "that permission on the project (docs/harbor.md)"
            )
        if status == 404:
            return NotFound(f"{what}: not found in {where}: {message}")
        if status in (301, 302, 307, 308):
            return RegistryError(
                f"{where} redirected {what} to {response.headers.get('Location', '?')}; set "
                "registry.url to the address Harbor is served at (imgsave does not follow "
                "redirects with credentials)"
            )
        if status == 412:
            return RegistryError(
                f"{where} refused to {what}: {message} (an immutable-tag rule or another "
                "project policy protects it)"
            )
        retryable = status == 429 or status >= 500
        return RegistryError(f"{where} failed to {what}: {message}", retryable=retryable)

    # --- helpers ------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            url = path
        elif path.startswith(API_PREFIX + "/"):
            url = urljoin(self.base_url + "/", path)  # a Link header's relative URL
        else:
            url = f"{self.base_url}{API_PREFIX}{path}"
        if urlsplit(url).netloc != self._netloc:
            # credentials go with every request: never to another host
            raise RegistryError(f"Harbor at {self.base_url} linked to another host: {url}")
        return url


def next_link(header: str) -> str | None:
    """The ``rel="next"`` URL of a Harbor ``Link`` header (links joined by " , ")."""
    for url, params in _LINK.findall(header):
        if any("next" in rel.split() for rel in _REL.findall(params)):
            return str(url)
    return None


def _total(response: requests.Response) -> int | None:
    try:
        return int(response.headers["X-Total-Count"])
    except (KeyError, ValueError):
        return None


def json_body(response: requests.Response, what: str) -> Any:
    """The decoded JSON body of a Harbor answer; :class:`RegistryError` if it is not JSON."""
    try:
        return response.json()
    except ValueError as e:
        raise RegistryError(f"Harbor answered {what} without JSON: {response.text[:100]!r}") from e


def _short(error: Exception) -> str:
    text = str(error)
    for reason in ("Connection refused", "timed out", "Name or service not known",
                   "No route to host", "Connection reset by peer"):
        if reason.lower() in text.lower():
            return reason
    return text[:200]
