"""Slurm's side of ``imgsave check``: accounting flags, the save partition, associations.

Pure parsers of ``scontrol show config``, ``scontrol show partition`` and ``sacctmgr -nP
show assoc`` (real captures in tests/captures/slurm/50-52), pure checks on what they
parse, and :func:`slurm_checks`, which runs the three commands through the runner.
These parsers belong beside the backend's (scheduler_glue/slurm) once the backends get a
site-check hook; they live here so this command adds no module to that package today.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from api.service.checks.results import CheckResult, fail, ok, skip, warn
from core.errors import ImgsaveError
from core.runner import Runner
from scheduler_glue.slurm.parse import iter_hostlist
from site_configs.schema import SiteConfig

ACCOUNTING = "slurm accounting"
PARTITION = "slurm partition"
PREEMPTION = "slurm preemption"
RESERVED_CPU = "slurm reserved cpu"
ASSOCIATION = "slurm association"
SLURM_CONF = "in slurm.conf, then restart slurmctld (docs/install-slurm.md section 2)"


def parse_scontrol_config(stdout: str) -> dict[str, str]:
    """``scontrol show config``: ``Key    = Value`` lines; values may hold ``=``."""
    settings: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key and " " not in key and key not in settings:
            settings[key] = value.strip()
    return settings


def parse_partitions(stdout: str) -> dict[str, dict[str, str]]:
    """``scontrol show partition``: blank-line separated blocks of ``Key=Value`` words."""
    partitions: dict[str, dict[str, str]] = {}
    for block in stdout.split("\n\n"):
        fields: dict[str, str] = {}
        for word in block.split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        if "PartitionName" in fields:
            partitions[fields["PartitionName"]] = fields
    return partitions


@dataclass(frozen=True)
class Association:
    user: str
    account: str
    partition: str
    qos: str


def parse_associations(stdout: str) -> list[Association]:
    """``sacctmgr -nP show assoc where user=U format=User,Account,Partition,QOS``."""
    rows = []
    for line in stdout.splitlines():
        cols = line.split("|")
        if len(cols) == 4 and cols[0]:
            rows.append(Association(*cols))
    return rows


def _flags(value: str) -> set[str]:
    return {f.strip() for f in value.split(",") if f.strip() and f.strip() != "(null)"}


def accounting_checks(settings: Mapping[str, str]) -> list[CheckResult]:
    """What imgsave needs from Slurm's accounting: slurmdbd, the job comment kept."""
    results = []
    storage = settings.get("AccountingStorageType", "")
    if storage != "accounting_storage/slurmdbd":
        results.append(fail(ACCOUNTING, f"AccountingStorageType is {storage or 'unset'}: no "
                            "accounting, so a save's state is lost once it leaves squeue",
                            f"set AccountingStorageType=accounting_storage/slurmdbd {SLURM_CONF}"))
    flags = _flags(settings.get("AccountingStoreFlags", ""))
    if "job_comment" not in flags:
        results.append(fail(ACCOUNTING, "AccountingStoreFlags lacks job_comment: accounting "
                            "drops the save's metadata (whose save, which image)",
                            f"add job_comment to AccountingStoreFlags {SLURM_CONF}"))
    leaky = sorted(flags & {"job_script", "job_env"})
    if leaky:
        results.append(warn(ACCOUNTING, f"AccountingStoreFlags has {','.join(leaky)}: every "
                            "job's script/environment is copied into the accounting database",
                            f"remove {','.join(leaky)} from AccountingStoreFlags {SLURM_CONF}"))
    gather = settings.get("JobAcctGatherType", "")
    if gather in ("", "jobacct_gather/none"):
        results.append(warn(ACCOUNTING, f"JobAcctGatherType is {gather or 'unset'}: no "
                            "per-step usage is gathered for the usage reports",
                            f"set JobAcctGatherType=jobacct_gather/linux (or cgroup) {SLURM_CONF}"))
    if "associations" not in _flags(settings.get("AccountingStorageEnforce", "")):
        results.append(warn(ACCOUNTING, "AccountingStorageEnforce lacks associations: a user "
                            "without an association can submit, and accounting records the "
                            "save with an empty User (imgsave then cannot tell whose it is)",
                            f"set AccountingStorageEnforce=associations {SLURM_CONF}"))
    if not results:
        results.append(ok(ACCOUNTING, f"slurmdbd, AccountingStoreFlags={','.join(sorted(flags))}, "
                          f"{gather}, AccountingStorageEnforce="
                          f"{settings.get('AccountingStorageEnforce', '')}"))
    return results


