"""A real, private registry for tests: Debian's ``docker-registry`` (distribution 2.8).

:func:`running_registry` starts one on a free 127.0.0.1 port with its own storage and
``storage.delete.enabled: true``, optionally with htpasswd basic auth, TLS from a
throw-away CA, or token auth backed by :class:`TokenIssuer` (a small HTTP server that
signs JWTs the way distribution's ``auth: token`` expects). Nothing here is a fake:
the client under test talks to the real registry binary.

Passwords never reach argv: the htpasswd file is written with the ``bcrypt`` library.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SERVICE = "imgsave-test-registry"
ISSUER = "imgsave-test-issuer"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost, as PEM files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a CA certificate and a server certificate/key signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgsave test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes (the only format distribution accepts)."""
    import bcrypt

    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}"
        for user, password in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


# --- token issuer -------------------------------------------------------------------

# (user or None for anonymous, resource type, resource name, requested actions) → granted
Policy = Callable[[str | None, str, str, list[str]], list[str]]


def own_namespace_policy(user: str | None, kind: str, name: str, actions: list[str]) -> list[str]:
    """Users get everything under "<user>/", pull elsewhere, and the catalog; anonymous
    gets nothing. (Roughly what Harbor does with a user's private project.)"""
    if user is None:
        return []
    if kind == "registry" and name == "catalog":
        return actions
    if kind == "repository" and name.startswith(f"{user}/"):
        return actions
    return [a for a in actions if a == "pull"]


@dataclass
class TokenIssuer:
    """A token server for distribution's ``auth: token``: checks basic credentials,
    grants what ``policy`` allows, and signs an RS256 JWT with an ``x5c`` header whose
    certificate is the registry's ``rootcertbundle``."""

    directory: Path
    users: dict[str, str]
    policy: Policy = own_namespace_policy
    lifetime_seconds: int = 300
    port: int = 0
    requests_seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def cert_bundle(self) -> Path:
        return self.directory / "token-signer.pem"

    @contextmanager
    def serve(self) -> Iterator[TokenIssuer]:
        self._make_signer()
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body = issuer.answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()

    def answer(self, path: str, authorization: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one token request."""
        import jwt

        query = parse_qs(urlsplit(path).query)
        user = None
        if authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.users.get(name) != password or not password:
                self.requests_seen.append({"user": name, "denied": True})
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad password"}]}
            user = name
        access = []
        for scope in query.get("scope", []):
            for item in scope.split(" "):
                kind, name, actions = _split_scope(item)
                granted = self.policy(user, kind, name, actions)
                access.append({"type": kind, "name": name, "actions": granted})
        self.requests_seen.append({"user": user, "scopes": query.get("scope", [])})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": query.get("service", [""])[0],
            "exp": now + self.lifetime_seconds,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self._key_pem, algorithm="RS256", headers={"x5c": [self._x5c]})
        return 200, {"token": token, "expires_in": self.lifetime_seconds}

    def _make_signer(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.directory.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.cert_bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _split_scope(item: str) -> tuple[str, str, list[str]]:
    # "repository:alice/x:pull,push" — the name itself may hold a ':' (host:port).
    kind, _, rest = item.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, [a for a in actions.split(",") if a]


# --- the registry -------------------------------------------------------------------


@dataclass(frozen=True)
class RunningRegistry:
    """A started registry: where it is and how to reach it."""

    url: str
    host: str
    storage: Path
    log: Path
    ca_bundle: Path | None = None


@contextmanager
def running_registry(
    directory: Path,
    *,
    users: dict[str, str] | None = None,
    tls: bool = False,
    token_issuer: TokenIssuer | None = None,
    delete_enabled: bool = True,
) -> Iterator[RunningRegistry]:
    """Start ``docker-registry serve`` on a free port; stop it on exit.

    ``users`` turns on htpasswd basic auth; ``token_issuer`` (already serving) turns on
    token auth instead; ``tls`` serves HTTPS with a certificate from a new test CA.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "storage")},
            "delete": {"enabled": delete_enabled},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    ca = None
    if tls:
        ca = make_tls_files(directory / "tls")
        config["http"]["tls"] = {
            "certificate": str(ca.server_cert),
            "key": str(ca.server_key),
        }
    if users is not None:
        path = write_htpasswd(directory / "htpasswd", users)
        config["auth"] = {"htpasswd": {"realm": "imgsave-test", "path": str(path)}}
    if token_issuer is not None:
        config["auth"] = {
            "token": {
                "realm": token_issuer.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(token_issuer.cert_bundle),
            }
        }
    config_path = directory / "config.yml"
    config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    log_path = directory / "registry.log"
    scheme = "https" if tls else "http"
    with open(log_path, "wb") as log:
        # A clean environment: REGISTRY_* variables would override the config file.
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [REGISTRY_BINARY, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    running = RunningRegistry(
        url=f"{scheme}://127.0.0.1:{port}",
        host=f"127.0.0.1:{port}",
        storage=directory / "storage",
        log=log_path,
        ca_bundle=ca.ca_cert if ca else None,
    )
    try:
        _wait_until_up(running, process)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(registry: RunningRegistry, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited {process.returncode}: {registry.log.read_text()[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", int(registry.host.split(":")[1])), 1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer on {registry.url} within 15 s")
