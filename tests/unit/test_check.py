"""``imgsave check``'s parsers and checks on real captures (tests/captures/slurm/35, 50-52,
pbs/20, 20b, check/), and its pure path and sudoers judgements. The checks run against
the live cluster in tests/cluster/test_check_cluster.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli.commands import main
from api.service.checks.paths import PathRule, path_check
from api.service.checks.pbs import history_checks, parse_queue, parse_server, queue_check
from api.service.checks.privilege import (
    entry_file_check,
    entry_path,
    parse_sudoers,
    probe_outcome,
    sudoers_check,
)
from api.service.checks.results import CheckResult, CheckStatus
from api.service.checks.slurm import (
    accounting_checks,
    association_check,
    parse_associations,
    parse_partitions,
    parse_scontrol_config,
    partition_checks,
)
from site_configs.schema import SchedulerSection
from tests.support.replay import CAPTURES, load_capture, pbs_capture

ENTRY = "/usr/local/sbin/imgsave-node-save"
DEPLOY = Path(__file__).resolve().parents[2] / "site_configs" / "deploy"


def slurm(name: str) -> str:
    return load_capture(CAPTURES / "slurm" / f"{name}.txt").stdout


def statuses(results: list[CheckResult]) -> dict[str, CheckStatus]:
    return {r.detail: r.status for r in results}


def failed(results: list[CheckResult]) -> list[str]:
    return [r.detail for r in results if r.status is CheckStatus.FAIL]


# --- Slurm ------------------------------------------------------------------------------

def test_scontrol_config_of_the_local_cluster_parses() -> None:
    settings = parse_scontrol_config(slurm("50_scontrol_show_config"))
    assert settings["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert settings["AccountingStoreFlags"] == "job_comment"
    # a value with "=" in it stays whole
    assert settings["SchedulerParameters"].startswith("sched_min_interval=0,")
    assert "Configuration data as of" not in " ".join(settings)


def test_accounting_of_the_local_cluster_passes_with_one_warning() -> None:
    results = accounting_checks(parse_scontrol_config(slurm("50_scontrol_show_config")))
    assert [r.status for r in results] == [CheckStatus.WARN]
    assert "AccountingStorageEnforce" in results[0].detail  # "none" on the local cluster


@pytest.mark.parametrize(("key", "value", "status", "words"), [
    ("AccountingStoreFlags", "(null)", CheckStatus.FAIL, "lacks job_comment"),
    ("AccountingStoreFlags", "job_comment,job_script", CheckStatus.WARN, "job_script"),
    ("AccountingStorageType", "accounting_storage/none", CheckStatus.FAIL, "no accounting"),
    ("JobAcctGatherType", "jobacct_gather/none", CheckStatus.WARN, "JobAcctGatherType"),
])
def test_each_accounting_misconfiguration_is_found(key: str, value: str, status: CheckStatus,
                                                   words: str) -> None:
    settings = parse_scontrol_config(slurm("50_scontrol_show_config"))
    settings["AccountingStorageEnforce"] = "associations"
    settings[key] = value
    results = accounting_checks(settings)
    assert [r.status for r in results] == [status]
    assert words in results[0].detail and results[0].fix


def test_partitions_parse_and_the_save_partition_is_fine() -> None:
    partitions = parse_partitions(slurm("35_scontrol_show_partition"))
    assert set(partitions) == {"batch", "imgsave"}
    assert partitions["imgsave"]["PriorityTier"] == "10"
    assert parse_partitions(slurm("52_scontrol_show_partition_imgsave")).keys() == {"imgsave"}
    settings = parse_scontrol_config(slurm("50_scontrol_show_config"))
    results = partition_checks("imgsave", partitions, settings, "")
    assert all(r.status is CheckStatus.OK for r in results), results


def test_a_missing_or_down_partition_fails() -> None:
    settings = parse_scontrol_config(slurm("50_scontrol_show_config"))
    assert parse_partitions(slurm("52b_scontrol_show_partition_unknown")) == {}
    missing = partition_checks("nosuch", {}, settings, "")
    assert failed(missing) == ["partition nosuch does not exist"]
    partitions = parse_partitions(slurm("35_scontrol_show_partition"))
    partitions["imgsave"]["State"] = "DOWN"
    assert failed(partition_checks("imgsave", partitions, settings, "")) == [
        "partition imgsave is DOWN, not UP"]


def test_an_account_the_partition_refuses_fails() -> None:
    partitions = parse_partitions(slurm("35_scontrol_show_partition"))
    partitions["imgsave"]["AllowAccounts"] = "hpc"
    settings = parse_scontrol_config(slurm("50_scontrol_show_config"))
    assert "not scheduler.account imgsave" in failed(
        partition_checks("imgsave", partitions, settings, "imgsave"))[0]


def test_partition_prio_preemption_of_the_session_fails() -> None:
    partitions = parse_partitions(slurm("35_scontrol_show_partition"))
    settings = parse_scontrol_config(slurm("50_scontrol_show_config"))
    settings["PreemptType"] = "preempt/partition_prio"
    partitions["batch"]["PreemptMode"] = "REQUEUE"
    problems = failed(partition_checks("imgsave", partitions, settings, ""))
    assert len(problems) == 1 and "preempt the very batch job" in problems[0]
    partitions["batch"]["PreemptMode"] = "OFF"  # the fix the check gives
    assert failed(partition_checks("imgsave", partitions, settings, "")) == []


def test_a_user_partition_without_a_reserved_cpu_warns() -> None:
    partitions = parse_partitions(slurm("35_scontrol_show_partition"))
    partitions["batch"]["MaxCPUsPerNode"] = "UNLIMITED"
    settings = parse_scontrol_config(slurm("50_scontrol_show_config"))
    results = partition_checks("imgsave", partitions, settings, "")
    assert [r.name for r in results if r.status is CheckStatus.WARN] == ["slurm reserved cpu"]


def test_associations() -> None:
    rows = parse_associations(slurm("51_sacctmgr_assoc_service_account"))
    assert [(a.user, a.account, a.qos) for a in rows] == [("imgsave", "imgsave", "normal")]
    assert association_check("imgsave", rows, "", "service account").status is CheckStatus.OK
    assert association_check("imgsave", rows, "hpc", "service account").status is CheckStatus.FAIL
    none = parse_associations(slurm("51b_sacctmgr_assoc_unknown_user"))
    result = association_check("carol", none, "", "user")
    assert result.status is CheckStatus.FAIL and "sacctmgr add user carol" in result.fix


# --- PBS --------------------------------------------------------------------------------

def pbs_section(**values: object) -> SchedulerSection:
    return SchedulerSection.model_validate({"kind": "pbs", "partition": "imgsave", **values})


def test_pbs_history_on_as_the_config_says() -> None:
    server = parse_server(pbs_capture("20_qstat_Bf_F_json").stdout)
    assert server["job_history_enable"] == "True"
    assert statuses(history_checks(server, pbs_section(), None)) == {
        "job_history_enable=True, as the site config says": CheckStatus.OK}
    off_in_config = history_checks(server, pbs_section(pbs_job_history=False), None)
    assert [r.status for r in off_in_config] == [CheckStatus.WARN]


def test_pbs_history_off_on_the_server_fails_when_the_config_expects_it() -> None:
    server = parse_server(pbs_capture("20_qstat_Bf_F_json").stdout)
    del server["job_history_enable"]  # PBS's default: unset, i.e. off
    assert "keeps no job history" in failed(history_checks(server, pbs_section(), None))[0]
    no_logs = history_checks(server, pbs_section(pbs_job_history=False), None)
    assert [r.status for r in no_logs] == [CheckStatus.WARN]
    unreadable = history_checks(
        server, pbs_section(pbs_job_history=False, pbs_accounting_log_dir="/nonexistent"), False)
    assert "not readable" in failed(unreadable)[0]


def test_pbs_queue() -> None:
    stdout = pbs_capture("20b_qstat_Qf_F_json").stdout
    assert queue_check("workq", parse_queue(stdout, "workq")).status is CheckStatus.OK
    assert parse_queue(stdout, "imgsave") is None
    assert "does not exist" in queue_check("imgsave", None).detail
    stopped = dict(parse_queue(stdout, "workq") or {}, started="False")
    assert queue_check("workq", stopped).detail == "queue workq: started is not True"


# --- the privilege boundary -------------------------------------------------------------

def a_stat(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 10, 0, 0, 0))


FILE_0440 = stat.S_IFREG | 0o440


def test_the_shipped_sudoers_rule_passes() -> None:
    text = (DEPLOY / "sudoers-imgsave").read_text()
    assert parse_sudoers(text)[0].commands == (ENTRY,)
    assert sudoers_check(text, a_stat(FILE_0440), "x", ENTRY).status is CheckStatus.OK
    assert entry_path(["sudo", "-n", ENTRY]) == ENTRY
    assert entry_path(["/usr/local/sbin/other"]) is None


@pytest.mark.parametrize("line", [
    "ALL ALL=(root) NOPASSWD: /usr/local/sbin/imgsave-node-save, /usr/bin/podman",
    "%hpc ALL=(ALL) NOPASSWD: /usr/bin/nerdctl commit *",
    "alice ALL=(ALL) ALL",
    "ALL ALL=(root) NOPASSWD: /usr/local/sbin/imgsave-node-save, \\\n    /usr/bin/docker",
])
def test_a_rule_that_gives_root_fails(line: str) -> None:
    text = (DEPLOY / "sudoers-imgsave").read_text() + line + "\n"
    result = sudoers_check(text, a_stat(FILE_0440), "x", ENTRY)
    assert result.status is CheckStatus.FAIL and "as root" in result.detail


def test_a_rule_file_others_can_write_or_without_the_entry_fails() -> None:
    text = (DEPLOY / "sudoers-imgsave").read_text()
    assert sudoers_check(text, a_stat(stat.S_IFREG | 0o666), "x", ENTRY).status is CheckStatus.FAIL
    assert sudoers_check(text, a_stat(FILE_0440, uid=1001), "x", ENTRY).status is CheckStatus.FAIL
    other = text.replace(ENTRY, "/usr/local/sbin/something-else")
    assert "does not allow" in sudoers_check(other, a_stat(FILE_0440), "x", ENTRY).detail


def test_the_entry_file() -> None:
    assert entry_file_check(ENTRY, a_stat(stat.S_IFREG | 0o755)).status is CheckStatus.OK
    assert entry_file_check(ENTRY, None).status is CheckStatus.FAIL
    assert entry_file_check(ENTRY, a_stat(stat.S_IFREG | 0o775)).status is CheckStatus.FAIL
    assert entry_file_check(ENTRY, a_stat(stat.S_IFLNK | 0o777)).status is CheckStatus.FAIL


def test_the_entry_probe_answer() -> None:
    answered = load_capture(CAPTURES / "check" / "entry_probe_as_alice.txt")
    assert probe_outcome(answered.stdout, answered.stderr).status is CheckStatus.OK
    refused = load_capture(CAPTURES / "check" / "sudo_podman_as_alice.txt")
    result = probe_outcome(refused.stdout, refused.stderr)
    assert result.status is CheckStatus.FAIL and "a password is required" in result.detail


# --- owners and modes -------------------------------------------------------------------

SPOOL = PathRule("spool", "/spool", "imgsave", directory=True)
SECRET = PathRule("secret key", "/i/secret_key", "imgsave", directory=False)
DIR = stat.S_IFDIR


@pytest.mark.parametrize(("rule", "info", "uid", "words"), [
    (SPOOL, a_stat(DIR | 0o777, 500), 500, "other users can write to it"),
    (SPOOL, a_stat(stat.S_IFLNK | 0o777, 500), 500, "is a symlink"),
    (SPOOL, a_stat(DIR | 0o700, 1001), 500, "owned by uid 1001"),
    (SPOOL, a_stat(stat.S_IFREG | 0o600, 500), 500, "is not a directory"),
    (SECRET, a_stat(stat.S_IFREG | 0o644, 500), 500, "other users can read it"),
    (SPOOL, None, 500, "does not exist"),
])
def test_each_bad_path_fails(rule: PathRule, info: os.stat_result | None, uid: int,
                             words: str) -> None:
    result = path_check(rule, info, uid)
    assert result.status is CheckStatus.FAIL and words in result.detail and result.fix


def test_good_paths_pass_and_optional_missing_ones_warn() -> None:
    assert path_check(SPOOL, a_stat(DIR | 0o700, 500), 500).status is CheckStatus.OK
    assert path_check(SECRET, a_stat(stat.S_IFREG | 0o600, 500), 500).fix == ""
    later = PathRule("spool", "/spool", "imgsave", directory=True, required=False)
    assert path_check(later, None, 500).status is CheckStatus.WARN
    assert path_check(SECRET, a_stat(stat.S_IFREG | 0o644, 500), 500).fix == (
        "chmod 0600 /i/secret_key")


def test_check_has_help() -> None:
    result = CliRunner().invoke(main, ["check", "--help"])
    assert result.exit_code == 0 and "--scope" in result.output and "fix" in result.output