def partition_checks(name: str, partitions: Mapping[str, Mapping[str, str]],
                     settings: Mapping[str, str], account: str) -> list[CheckResult]:
    """The save partition exists, is up, admits the account, and does not preempt."""
    part = partitions.get(name)
    if part is None:
        return [fail(PARTITION, f"partition {name} does not exist",
                     f"add PartitionName={name} on the users' nodes to slurm.conf "
                     "(docs/install-slurm.md section 1), or fix scheduler.partition")]
    results = []
    if part.get("State") != "UP":
        results.append(fail(PARTITION, f"partition {name} is {part.get('State')}, not UP",
                            f"scontrol update PartitionName={name} State=UP"))
    allowed = part.get("AllowAccounts", "ALL")
    if allowed != "ALL" and account and account not in allowed.split(","):
        results.append(fail(PARTITION, f"partition {name} allows accounts {allowed}, not "
                            f"scheduler.account {account}",
                            f"scontrol update PartitionName={name} AllowAccounts={allowed},"
                            f"{account}, or fix scheduler.account"))
    if not results:
        results.append(ok(PARTITION, f"{name}: UP on {part.get('Nodes', '?')}, "
                          f"AllowAccounts={allowed}"))
    return results + _sharing_checks(name, partitions, settings)


def _sharing_checks(name: str, partitions: Mapping[str, Mapping[str, str]],
                    settings: Mapping[str, str]) -> list[CheckResult]:
    """Partitions on the save partition's nodes: a reserved CPU, and no preemption."""
    save = partitions[name]
    nodes = set(iter_hostlist(save.get("Nodes", "")))
    tier = int(save.get("PriorityTier", "1") or 1)
    prio_preempt = settings.get("PreemptType") == "preempt/partition_prio"
    results = []
    for other, part in sorted(partitions.items()):
        if other == name or not nodes & set(iter_hostlist(part.get("Nodes", ""))):
            continue
        mode = part.get("PreemptMode", settings.get("PreemptMode", "OFF"))
        if prio_preempt and tier > int(part.get("PriorityTier", "1") or 1) and mode != "OFF":
            results.append(fail(PREEMPTION, f"PreemptType=preempt/partition_prio and {name}'s "
                                f"PriorityTier {tier} is above {other}'s with PreemptMode={mode}: "
                                f"a save may preempt the very {other} job whose container it "
                                "saves", f"scontrol update PartitionName={other} PreemptMode=OFF, "
                                f"or give {name} the PriorityTier of {other}"))
        if part.get("MaxCPUsPerNode", "UNLIMITED") == "UNLIMITED":
            results.append(warn(RESERVED_CPU, f"{other} shares nodes with {name} and has no "
                                "MaxCPUsPerNode: a job filling a node leaves no CPU for a save "
                                "of its container", f"set MaxCPUsPerNode=<CPUs per node - 1> on "
                                f"{other} (docs/install-slurm.md section 1)"))
    if not results:
        results.append(ok(PREEMPTION, f"no partition on {name}'s nodes can be preempted by a "
                          "save, and each leaves a CPU free"))
    return results


def association_check(user: str, associations: Sequence[Association], account: str,
                      role: str) -> CheckResult:
    """``user`` has a Slurm association (in ``account`` when the site names one)."""
    if not associations:
        return fail(ASSOCIATION, f"{role} {user} has no Slurm association: accounting records "
                    "their saves with an empty User, and imgsave refuses them as not theirs",
                    f"sacctmgr add user {user} Account={account or '<their account>'}")
    if account and account not in {a.account for a in associations}:
        return fail(ASSOCIATION, f"{role} {user} has no association in account {account}",
                    f"sacctmgr add user {user} Account={account}")
    accounts = ",".join(sorted({a.account for a in associations}))
    return ok(ASSOCIATION, f"{role} {user}: account(s) {accounts}")


def slurm_checks(config: SiteConfig, runner: Runner, users: Sequence[str]) -> list[CheckResult]:
    """Run the Slurm checks against the live controller and slurmdbd."""
    timeout = config.scheduler.command_timeout_seconds
    section = config.scheduler
    try:
        settings = parse_scontrol_config(
            runner(["scontrol", "show", "config"], timeout=timeout).stdout)
    except ImgsaveError as e:
        return [fail(ACCOUNTING, f"scontrol show config failed: {e.message}",
                     "run this where the Slurm client commands reach slurmctld (munge, "
                     "slurm.conf)")]
    results = accounting_checks(settings)
    answer = runner(["scontrol", "show", "partition"], timeout=timeout, check=False)
    results += partition_checks(section.partition, parse_partitions(answer.stdout), settings,
                                section.account)
    for role, user in [("service account", config.service_account)] + [("user", u) for u in users]:
        argv = ["sacctmgr", "-nP", "show", "assoc", "where", f"user={user}",
                "format=User,Account,Partition,QOS"]
        try:
            rows = parse_associations(runner(argv, timeout=timeout).stdout)
        except ImgsaveError as e:
            results.append(skip(ASSOCIATION, f"sacctmgr failed: {e.message}"))
            continue
        results.append(association_check(user, rows, section.account, role))
    return results
