"""Auth and TLS against real docker-registry instances: htpasswd, TLS, token auth."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import ConfigError, PermissionDenied, RegistryError
from registry.auth import Credentials, load_credentials
from registry.manifests import sha256_digest
from registry.oci import RegistryClient
from site_configs.schema import RegistrySection
from tests.support.registry_server import (
    REGISTRY_BINARY,
    RunningRegistry,
    TokenIssuer,
    running_registry,
)
from tests.unit.test_registry_oci import make_image, push_image

pytestmark = pytest.mark.skipif(
    not os.access(REGISTRY_BINARY, os.X_OK) or shutil.which("docker-registry") is None,
    reason="Debian's docker-registry is not installed (scripts/cluster.sh installs it)",
)

USERS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}


def _section(**values: object) -> RegistrySection:
    return RegistrySection.model_validate(values)


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("basic"), users=USERS) as running:
        yield running


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("tls"), tls=True, users=USERS) as running:
        yield running


@pytest.fixture(scope="module")
def token_setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningRegistry, TokenIssuer]]:
    directory = tmp_path_factory.mktemp("token")
    issuer = TokenIssuer(directory / "issuer", USERS)
    with issuer.serve(), running_registry(directory / "registry", token_issuer=issuer) as reg:
        yield reg, issuer


# --- basic auth ---------------------------------------------------------------------


def test_basic_auth_push_and_read(basic_registry: RunningRegistry) -> None:
    creds = Credentials("alice", USERS["alice"])
    with RegistryClient(basic_registry.url, creds) as client:
        client.ping()
        digest = push_image(client, "alice/app", "v1", make_image("basic"))
        assert client.manifest_digest("alice/app", "v1") == digest
        assert client.list_tags("alice/app") == ["v1"]


def test_a_twin_reads_with_the_same_credentials_over_its_own_session(
    basic_registry: RunningRegistry,
) -> None:
    # The streaming commit looks up the base image from another thread with a twin.
    creds = Credentials("alice", USERS["alice"])
    with RegistryClient(basic_registry.url, creds, timeout=7.0) as client:
        digest = push_image(client, "alice/twin", "v1", make_image("twin"))
        with client.twin() as twin:
            assert twin.session is not client.session
            assert (twin.base_url, twin.credentials, twin.verify, twin.timeout) == (
                client.base_url, creds, client.verify, 7.0)
            assert twin.manifest_digest("alice/twin", "v1") == digest


def test_basic_auth_wrong_password(basic_registry: RunningRegistry) -> None:
    with RegistryClient(basic_registry.url, Credentials("alice", "wrong")) as client:
        with pytest.raises(PermissionDenied) as err:
            client.list_tags("alice/app")
    assert f"registry at {basic_registry.url} denied" in err.value.message
    assert "UNAUTHORIZED" in err.value.message
    assert "wrong" not in err.value.message


def test_basic_auth_without_credentials(basic_registry: RunningRegistry) -> None:
    with RegistryClient(basic_registry.url) as client:
        with pytest.raises(PermissionDenied, match="needs a user name and password"):
            client.ping()


def test_credentials_file_end_to_end(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    auth = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    path.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    path.chmod(0o600)
    section = _section(url=basic_registry.url, auth="basic", credentials_file=str(path))
    with RegistryClient.from_section(section, load_credentials(section)) as client:
        client.ping()


def test_credentials_file_0644_refused(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    auth = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    path.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    path.chmod(0o644)
    section = _section(url=basic_registry.url, auth="basic", credentials_file=str(path))
    with pytest.raises(PermissionDenied, match=f"mode 0644.*chmod 600 {path}"):
        load_credentials(section)


# --- TLS ----------------------------------------------------------------------------


def test_tls_verified_with_ca_bundle(
    tls_registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_registry.url.startswith("https://") and tls_registry.ca_bundle
    # requests would let this override session.verify; the site's bundle must win
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    section = _section(url=tls_registry.url, auth="basic", ca_bundle=str(tls_registry.ca_bundle))
    creds = Credentials("alice", USERS["alice"])
    with RegistryClient.from_section(section, creds) as client:
        assert client.session.verify == str(tls_registry.ca_bundle)
        client.ping()
        push_image(client, "alice/tls", "v1", make_image("tls"))


def test_tls_refused_without_ca_bundle(tls_registry: RunningRegistry) -> None:
    with RegistryClient(tls_registry.url, Credentials("alice", USERS["alice"])) as client:
        with pytest.raises(RegistryError) as err:
            client.ping()
    assert err.value.retryable is False
    assert "TLS verification of the registry" in err.value.message
    assert "certificate verify failed" in err.value.message
    assert "registry.ca_bundle" in err.value.message


def test_tls_system_bundle_from_environment(
    tls_registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tls_verify = true without ca_bundle: the usual requests environment applies
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_registry.ca_bundle))
    with RegistryClient(tls_registry.url, Credentials("alice", USERS["alice"])) as client:
        client.ping()


def test_tls_verify_off_is_explicit(tls_registry: RunningRegistry) -> None:
    with RegistryClient(tls_registry.url, Credentials("alice", USERS["alice"]), verify=False) as c:
        with pytest.warns(Warning):  # urllib3 says so on every unverified request
            c.ping()


def test_missing_ca_bundle_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle .* does not exist"):
        RegistryClient("https://127.0.0.1:1", verify=str(tmp_path / "none.pem"))


# --- token auth ---------------------------------------------------------------------


def test_token_auth_push_list_delete(token_setup: tuple[RunningRegistry, TokenIssuer]) -> None:
    registry, issuer = token_setup
    with RegistryClient(registry.url, Credentials("alice", USERS["alice"])) as client:
        client.ping()
        image = make_image("token")
        digest = push_image(client, "alice/tok", "v1", image)
        assert client.list_tags("alice/tok") == ["v1"]
        assert "alice/tok" in client.list_repositories("alice")
        info = client.manifest("alice/tok", "v1")
        assert info is not None and info.digest == digest
        assert client.mount_blob("alice/tok2", sha256_digest(image.layers[0]), "alice/tok")
        assert client.delete_tag_or_digest("alice/tok", "v1") == digest
    # one token per scope, reused: far fewer token requests than registry requests
    alice = [r for r in issuer.requests_seen if r.get("user") == "alice"]
    assert 0 < len(alice) <= 8


def test_token_auth_cross_namespace_read_only(
    token_setup: tuple[RunningRegistry, TokenIssuer],
) -> None:
    registry, _ = token_setup
    with RegistryClient(registry.url, Credentials("alice", USERS["alice"])) as alice:
        push_image(alice, "alice/shared", "v1", make_image("shared"))
    with RegistryClient(registry.url, Credentials("bob", USERS["bob"])) as bob:
        assert bob.list_tags("alice/shared") == ["v1"]  # pull is granted
        with pytest.raises(PermissionDenied) as err:
            bob.push_blob("alice/shared", b"intruder", sha256_digest(b"intruder"))
        assert "did not grant" in err.value.message
        assert "user 'bob' (insufficient_scope)" in err.value.message
        with pytest.raises(PermissionDenied):
            bob.delete_tag_or_digest("alice/shared", "v1")


def test_token_auth_wrong_password(token_setup: tuple[RunningRegistry, TokenIssuer]) -> None:
    registry, issuer = token_setup
    with RegistryClient(registry.url, Credentials("alice", "wrong")) as client:
        with pytest.raises(PermissionDenied) as err:
            client.list_tags("alice/tok")
    assert f"token server {issuer.realm} refused user 'alice'" in err.value.message
    assert "bad password" in err.value.message
    assert "wrong" not in err.value.message


def test_token_auth_anonymous_denied(token_setup: tuple[RunningRegistry, TokenIssuer]) -> None:
    registry, _ = token_setup
    with RegistryClient(registry.url) as client:
        with pytest.raises(PermissionDenied, match="denied"):
            client.list_tags("alice/tok")


def test_token_server_down_is_retryable(tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path / "issuer", USERS)
    with issuer.serve():
        pass  # stopped again: the registry's realm now points at a closed port
    with running_registry(tmp_path / "registry", token_issuer=issuer) as registry:
        with RegistryClient(registry.url, Credentials("alice", USERS["alice"])) as client:
            with pytest.raises(RegistryError, match="token server .* is unreachable") as err:
                client.ping()
    assert err.value.retryable is True
