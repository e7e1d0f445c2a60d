"""The node's privilege boundary, checked: the sudoers rule, the entry, the engine.

The checker never runs an engine through sudo and never asks for more than the rule
gives users: the entry is probed with no arguments (it must refuse with its usage line,
which proves sudo's rule, the wrapper, its Python and the site config all work), and
the engine itself is asked for its version only when the checker already is root.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from api.service.checks.results import CheckResult, fail, ok, skip
from core.errors import ImgsaveError
from core.runner import Runner
from site_configs.schema import SiteConfig

SUDOERS = "sudoers rule"
ENTRY = "privileged entry"
PROBE = "entry probe"
ENGINE = "engine"
DEFAULT_SUDOERS = Path("/etc/sudoers.d/imgsave")
# What must never be reachable through sudo for users: each is root on the node.
ROOT_EQUIVALENT = frozenset({"ALL", "podman", "docker", "nerdctl", "ctr", "crictl", "runc",
                             "buildah", "containerd", "dockerd", "sh", "bash"})
USAGE_REFUSAL = "usage: imgsave-node-save"


@dataclass(frozen=True)
class SudoRule:
    who: str
    commands: tuple[str, ...]


def entry_path(privileged_command: Sequence[str]) -> str | None:
    """The program ``node.privileged_command`` enters through sudo (None without sudo)."""
    if not privileged_command or Path(privileged_command[0]).name != "sudo":
        return None
    return next((a for a in privileged_command[1:] if a.startswith("/")), None)


def parse_sudoers(text: str) -> list[SudoRule]:
    """User specifications of a sudoers file: who, and the commands (``Defaults``,
    aliases and comments skipped; ``\\`` continues a line)."""
    rules = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(("Defaults", "Cmnd_Alias", "User_Alias", "Host_Alias",
                                        "Runas_Alias", "@include", "#include")):
            continue
        who, _, spec = line.partition(" ")
        _, _, commands = spec.partition("=")
        if ")" in commands:
            commands = commands.split(")", 1)[1]
        cmds = []
        for command in commands.split(","):
            words = [w for w in command.split() if not w.endswith(":")]  # NOPASSWD: etc.
            if words:
                cmds.append(" ".join(words))
        rules.append(SudoRule(who, tuple(cmds)))
    return rules


def sudoers_check(text: str, info: os.stat_result, path: str, entry: str) -> CheckResult:
    """The rule file: root's, not writable by others, allowing the entry and nothing that
    is root (an engine, a shell, ALL)."""
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != 0 or mode & 0o022 or not stat.S_ISREG(info.st_mode):
        return fail(SUDOERS, f"{path} is owned by uid {info.st_uid} with mode {mode:04o}",
                    f"install it as a file: chown root:root {path} && chmod 0440 {path}")
    commands = [c for rule in parse_sudoers(text) for c in rule.commands]
    rooted = [c for c in commands if Path(c.split()[0]).name in ROOT_EQUIVALENT]
    if rooted:
        return fail(SUDOERS, f"{path} lets users run {', '.join(rooted)} as root: that is root "
                    "on the node", "remove those commands; the rule is site_configs/deploy/"
                    "sudoers-imgsave")
    if not any(c.split()[0] == entry for c in commands):
        return fail(SUDOERS, f"{path} does not allow {entry}",
                    f"install -m 0440 site_configs/deploy/sudoers-imgsave {path}")
    return ok(SUDOERS, f"{path}: allows {entry} only")


def entry_file_check(entry: str, info: os.stat_result | None) -> CheckResult:
    """The wrapper is a root-owned regular file no one else can write."""
    if info is None:
        return fail(ENTRY, f"{entry} does not exist", "install site_configs/deploy/"
                    f"imgsave-node-save.in as {entry} (docs/install-slurm.md section 0)")
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or mode & 0o022:
        what = "" if stat.S_ISREG(info.st_mode) else "a symlink or not a file, "
        return fail(ENTRY, f"{entry}: {what}owner uid {info.st_uid}, mode {mode:04o}; "
                    "a user who can change it is root",
                    f"install it as a file: chown root:root {entry} && chmod 0755 {entry}")
    return ok(ENTRY, f"{entry}: root's, mode {mode:04o}")


def probe_outcome(stdout: str, stderr: str) -> CheckResult:
    """Judge the entry's answer to a call without arguments: its usage refusal means the
    whole chain works; anything else (sudo asking for a password, a missing Python, a bad
    config) is what stops saves."""
    for line in stdout.splitlines():
        try:
            result = json.loads(line).get("result")
        except (ValueError, AttributeError):
            continue
        if isinstance(result, dict) and USAGE_REFUSAL in str(result.get("error", "")):
            return ok(PROBE, "sudo, the wrapper, its Python and the site config answer")
    said = (stderr.strip() or stdout.strip() or "no output").splitlines()[-1]
    return fail(PROBE, f"the entry did not answer as expected: {said}",
                "check the sudoers rule, the wrapper's @PYTHON@ and @CONFIG@ "
                "(docs/install-slurm.md section 0)")


def privilege_checks(config: SiteConfig, runner: Runner, sudoers: Path,
                     probe_user: str) -> list[CheckResult]:
    """The rule file, the entry, sudo's answer for ``probe_user``, the probe, the engine."""
    command = config.node.privileged_command
    entry = entry_path(command)
    if entry is None:
        return [skip(SUDOERS, f"node.privileged_command {command[0]} is not sudo: check the "
                     "site's own mechanism")]
    results = []
    try:
        info = sudoers.lstat()
        results.append(sudoers_check(sudoers.read_text(), info, str(sudoers), entry))
    except FileNotFoundError:
        results.append(fail(SUDOERS, f"{sudoers} does not exist",
                            f"install -m 0440 site_configs/deploy/sudoers-imgsave {sudoers}"))
    except PermissionError:
        results.append(skip(SUDOERS, f"{sudoers} is readable by root only: run as root"))
    if results[-1].status.value == "ok" and shutil.which("visudo"):
        syntax = runner(["visudo", "-cf", str(sudoers)], timeout=30, check=False)
        if syntax.returncode != 0:
            said = syntax.stderr.strip() or syntax.stdout.strip()
            results.append(fail(SUDOERS, f"visudo: {said}",
                                f"fix the syntax of {sudoers}"))
    try:
        results.append(entry_file_check(entry, os.lstat(entry)))
    except FileNotFoundError:
        results.append(entry_file_check(entry, None))
    if os.geteuid() == 0:
        allowed = runner(["sudo", "-n", "-l", "-U", probe_user, entry], timeout=30, check=False)
        results.append(ok(SUDOERS, f"sudo lets {probe_user} run {entry}") if allowed.returncode == 0
                       else fail(SUDOERS, f"sudo does not let {probe_user} run {entry}",
                                 "check /etc/sudoers includes /etc/sudoers.d (@includedir)"))
    answer = runner(command, timeout=60, check=False)
    results.append(probe_outcome(answer.stdout, answer.stderr))
    results.append(engine_check(config, runner))
    return results


def engine_check(config: SiteConfig, runner: Runner) -> CheckResult:
    """The engine answers (asked directly, so only when already root)."""
    if os.geteuid() != 0:
        return skip(ENGINE, "only the privileged entry runs the engine: run imgsave check as "
                    "root on a node to ask it")
    argv = [*config.engine.command, "version"]
    try:
        runner(argv, timeout=60)
    except ImgsaveError as e:
        return fail(ENGINE, f"{' '.join(argv)} failed: {e.message}",
                    "fix engine.command in the site config, or the engine's daemon")
    return ok(ENGINE, f"{' '.join(argv)} answers")
