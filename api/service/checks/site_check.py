"""``imgsave check``: every check for a site, a node or the portal host, in order.

Each check is a small function returning :class:`CheckResult`; this module picks the
ones that apply (by scope and by ``scheduler.kind``) and runs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from api.db import database_url, instance_dir
from api.service.checks.paths import PathRule, check_path, sqlite_file, uid_of
from api.service.checks.pbs import pbs_checks
from api.service.checks.privilege import DEFAULT_SUDOERS, privilege_checks
from api.service.checks.results import CheckResult, Scope, fail, ok, skip
from api.service.checks.slurm import slurm_checks
from core.errors import ImgsaveError
from core.runner import Runner
from registry.kinds import registry_client
from site_configs.schema import SiteConfig, expand_user_path

REGISTRY = "registry"

# scheduler.kind -> its checks; a kind without an entry is reported as not checked
SCHEDULER_CHECKS: dict[str, Callable[[SiteConfig, Runner, Sequence[str]], list[CheckResult]]] = {
    "slurm": slurm_checks,
    "pbs": lambda config, runner, _users: pbs_checks(config, runner),
}


@dataclass(frozen=True)
class CheckOptions:
    scopes: frozenset[Scope] = frozenset(Scope)
    users: tuple[str, ...] = ()  # users whose association and spool are checked too
    sudoers: Path = DEFAULT_SUDOERS
    probe_user: str = ""  # whose sudo rights root asks about (default: the service account)
    instance: Path = field(default_factory=instance_dir)
    secret_key_name: str = "secret_key"  # the CLI passes api.web.app.SECRET_FILE


def registry_check(config: SiteConfig) -> CheckResult:
    """The registry answers ``GET /v2/`` with the site's credentials."""
    section = config.registry
    try:
        with registry_client(section) as client:
            client.ping()
    except ImgsaveError as e:
        return fail(REGISTRY, f"{section.url}: {e.message}",
                    "check registry.url, the network to it, and registry.credentials_file "
                    "or credential_helper (docs/site-config.md)")
    return ok(REGISTRY, f"{section.url} answers the v2 API with the site's credentials")


def node_paths(config: SiteConfig) -> list[PathRule]:
    rules = [PathRule("node state dir", config.node.state_dir, "root", directory=True,
                      why="created by scripts or the install; the entry records each save there")]
    if config.registry.credentials_file:
        rules.append(PathRule("registry credentials", config.registry.credentials_file,
                              "root", directory=False))
    return rules


def portal_paths(config: SiteConfig, instance: Path, secret_key_name: str) -> list[PathRule]:
    account = config.service_account
    rules = [
        PathRule("service spool", str(config.spool_for(account)), account, directory=True,
                 required=False, why="created at the portal's first save"),
        PathRule("instance dir", str(instance), account, directory=True, required=False,
                 why="imgsave serve creates it"),
        PathRule("secret key", str(instance / secret_key_name), account, directory=False,
                 required=False, why="imgsave serve creates it, mode 0600",
                 create=f"start imgsave serve as {account} once"),
    ]
    db_file = sqlite_file(database_url(config, instance))
    if db_file is not None:
        rules.append(PathRule("database", str(db_file), account, directory=False,
                              required=False, why="imgsave serve creates it, mode 0600",
                              create=f"start imgsave serve as {account} once"))
        rules.append(PathRule("database dir", str(db_file.parent), account, directory=True,
                              forbidden=0o022))
    return rules


def user_spools(config: SiteConfig, users: Sequence[str]) -> list[CheckResult]:
    results = []
    for user in users:
        try:
            path = expand_user_path(config.spool_dir, user)
        except ImgsaveError as e:
            results.append(skip("user spool", e.message))
            continue
        results.append(check_path(PathRule("user spool", path, user, directory=True,
                                           required=False, why="created at the user's first save")))
    return results


def run_checks(config: SiteConfig, runner: Runner, options: CheckOptions) -> list[CheckResult]:
    """Every check that applies to ``options.scopes``, in a stable order."""
    results: list[CheckResult] = []
    if Scope.SITE in options.scopes:
        checks = SCHEDULER_CHECKS.get(config.scheduler.kind)
        results += (checks(config, runner, options.users) if checks else
                    [skip("scheduler", f"no checks for scheduler kind {config.scheduler.kind}")])
        results.append(registry_check(config))
        results += user_spools(config, options.users)
    if Scope.NODE in options.scopes:
        results += [check_path(rule) for rule in node_paths(config)]
        results += privilege_checks(config, runner, options.sudoers,
                                    options.probe_user or config.service_account)
    if Scope.PORTAL in options.scopes:
        if os.geteuid() != 0 and os.getuid() != uid_of(config.service_account):
            results.append(skip("portal files", "run as root or the service account to see them"))
        results += [check_path(rule) for rule in portal_paths(config, options.instance,
                                                             options.secret_key_name)]
    return results

