"""Registries: image references (refs), credentials (auth), the OCI distribution API (oci).

Nothing is imported here, so ``import registry.refs`` stays light; import the modules.
"""
