"""GET and DELETE /api/v1/images (registry: in memory, see tests/support/api_support.py), and
``imgsave --api URL delete`` through requests into the same app."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from requests.adapters import BaseAdapter

from api.cli.remote import ApiClient, RemoteImages, image_path
from core.errors import InvalidRequest
from tests.support.api_support import MemorySite, bearer, make_token


def _images(memory_site: MemorySite) -> None:
    memory_site.registry.add("alice/torch-env", "v1", size=4321, category="gpu")
    memory_site.registry.add("alice/tools/r-env", "2024")
    memory_site.registry.add("alice2/other", "v1")
    memory_site.registry.add("bob/secret", "v1")


def test_list_shows_only_the_callers_images(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    _images(memory_site)
    r = client.get("/api/v1/images", headers=alice)
    assert r.status_code == 200
    assert r.json["user"] == "alice"
    by_name = {f"{i['repository']}:{i['tag']}": i for i in r.json["images"]}
    assert set(by_name) == {"alice/torch-env:v1", "alice/tools/r-env:2024"}
    image = by_name["alice/torch-env:v1"]
    assert image["size_bytes"] == 4321 and image["category"] == "gpu"
    assert image["format"] == "oci" and image["created"] == "2026-01-02T03:04:05Z"
    assert image["pull_command"] == "podman pull 127.0.0.1:5000/alice/torch-env:v1"


def test_delete_own_image_with_slashes_in_its_name(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    _images(memory_site)
    r = client.delete("/api/v1/images/alice/tools/r-env:2024", headers=alice)
    assert r.status_code == 200, r.json
    assert r.json["deleted"] is True and r.json["digest"].startswith("sha256:")
    assert memory_site.registry.list_tags("alice/tools/r-env") == []
    r = client.delete("/api/v1/images/torch-env:v1", headers=alice)  # namespace implied
    assert r.status_code == 200


def test_another_users_image_is_not_found(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    _images(memory_site)
    for name in ("bob/secret:v1", "alice2/other:v1", "alice/missing:v1"):
        r = client.delete(f"/api/v1/images/{name}", headers=alice)
        assert r.status_code == 404, (name, r.json)
    assert memory_site.registry.list_tags("bob/secret") == ["v1"]


def test_a_malformed_image_name_is_400(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    for name in ("UPPER:v1", "no-tag", "x:bad tag", "x@sha256:00"):
        r = client.delete(f"/api/v1/images/{name}", headers=alice)
        assert r.status_code == 400, (name, r.json)


def test_only_admins_see_another_users_images(
    app: Flask, client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    _images(memory_site)
    assert client.get("/api/v1/images?user=bob", headers=alice).status_code == 403
    admin = bearer(make_token(app, "carol"))
    r = client.get("/api/v1/images?user=bob", headers=admin)
    assert [i["repository"] for i in r.json["images"]] == ["bob/secret"]
    assert client.delete("/api/v1/images/bob/secret:v1?user=bob", headers=admin).status_code == 200
    assert client.get("/api/v1/images?user=Not%20A%20User", headers=admin).status_code == 400


# Each resolves to another image of alice's once '..' or '.' is collapsed in the URL.
DOT_NAMES = ["alice/zzz/../torch-env:v1", "alice/tools/../torch-env:v1", "./torch-env:v1",
             "alice/./torch-env:v1", "alice/torch-env/.:v1", "alice/tools/r-env/..:2024",
             "../alice/torch-env:v1", "alice/../alice/torch-env:v1"]


@pytest.mark.parametrize("url_name", [
    *DOT_NAMES, "alice/zzz/%2E%2E/torch-env:v1", "alice/zzz%2F..%2Ftorch-env:v1",
    "127.0.0.1:5000/alice/torch-env:v1", "alice//torch-env:v1", "alice/torch-env:v1@x",
])
def test_dot_segments_and_other_invalid_names_are_400_and_nothing_is_deleted(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite, url_name: str
) -> None:
    _images(memory_site)
    before = copy.deepcopy(memory_site.registry.images)
    r = client.delete(f"/api/v1/images/{url_name}", headers=alice)
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] == "invalid_request"
    assert memory_site.registry.images == before


class FlaskAdapter(BaseAdapter):
    """requests → the Flask test client: what the app receives is the URL as requests
    prepared it (with any '..' already collapsed), without a server."""

    def __init__(self, client: FlaskClient) -> None:
        super().__init__()
        self.client = client
        self.paths: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        assert request.method is not None
        self.paths.append(request.path_url)
        answer = self.client.open(request.path_url, method=request.method,
                                  headers=dict(request.headers), data=request.body)
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers.update(answer.headers)
        response._content = answer.data
        response.request, response.url = request, request.url or ""
        return response

    def close(self) -> None:
        return None


@pytest.fixture
def remote(app: Flask, memory_site: MemorySite) -> tuple[RemoteImages, FlaskAdapter]:
    _images(memory_site)
    client = ApiClient("http://imgsave.test", make_token(app, "alice"))
    adapter = FlaskAdapter(app.test_client())
    client.session.mount("http://", adapter)
    return RemoteImages(client), adapter


@pytest.mark.parametrize("name", [*DOT_NAMES, "alice/zzz/%2E%2E/torch-env:v1",
                                  "alice/Torch-env:v1", "alice/torch-env", "x:v1?user=bob",
                                  "x:v1#frag", "alice/torch-env:v1/../../bob/secret:v1"])
def test_the_cli_refuses_an_invalid_name_and_sends_nothing(
    remote: tuple[RemoteImages, FlaskAdapter], memory_site: MemorySite, name: str
) -> None:
    images, adapter = remote
    before = copy.deepcopy(memory_site.registry.images)
    with pytest.raises(InvalidRequest):
        images.delete("alice", name)
    assert adapter.paths == [] and memory_site.registry.images == before


def test_the_cli_deletes_a_valid_name_with_each_part_quoted(
    remote: tuple[RemoteImages, FlaskAdapter], memory_site: MemorySite
) -> None:
    images, adapter = remote
    digest = images.delete("alice", "alice/tools/r-env:2024")
    assert digest.startswith("sha256:")
    assert memory_site.registry.list_tags("alice/tools/r-env") == []
    assert adapter.paths == ["/api/v1/images/alice/tools/r-env:2024"]
    assert memory_site.registry.list_tags("alice/torch-env") == ["v1"]
    assert image_path("john.smith/a__b/c-d:V1.0_rc-2") == "john.smith/a__b/c-d:V1.0_rc-2"
