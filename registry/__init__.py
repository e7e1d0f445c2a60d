"""Registries: image references (refs), credentials (auth), the OCI distribution API (oci),
the kinds a site may name and what each gives the service (kinds: ``open_registry``), a
user's images (catalog), SIF as an ORAS artifact (oras), Harbor's API (harbor).

Nothing is imported here, so ``import registry.refs`` stays light; import the modules.
"""
