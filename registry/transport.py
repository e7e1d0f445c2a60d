"""HTTP to one registry: auth (anonymous, basic, bearer token), errors users can act on.

:class:`RegistryTransport` sends a request, answers a 401 challenge once (basic
credentials, or a token fetched from the challenge's realm and cached per scope), and
turns failures into imgsave's errors: unreachable → retryable :class:`RegistryError`,
401/403 → :class:`PermissionDenied` with the registry's own message. Requests to the
registry API (``/v2/``) and to its token server that are safe to repeat are retried by
a :class:`~registry.retry.RetryPolicy` (none unless one is given; the site's from
``[registry] retry_attempts``/``retry_wait_seconds``). The API methods live in
:mod:`registry.oci`.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import requests

from core.errors import ConfigError, NotFound, PermissionDenied, RegistryError
from registry.auth import Credentials
from registry.retry import RETRIED_METHODS, RetryPolicy, short_reason
from registry.tokens import Challenge, TokenCache, parse_challenge

log = logging.getLogger(__name__)


class RegistryTransport:
    """One registry's base URL, credentials, TLS setting and auth state."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"registry URL {base_url!r} must start with http:// or https://")
        if isinstance(verify, str) and not os.path.isfile(verify):
            raise ConfigError(f"registry CA bundle {verify} does not exist or is not a file")
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        self.verify = verify
        self.session = session or requests.Session()
        self.session.verify = verify
        self.retry = retry or RetryPolicy.once()
        self.session.mount(self.base_url + "/v2/", self.retry.adapter(self.base_url))
        self._netloc = urlsplit(self.base_url).netloc
        self._scheme = ""  # "basic" or "bearer" once the registry has challenged us
        self._tokens = TokenCache()

    def url(self, path: str) -> str:
        """Absolute URL for an API path ("/v2/...") or a Location header (maybe relative)."""
        return urljoin(self.base_url + "/", path)

    def close(self) -> None:
        self.session.close()

    def twin(self) -> Self:
        """A client of the same registry, credentials and TLS setting with its own HTTP
        session and token cache: for another thread (a ``requests.Session`` is not
        meant to be shared between threads)."""
        return type(self)(self.base_url, self.credentials, verify=self.verify,
                          timeout=self.timeout, retry=self.retry)  # fmt: skip

    # --- sending ------------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one request; on 401 answer the challenge once and resend.

        ``scope`` is the token scope this request needs (e.g.
        ``repository:alice/x:pull,push``); a challenge's own scope wins over it.
        Bodies are bytes so a retry can resend them.
        """
        url = self.url(path)
        sent = dict(headers or {})
        same_origin = urlsplit(url).netloc == self._netloc
        auth = self._known_auth(scope) if same_origin else None
        if auth:
            sent["Authorization"] = auth
        response = self._raw(method, url, sent, data, params)
        if response.status_code != 401 or not same_origin:
            return response
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        answer = self._answer(challenge, scope, response)
        if answer == auth:
            raise self.error(response, f"{method} {urlsplit(url).path}")
        sent["Authorization"] = answer
        response = self._raw(method, url, sent, data, params)
        if response.status_code == 401:
            again = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if again and again.error == "insufficient_scope":
                raise PermissionDenied(
                    f"registry at {self.base_url} denied {method} {urlsplit(url).path}: "
                    f"the token server did not grant {again.scope or scope!r} to "
                    f"{self._who()} (insufficient_scope)"
                )
            raise self.error(response, f"{method} {urlsplit(url).path}")
        return response

    def _who(self) -> str:
        return f"user {self.credentials.username!r}" if self.credentials else "anonymous"

    def _raw(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: bytes | None,
        params: Mapping[str, str] | None,
    ) -> requests.Response:
        started = time.monotonic()
        try:
            return self.session.request(
                method,
                url,
                headers=dict(headers),
                data=data,
                params=params,
                timeout=self.timeout,
                # Per request: requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override
                # session.verify (psf/requests#3829), which would undo a site's ca_bundle.
                verify=self.verify,
            )
        except requests.exceptions.SSLError as e:
            raise RegistryError(
                f"TLS verification of the registry at {self.base_url} failed: {short_reason(e)}; "
                "if the site uses its own CA, set registry.ca_bundle to its certificate file",
                retryable=False,
            ) from e
        except (requests.ConnectionError, requests.Timeout) as e:
            tries = self.retry.attempts if method.upper() in RETRIED_METHODS else 1
            after = _after(tries, time.monotonic() - started)
            raise RegistryError(
                f"registry at {self.base_url} is unreachable: {short_reason(e)}{after}",
                retryable=True,
            ) from e

    # --- auth -------------------------------------------------------------------------

    def _known_auth(self, scope: str) -> str | None:
        if self._scheme == "basic" and self.credentials:
            return _basic_header(self.credentials)
        if self._scheme == "bearer":
            token = self._tokens.get(scope)
            return f"Bearer {token}" if token else None
        return None

    def _answer(self, challenge: Challenge | None, scope: str, response: requests.Response) -> str:
        if challenge is None:
            raise self.error(response, "authenticate")
        if challenge.scheme == "basic":
            if not self.credentials:
                raise PermissionDenied(
                    f"registry at {self.base_url} needs a user name and password; set "
                    "registry.credentials_file or registry.credential_helper"
                )
            self._scheme = "basic"
            return _basic_header(self.credentials)
        if challenge.scheme == "bearer" and challenge.realm:
            self._scheme = "bearer"
            wanted = challenge.scope or scope
            token = self._fetch_token(challenge, wanted)
            self._tokens.put(list({scope, wanted}), *token)
            return f"Bearer {token[0]}"
        raise RegistryError(
            f"registry at {self.base_url} asks for {challenge.scheme!r} auth, which imgsave "
            "does not support (only basic and bearer)"
        )

    def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float | None]:
        realm = challenge.realm
        if not realm.startswith(("http://", "https://")):
            raise RegistryError(f"registry at {self.base_url} gave a bad token realm {realm!r}")
        if self.credentials and self.base_url.startswith("https:") and realm.startswith("http:"):
            raise RegistryError(
                f"registry at {self.base_url} sends credentials to a plain-http token "
                f"server ({realm}); refusing"
            )
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params += [("scope", s) for s in scope.split()]
        self.session.mount(realm, self.retry.adapter(realm))  # a GET: safe to repeat
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        try:
            response = self.session.get(
                realm, params=params, auth=auth, timeout=self.timeout, verify=self.verify
            )
        except requests.exceptions.SSLError as e:
            raise RegistryError(
                f"TLS verification of token server {realm} failed: {short_reason(e)}"
            ) from e
        except (requests.ConnectionError, requests.Timeout) as e:
            raise RegistryError(
                f"token server {realm} of the registry at {self.base_url} is unreachable: "
                f"{short_reason(e)}",
                retryable=True,
            ) from e
        if response.status_code in (401, 403):
            raise PermissionDenied(
                f"token server {realm} refused {self._who()} for {scope or 'the registry'}: "
                f"{error_message(response)}"
            )
        if response.status_code != 200:
            raise self.error(response, f"get a token from {realm}")
        try:
            body: Any = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {realm} answered without a token")
        expires = body.get("expires_in")
        return token, float(expires) if isinstance(expires, int | float) else None

    # --- errors -------------------------------------------------------------------------

    def error(self, response: requests.Response, what: str) -> Exception:
        """The imgsave error for a failed response to ``what`` (e.g. "list tags of x")."""
        status = response.status_code
        where = f"registry at {self.base_url}"
        message = error_message(response)
        if status in (401, 403):
            return PermissionDenied(f"{where} denied {what}: {message}")
        if status == 404:
            return NotFound(f"{what}: not found in {where}: {message}")
        retryable = status == 429 or status >= 500
        after = _after(_attempts(response), 0.0) if retryable else ""
        return RegistryError(f"{where} failed to {what}: {message}{after}", retryable=retryable)

    def check(self, response: requests.Response, what: str, *ok: int) -> requests.Response:
        """Return ``response`` if its status is one of ``ok``, else raise :meth:`error`."""
        if response.status_code in ok:
            return response
        raise self.error(response, what)


def error_message(response: requests.Response) -> str:
    """The registry's own words: ``CODE: message`` for each OCI error, else the status."""
    try:
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
    except ValueError:
        errors = None
    if isinstance(errors, list) and errors:
        parts = []
        for item in errors:
            if isinstance(item, dict):
                code, text = item.get("code", ""), item.get("message", "")
                parts.append(f"{code}: {text}" if code and text else str(code or text))
        if parts:
            return f"HTTP {response.status_code} " + "; ".join(parts)
    text = response.text.strip()[:200] if response.text else ""
    reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
    return f"{reason}: {text}" if text and not text.startswith("<") else reason


def _basic_header(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def _attempts(response: requests.Response) -> int:
    """How many tries urllib3 made for ``response`` (its Retry's history + 1)."""
    retries = getattr(response.raw, "retries", None)
    history = getattr(retries, "history", ()) or ()
    return len(history) + 1


def _after(attempts: int, seconds: float) -> str:
    if attempts <= 1:
        return ""
    took = f" in {seconds:.1f} s" if seconds else ""
    return f" (gave up after {attempts} attempts{took})"
