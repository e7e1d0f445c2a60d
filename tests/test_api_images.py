"""GET and DELETE /api/v1/images (registry: in memory, see tests/api_support.py)."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from tests.api_support import MemorySite, bearer, make_token

pytest_plugins = ["tests.api_fixtures"]


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
