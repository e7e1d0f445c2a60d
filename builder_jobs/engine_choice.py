"""Which engine a save talks to: the site config's engines by name, per node.

A node may run sessions under more than one engine (podman for batch users, containerd
under Kubernetes, docker); ``[engine]`` and its ``[[engine.others]]`` list them, each
with the nodes it runs on (docs/site-config.md). The node entry asks each engine of its
node in that order for the container the save names (:func:`builder_jobs.node_save.locate`);
the user names a container, never an engine, and no user runs an engine command.
"""

from __future__ import annotations

from builder_jobs.engine_containerd import DEFAULT_NAMESPACE, DEFAULT_ROOT, Containerd
from builder_jobs.engines import ENGINES, ContainerEngine, Nerdctl
from core.errors import ConfigError
from site_configs.schema import EngineKind, EngineRuntime, EngineSection

VALID_KINDS = sorted([*(k.value for k in ENGINES), EngineKind.CONTAINERD.value])


def engine_for(section: EngineSection) -> ContainerEngine:
    """The engine ``[engine]`` names itself (its first engine)."""
    return runtime_engine(section, section.tls_verify)


def runtime_engine(runtime: EngineRuntime, tls_verify: bool) -> ContainerEngine:
    """One configured engine; an unknown kind lists the valid names."""
    try:
        kind = EngineKind(runtime.kind)
    except ValueError as e:
        raise ConfigError(f"unknown engine kind {runtime.kind!r}; valid: "
                          f"{', '.join(VALID_KINDS)}") from e
    if kind is EngineKind.CONTAINERD:
        return Containerd(command=tuple(runtime.command),
                          namespace=runtime.namespace or DEFAULT_NAMESPACE,
                          tls_verify=tls_verify, root=runtime.root or DEFAULT_ROOT)
    if runtime.root:
        raise ConfigError(f"engine root is set to {runtime.root!r}, but only containerd "
                          f"reads its root directory (the engine is {kind})")
    cls = ENGINES[kind]
    if runtime.namespace and cls is not Nerdctl:
        raise ConfigError(
            f"engine namespace is set to {runtime.namespace!r}, but only nerdctl and "
            f"containerd have containerd namespaces (the engine is {kind})"
        )
    return cls(command=tuple(runtime.command), namespace=runtime.namespace,
               tls_verify=tls_verify)


def engines_on(section: EngineSection, node: str) -> list[ContainerEngine]:
    """The engines that may hold a session on ``node``, in the order the node asks them
    (empty when the site config gives this node none)."""
    return [runtime_engine(r, section.tls_verify) for r in section.runtimes_on(node)]
