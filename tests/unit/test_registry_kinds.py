"""The registry kind table: each kind a site may name opens to its client, catalog and
quota check (no server: nothing here sends a request)."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from registry.catalog import HarborCatalog, ImageCatalog
from registry.kinds import KINDS, HarborRegistry, OciRegistry, open_registry
from registry.oras import oras_ref
from registry.refs import ImageRef
from site_configs.schema import RegistrySection


def test_each_kind_is_the_table_entry_of_its_name() -> None:
    assert {name: kind.name for name, kind in KINDS.items()} == {"oci": "oci", "harbor": "harbor"}


def test_an_oci_registry_lists_through_the_distribution_api_and_has_no_quota() -> None:
    section = RegistrySection(url="http://127.0.0.1:9", namespace="sif/{user}")
    opened = open_registry(section)
    assert isinstance(opened, OciRegistry)
    assert opened.client.base_url == "http://127.0.0.1:9"
    assert isinstance(opened.images, ImageCatalog)
    assert opened.images.namespace("alice") == "sif/alice"
    opened.check_quota("alice", 10**18)  # nothing to refuse, nothing asked


def test_a_harbor_registry_uses_harbors_catalog_on_the_same_client() -> None:
    section = RegistrySection(kind="harbor", url="https://harbor.example.org",
                              namespace="u-{user}")
    opened = open_registry(section)
    assert isinstance(opened, HarborRegistry)
    assert isinstance(opened.images, HarborCatalog)
    assert opened.harbor.registry is opened.client
    assert opened.harbor.project_name("alice") == "u-alice"


def test_the_oras_tag_beside_an_oci_image() -> None:
    ref = ImageRef("h", "alice/env", "v1")
    assert oras_ref(ref, alongside_oci=False) == ref
    assert oras_ref(ref, alongside_oci=True) == ImageRef("h", "alice/env", "v1-sif")
    with pytest.raises(InvalidRequest, match="too long"):
        oras_ref(ImageRef("h", "a/b", "x" * 126), alongside_oci=True)
