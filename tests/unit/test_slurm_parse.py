"""The pure Slurm parsers and argv builders, on real Slurm 22.05 output.

Every sample is a capture from the local cluster in ``tests/captures/slurm/`` (its
README says how each was made); each test names the file it reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.errors import SchedulerError
from scheduler_glue.base import BatchJob, JobRecord
from scheduler_glue.slurm.commands import (
    sacct_list_argv,
    sacct_status_argv,
    sbatch_argv,
    scancel_argv,
    squeue_node_argv,
    squeue_status_argv,
)
from scheduler_glue.slurm.parse import (
    _STATE_MAP,
    first_node,
    is_job_id,
    is_partial_record,
    iter_hostlist,
    map_state,
    merge_live,
    parse_duration,
    parse_exit_code,
    parse_node_state,
    parse_sacct_rows,
    parse_sbatch_parsable,
    parse_sinfo_nodes,
    parse_slurm_time,
    parse_squeue_rows,
    pyslurm_matches,
    slurm_errors,
    slurm_version,
)
from scheduler_glue.states import JobState
from tests.support.replay import CAPTURES, Capture, load_capture

SLURM = CAPTURES / "slurm"
SINCE = datetime(2026, 11, 26, 3, 15, tzinfo=UTC)  # the captures' since
STEPS_SINCE = datetime(2026, 11, 30, 4, 28, 43, tzinfo=UTC)  # the 46* captures' since


def capture(name: str) -> Capture:
    return load_capture(SLURM / f"{name}.txt")


def command(name: str) -> str:
    """The captured command line (replay's ``command`` also holds the header lines)."""
    return capture(name).command.splitlines()[0]


def at(hms: str) -> datetime:
    """A time on the capture day (the capture host's zone was UTC)."""
    return datetime.fromisoformat(f"2026-11-26T{hms}").replace(tzinfo=UTC)


def by_id(records: list[JobRecord]) -> dict[str, JobRecord]:
    return {r.job_id: r for r in records}


@pytest.fixture
def local_utc(monkeypatch: pytest.MonkeyPatch) -> object:
    """Make the process's local zone UTC, as on the capture host."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield None
    monkeypatch.undo()
    time.tzset()


# -- every capture is readable -------------------------------------------------------


def test_every_capture_has_command_and_exit_code() -> None:
    files = sorted(SLURM.glob("*.txt"))
    assert len(files) > 40
    for path in files:
        cap = load_capture(path)
        assert cap.command.split()[0] in {
            "sbatch",
            "sacct",
            "squeue",
            "scancel",
            "scontrol",
            "sinfo",
            "sacctmgr",
            "runuser",
        }, path


# -- argv builders reproduce the captured commands -----------------------------------


def test_status_argv_is_the_captured_command(local_utc: object) -> None:
    # 46_sacct_status_steps.txt: jobs 830-832, since 04:28:43
    argv = sacct_status_argv(["830", "831", "832"], STEPS_SINCE)
    assert " ".join(argv) == command("46_sacct_status_steps")
    assert "-S 2026-11-30T04:23:43" in " ".join(argv)  # since minus 5 min slack
    assert "-X" not in argv  # the steps' rows carry the CPU time (46c_*)
    # 40/41 ran the argv before, with -X: the same command otherwise
    old = sacct_status_argv(["17", "18", "19", "99999"], SINCE)
    assert command("41_sacct_status_live_just_submitted") == " ".join(
        [old[0], "-X", *old[1:]]
    )


def test_list_and_squeue_argv_are_the_captured_commands(local_utc: object) -> None:
    # 46b_sacct_list_window_steps_until.txt and 46d_sacct_list_window_steps.txt
    until = datetime(2026, 11, 30, 4, 28, 56, tzinfo=UTC)
    listed = sacct_list_argv(STEPS_SINCE, until)
    assert " ".join(listed) == command("46b_sacct_list_window_steps_until")
    assert " ".join(sacct_list_argv(STEPS_SINCE)) == command("46d_sacct_list_window_steps")
    assert "-X" not in listed
    assert " ".join(squeue_status_argv(["17", "18", "19", "99999"])) == command(
        "42_squeue_status_live"
    )
    assert " ".join(squeue_node_argv("18")) == command("44_squeue_node_running")
    assert " ".join(scancel_argv("13")) == command("33f_scancel_v_running")


def test_sbatch_argv_full_and_minimal() -> None:
    job = BatchJob(
        name="imgsave-save-r-0001",
        script=Path("/spool/r-0001/job.sh"),
        node="n1",
        output_path=Path("/spool/r-0001/out%1.log"),
        metadata={"user": "alice", "target": "alice/nb:v1"},
        partition="imgsave",
        qos="short",
        account="proj",
        time_limit_minutes=30,
        cpus=2,
        workdir=Path("/spool/r-0001"),
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/home/alice"}
    assert sbatch_argv(job, ["--mem=1G"], environment=env, sbatch="/usr/bin/sbatch") == [
        "env", "-i", "PATH=/usr/bin:/bin", "HOME=/home/alice",  # this and nothing else
        "/usr/bin/sbatch", "--parsable", "--job-name", "imgsave-save-r-0001",
        "--partition", "imgsave",
        "--qos", "short", "--account", "proj", "--nodelist", "n1", "--nodes", "1",
        "--ntasks", "1", "--cpus-per-task", "2", "--time", "30",
        "--output", "/spool/r-0001/out%%1.log",  # % escaped: Slurm expands %j etc.
        "--comment", "imgsave/1 target=alice/nb:v1;user=alice",
        "--export", "ALL",  # env -i's environment, never the submitter's
        "--chdir", "/spool/r-0001", "--mem=1G", "/spool/r-0001/job.sh",
    ]  # fmt: skip
    bare = BatchJob("j", Path("/s.sh"), "n2", Path("/o"), partition="imgsave")
    argv = sbatch_argv(bare, environment={})
    assert argv[:3] == ["env", "-i", "sbatch"]
    with pytest.raises(ValueError, match="bad environment"):
        sbatch_argv(bare, environment={"A=B": "x"})
    assert "--qos" not in argv and "--account" not in argv and "--chdir" not in argv
    assert argv[-1] == "/s.sh"


# -- sbatch ---------------------------------------------------------------------------


def test_sbatch_parsable_job_id() -> None:
    assert parse_sbatch_parsable(capture("01_sbatch_parsable_ok").stdout) == "4"
    assert parse_sbatch_parsable("123;imgsave-local\n") == "123"  # multi-cluster form
    with pytest.raises(SchedulerError, match="no job id.*'Submitted batch job 5'"):
        parse_sbatch_parsable("Submitted batch job 5\n")  # forgot --parsable


def test_sbatch_errors_are_the_stderr_lines() -> None:
    assert slurm_errors(capture("05_sbatch_bad_partition").stderr) == (
        "invalid partition specified: nosuchpart; "
        "Batch job submission failed: Invalid partition name specified"
    )
    assert slurm_errors(capture("06_sbatch_unknown_node").stderr) == (
        "Batch job submission failed: Invalid node name specified"
    )
    assert slurm_errors(capture("07b_sbatch_batch_over_maxcpuspernode").stderr) == (
        "Batch job submission failed: Requested node configuration is not available"
    )
    assert slurm_errors(capture("43d_sacct_list_refuses_state_CG").stderr) == (
        "job state CG is not supported / accounted"
    )
    assert slurm_errors(capture("42b_squeue_status_only_unknown").stderr) == (
        "slurm_load_jobs error: Invalid job id specified"  # no "cmd: error:" prefix
    )


# -- states, exit codes, times --------------------------------------------------------


def test_state_map_covers_sacct_and_squeue_states() -> None:
    for name in (
        "PENDING RUNNING COMPLETING COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL "
        "OUT_OF_MEMORY PREEMPTED BOOT_FAIL DEADLINE REQUEUED SUSPENDED RESIZING "
        "REVOKED CONFIGURING STAGE_OUT SPECIAL_EXIT SIGNALING STOPPED"
    ).split():
        assert name in _STATE_MAP
    assert map_state("CANCELLED by 0") is JobState.CANCELLED
    assert map_state("CANCELLED by 1001") is JobState.CANCELLED
    assert map_state("OUT_OF_MEMORY") is JobState.OUT_OF_MEMORY
    assert map_state("BOOT_FAIL") is JobState.NODE_FAIL
    assert map_state("DEADLINE") is JobState.TIMEOUT
    assert map_state("REQUEUED") is JobState.PENDING
    finals = {s for s, j in _STATE_MAP.items() if j.final}
    assert finals == {"COMPLETED", "FAILED", "SPECIAL_EXIT", "PREEMPTED", "CANCELLED",
                      "REVOKED", "TIMEOUT", "DEADLINE", "NODE_FAIL", "BOOT_FAIL",
                      "OUT_OF_MEMORY"}  # fmt: skip


def test_unknown_state_is_unknown_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert map_state("WEIRD_NEW_STATE") is JobState.UNKNOWN
    assert "WEIRD_NEW_STATE" in caplog.text


def test_exit_codes_and_durations() -> None:
    assert parse_exit_code("3:0") == (3, None)
    assert parse_exit_code("0:9") == (0, 9)
    assert parse_exit_code("") == (None, None)
    assert parse_duration("00:00:00") == 0.0
    assert parse_duration("01:02.500") == 62.5  # MM:SS.mmm
    assert parse_duration("1-02:03:04") == 93784.0
    assert parse_duration("INVALID") is None and parse_duration("") is None


def test_times_are_aware(local_utc: object) -> None:
    assert parse_slurm_time("2026-11-26T03:16:42") == at("03:16:42")
    local = parse_slurm_time("2026-11-26T03:16:42")
    assert local is not None and local.tzinfo is not None  # aware, in the local zone
    seoul = timezone(timedelta(hours=9))
    assert parse_slurm_time("2026-11-26T12:16:42", seoul) == at("03:16:42")
    for nothing in ("Unknown", "None", "N/A", ""):
        assert parse_slurm_time(nothing) is None
    with pytest.raises(ValueError, match="SLURM_TIME_FORMAT"):
        parse_slurm_time("26/11 03:16")


# -- sacct ----------------------------------------------------------------------------


def test_sacct_finished_jobs() -> None:
    # 40_sacct_status_finished.txt: the exploration's jobs 3-14
    jobs = by_id(parse_sacct_rows(capture("40_sacct_status_finished").stdout, tz=UTC))
    assert len(jobs) == 12
    timeout = jobs["3"]
    assert timeout.state is JobState.TIMEOUT and timeout.node == "n2"
    assert timeout.run_seconds == 78.0 and timeout.metadata == {"case": "timeout"}
    done = jobs["4"]
    assert (done.state, done.exit_code, done.signal, done.node) == (
        JobState.COMPLETED,
        0,
        None,
        "n1",
    )
    assert done.metadata == {
        "container": "jupyter alice",
        "request_id": "r-0001",
        "target": "127.0.0.1:5000/alice/nb:v1",
        "user": "alice",
    }
    assert done.name == "imgsave-save-r-0001" and done.user == "root"
    assert done.partition == "imgsave" and done.account == "root"
    assert done.submit_time == done.start_time == done.end_time == at("03:16:23")
    assert done.cpu_seconds == 0.0 and done.reason == ""
    never_ran = jobs["5"]
    assert never_ran.state is JobState.CANCELLED and never_ran.raw_state == "CANCELLED by 0"
    assert never_ran.start_time is None and never_ran.exit_code is None
    assert never_ran.node == "" and never_ran.reason == "PartitionConfig"
    assert never_ran.metadata == {}
    exit3 = jobs["7"]
    assert (exit3.state, exit3.exit_code, exit3.signal) == (JobState.FAILED, 3, None)
    killed = jobs["10"]
    assert (killed.state, killed.exit_code, killed.signal) == (JobState.FAILED, 0, 9)
    held = jobs["8"]
    assert held.state is JobState.CANCELLED and held.reason == "JobHeldUser"
    cancelled = jobs["9"]
    assert cancelled.state is JobState.CANCELLED and cancelled.node == "n1"
    assert cancelled.run_seconds == 6.0
    assert jobs["6"].state is JobState.FAILED and jobs["6"].exit_code == 1  # rejected sbatch


def test_sacct_live_jobs_have_no_comment_and_new_ones_are_missing() -> None:
    # 41_sacct_status_live_just_submitted.txt: 17 held, 18 running, 19 just submitted
    jobs = by_id(parse_sacct_rows(capture("41_sacct_status_live_just_submitted").stdout, tz=UTC))
    assert set(jobs) == {"17", "18"}
    assert jobs["17"].state is JobState.PENDING and jobs["17"].start_time is None
    assert jobs["17"].end_time is None and jobs["17"].reason == "JobHeldUser"
    running = jobs["18"]
    assert running.state is JobState.RUNNING and running.node == "n1"
    assert running.exit_code is None and running.end_time is None
    assert running.metadata == {}  # sacct stores the comment only at the end


def test_partial_accounting_record() -> None:
    # 45b_sacct_status_cancelled.txt: job 19, cancelled a second after submission, was
    # for a few seconds accounted as "allocation" with no partition (fixed later)
    jobs = by_id(parse_sacct_rows(capture("45b_sacct_status_cancelled").stdout, tz=UTC))
    assert jobs["19"].name == "" and is_partial_record(jobs["19"])
    assert jobs["19"].metadata == {"case": "cap-live-new"}
    assert not is_partial_record(jobs["18"]) and jobs["18"].name == "cap-live-running"


def test_sacct_cpu_time_comes_from_the_steps() -> None:
    # 46_sacct_status_steps.txt: two real saves as alice (830 pushed, 831 container
    # missing) and 832 with a batch step and two srun steps; without -X
    text = capture("46_sacct_status_steps").stdout
    jobs = parse_sacct_rows(text, tz=UTC)
    assert [r.job_id for r in jobs] == ["830", "831", "832"]  # one record per job
    cpu = {r.job_id: r.cpu_seconds for r in jobs}
    assert cpu["830"] == pytest.approx(1.168) and cpu["831"] == pytest.approx(0.661)
    # the steps' sum (0.028 + 0.722 + 0.003); sacct's own sum on the job's row, from
    # unrounded microseconds, is 0.755
    assert cpu["832"] == pytest.approx(0.753)
    saved = jobs[0]
    assert saved.name == "imgsave-alice" and saved.partition == "imgsave"
    assert not is_partial_record(saved) and saved.metadata["user"] == "alice"
    assert saved.start_time == datetime(2026, 11, 30, 4, 28, 46, tzinfo=UTC)
    assert saved.run_seconds == 1.0  # accounting's whole seconds
    # the steps of a job the name filter drops go with it; a step alone is no job
    assert [r.job_id for r in parse_sacct_rows(text, name_prefix="cap-", tz=UTC)] == ["832"]
    steps_only = "\n".join(line for line in text.splitlines() if "." in line.split("|")[0])
    assert parse_sacct_rows(steps_only, tz=UTC) == []


def test_sacct_with_allocations_only_has_no_cpu_time() -> None:
    # 46c_sacct_status_X_no_cpu.txt: the same jobs with -X (the argv before): TotalCPU
    # 00:00:00 on every job's row, whatever it used; the parser keeps what it is given
    jobs = parse_sacct_rows(capture("46c_sacct_status_X_no_cpu").stdout, tz=UTC)
    assert {r.job_id: r.cpu_seconds for r in jobs} == {"830": 0.0, "831": 0.0, "832": 0.0}
    assert jobs == [replace(r, cpu_seconds=0.0) for r in
                    parse_sacct_rows(capture("46_sacct_status_steps").stdout, tz=UTC)]


def test_sacct_list_window_with_steps() -> None:
    # 46b_sacct_list_window_steps_until.txt: -s <every state> keeps the step rows too
    text = capture("46b_sacct_list_window_steps_until").stdout
    assert sum("." in line.split("|")[0] for line in text.splitlines()) == 5
    saves = parse_sacct_rows(text, name_prefix="imgsave-", tz=UTC)
    assert [(r.job_id, r.cpu_seconds) for r in saves] == [("830", 1.168), ("831", 0.661)]


def test_sacct_list_filters_names_before_parsing() -> None:
    # 43_sacct_list_window.txt: every job of the window, held-then-cancelled ones too
    text = capture("43_sacct_list_window").stdout
    everything = parse_sacct_rows(text, tz=UTC)
    assert [r.job_id for r in everything] == [str(i) for i in range(1, 20)]
    caps = parse_sacct_rows(text, name_prefix="cap-live-", tz=UTC)
    assert [r.job_id for r in caps] == ["17", "18"]  # 19 was, for now, named "allocation"
    assert parse_sacct_rows(text, name_prefix="imgsave-", tz=UTC)[0].job_id == "4"


def test_sacct_without_states_misses_held_jobs() -> None:
    # 43c_sacct_list_window_without_states.txt: why sacct_list_argv passes -s
    without = {
        r.job_id
        for r in parse_sacct_rows(capture("43c_sacct_list_window_without_states").stdout, tz=UTC)
    }
    with_states = {
        r.job_id for r in parse_sacct_rows(capture("43_sacct_list_window").stdout, tz=UTC)
    }
    assert with_states - without == {"8", "11", "15", "17"}


def test_sacct_comment_with_pipe_and_short_lines(caplog: pytest.LogCaptureFixture) -> None:
    # a foreign comment may hold '|' (Comment is the last field) or a newline (skipped)
    row = capture("40_sacct_status_finished").stdout.splitlines()[1]
    piped = row + "|x|y"
    broken = "4|half a row"
    with caplog.at_level(logging.WARNING):
        records = parse_sacct_rows(f"{piped}\n{broken}\n", tz=UTC)
    assert len(records) == 1 and records[0].state is JobState.COMPLETED
    assert "skipped 1 sacct line" in caplog.text


def _many_rows(count: int) -> str:
    """``count`` sacct rows cycling through 40_sacct_status_finished.txt, with distinct ids
    and times (a memo of repeated times must not flatter the measurement)."""
    rows = [r.split("|") for r in capture("40_sacct_status_finished").stdout.splitlines()]
    base = datetime(2026, 1, 1)
    out = []
    for i in range(count):
        cols = list(rows[i % len(rows)])
        submit = base + timedelta(seconds=17 * i)
        cols[0] = str(i + 1)
        cols[7] = submit.isoformat()
        if cols[8] != "None":
            cols[8] = (submit + timedelta(seconds=3)).isoformat()
        cols[9] = (submit + timedelta(seconds=40)).isoformat()
        out.append("|".join(cols))
    return "\n".join(out)


def test_sacct_parser_handles_1e5_rows() -> None:
    # Correctness at scale only; the time it takes is measured in bench/report_scale.py
    # (tests stay deterministic).
    text = _many_rows(100_000)
    records = parse_sacct_rows(text)  # the local zone, as in production
    assert len(records) == 100_000 and records[-1].job_id == "100000"
    assert records[3].end_time is not None and records[3].end_time.year == 2026
    saves = parse_sacct_rows(text, name_prefix="imgsave-")
    assert len(saves) == 100_000 // 12 + 1  # one in twelve rows is job 4's name


# -- squeue and merging ---------------------------------------------------------------


def test_squeue_live_rows() -> None:
    # 42_squeue_status_live.txt: 19 just submitted, 17 held, 18 running; 99999 absent
    jobs = by_id(parse_squeue_rows(capture("42_squeue_status_live").stdout, tz=UTC))
    assert set(jobs) == {"17", "18", "19"}
    assert jobs["19"].state is JobState.PENDING and jobs["19"].metadata == {"case": "cap-live-new"}
    assert jobs["19"].start_time is None and jobs["19"].end_time is None  # "N/A"
    running = jobs["18"]
    assert running.state is JobState.RUNNING and running.node == "n1"
    assert running.start_time == at("03:22:45")
    assert running.end_time is None  # squeue's 03:27:45 is the time limit, not a fact
    assert running.name == "cap-live-running" and running.partition == "imgsave"


def test_squeue_finished_rows_within_minjobage() -> None:
    # 45_squeue_status_cancelled_within_minjobage.txt
    jobs = by_id(
        parse_squeue_rows(capture("45_squeue_status_cancelled_within_minjobage").stdout, tz=UTC)
    )
    assert {j.state for j in jobs.values()} == {JobState.CANCELLED}
    assert jobs["18"].end_time == at("03:22:47") and jobs["18"].start_time == at("03:22:45")
    assert jobs["17"].start_time is None  # squeue prints a start for a never-run job
    # 12_squeue_mixed_pipe_format.txt (older format) has "(null)" for no comment
    assert parse_squeue_rows("5|PENDING||root|n|a|p|N/A|N/A|N/A|None|(null)\n")[0].metadata == {}


def test_merge_prefers_the_further_state_and_fills_gaps() -> None:
    # sacct (41) says running without comment; squeue (42/45) has the comment and later state
    sacct = by_id(parse_sacct_rows(capture("41_sacct_status_live_just_submitted").stdout, tz=UTC))
    live = by_id(parse_squeue_rows(capture("42_squeue_status_live").stdout, tz=UTC))
    gone = by_id(
        parse_squeue_rows(capture("45_squeue_status_cancelled_within_minjobage").stdout, tz=UTC)
    )
    running = merge_live(sacct["18"], live["18"])
    assert running.state is JobState.RUNNING
    assert running.metadata == {"case": "cap-live-running"} and running.account == "root"
    finished = merge_live(sacct["18"], gone["18"])
    assert finished.state is JobState.CANCELLED and finished.end_time == at("03:22:47")
    assert finished.submit_time == at("03:22:44")
    later = merge_live(gone["18"], live["18"])  # squeue never moves a state backwards
    assert later.state is JobState.CANCELLED
    unknown = JobRecord("18", JobState.UNKNOWN)
    assert merge_live(sacct["18"], unknown) is sacct["18"]


# -- nodes, hostlists, versions -------------------------------------------------------


def test_hostlist_expansion_matches_scontrol() -> None:
    # 32_scontrol_show_hostnames.txt: scontrol show hostnames 'n[1-2],gpu[01-03,7],login'
    cap = capture("32_scontrol_show_hostnames")
    expression = command("32_scontrol_show_hostnames").split(" ", 3)[3].strip("'")
    assert list(iter_hostlist(expression)) == cap.stdout.split()
    assert list(iter_hostlist("r[1-2]n[01-02]")) == ["r1n01", "r1n02", "r2n01", "r2n02"]
    assert first_node("n[1-2]") == "n1" and first_node("n2") == "n2"
    assert first_node("None assigned") == "" and first_node("") == ""
    assert first_node("node[0001-9999]") == "node0001"
    with pytest.raises(ValueError, match="unbalanced"):
        list(iter_hostlist("n[1-2"))


def test_node_state_and_sinfo_nodes() -> None:
    # 44_squeue_node_running.txt, 44b_squeue_node_pending.txt, 31_sinfo_node_names.txt
    assert parse_node_state(capture("44_squeue_node_running").stdout) == ("RUNNING", "n1", "root")
    assert parse_node_state(capture("44b_squeue_node_pending").stdout) == ("PENDING", "", "root")
    assert parse_node_state(capture("44c_squeue_node_unknown").stdout) is None
    assert parse_sinfo_nodes(capture("31_sinfo_node_names").stdout) == {"n1", "n2"}


def test_versions_and_job_ids() -> None:
    # 31b_sinfo_version.txt: "slurm-wlm 22.05.8"
    sinfo = capture("31b_sinfo_version").stdout
    assert slurm_version(sinfo) == (22, 5)
    assert pyslurm_matches("22.5.1", sinfo) and pyslurm_matches("22.05.0", sinfo)
    assert not pyslurm_matches("25.11.2", sinfo)  # what PyPI has
    assert not pyslurm_matches("18.8.1.1", sinfo) and not pyslurm_matches("", sinfo)
    assert slurm_version("") is None
    for good in ("4", "123_7", "55+1"):
        assert is_job_id(good)
    for bad in ("", "-a", "4,5", "abc", "_1"):
        assert not is_job_id(bad)
