"""Send one sentdm-batch campaign from Airflow: validate, send N shards in parallel, merge, report.

Written for Airflow 3 (tested with 3.3.2, TaskFlow API from `airflow.sdk`); the imports fall back to the Airflow 2
modules (2.4 or newer, for dynamic task mapping), so the same file also loads there.

Tasks
-----
validate      `python -m pipeline validate SPEC [PLACES]`: checks the spec and every row before anything is sent.
shard_numbers [0 .. N-1], the list the shard tasks are mapped over (N is a param, so known only at run time).
run_shard[i]  one mapped task per shard, `python -m pipeline run SPEC --shard i/N --quiet --log-format json
              [PLACES] [--summary-json BUCKET/summaries/shard-i-of-N.json] [--rate R]`; returns the run summary
              (counts, paths, abort reason) that the tool prints as its last JSON line, which lands in XCom.
merge         `python -m pipeline merge SPEC [PLACES]`: the shard results -> `output.results`, in input order.
report        adds up the shard summaries and decides whether the campaign needs a person (see below).

Params (set them when triggering; each falls back to an environment variable of the worker, then to a default)
------
spec            SENTDM_SPEC, else configs/campaign.yaml; a relative path is taken from the project folder
                (SENTDM_PROJECT_DIR, else the folder two levels above this file: the repository)
python          SENTDM_PYTHON, else the worker's own Python; it must be able to `import pipeline`
shards          N, the number of parallel shard tasks (default 3)
fail_on_unsent  true: the run fails when any row was not sent (default); false: it only logs a warning
state           SENTDM_STATE, else the spec's output.state: where the campaign state is, a postgresql:// URL
                without a password (PGPASSWORD or ~/.pgpass on the workers); passed as `--state`
bucket          SENTDM_BUCKET, else none (the spec's own paths): a prefix such as s3://BUCKET/campaigns/2026-12
                under which every task reads and writes the campaign's files (below); needs `state` (or the
                spec's output.state)
shard_rate      SENTDM_SHARD_RATE, else none (send.rate/N): each shard's rate, passed as `--rate`, e.g. 2/s

What each exit code of the tool does to a task
----------------------------------------------
0       success.
1       "finished, but some rows were not sent" (invalid, failed, unknown, not_attempted). The task succeeds - the
        shard did all it could, and retrying would send nothing more - and the `report` task turns it into a
        visible failure (below). For `validate` it is logged as a warning: the valid rows are still sent.
2       spec, input or usage error: AirflowFailException, no retry. A config error does not fix itself; running
        the same thing again only repeats the error. Except "already running": the campaign's lock is held - by a
        live worker (the retry is refused again), or by an attempt whose machine vanished, whose PostgreSQL
        session and lock end within about a minute - so that is an AirflowException and Airflow retries.
3       aborted (authentication failed, the service looks down, the disk filled up after sending began), and
130/143 interrupted: AirflowException, so Airflow retries. Retrying is safe: a shard resumes from its state and
        never resends a row the server acknowledged. Keep retry_delay longer than `api.timeout_s`, so that a
        killed attempt has finished writing before the next one takes the campaign's lock.
70      a bug in sentdm-batch: AirflowFailException (a retry hits the same bug).
other   e.g. killed by the OOM killer: AirflowException, retried - resuming is safe.

Why a run with unsent rows fails
--------------------------------
A campaign where some rows were not sent needs a person: invalid rows must be fixed in the data, `failed` rows
resent with `retry`, `unknown` rows looked up before anyone resends them. A green run with a warning in a log nobody
opens hides that, so the final `report` task fails the run (with no retry: the numbers will not change) and its error
names the counts and the merged results file - and Airflow's own failure alerts (email, on_failure_callback) fire.
Only `report` fails: the shard and merge tasks stay green, because they did their job. After fixing the cause (the
data; `retry SPEC --shard I/N` for failed rows), trigger the DAG again: the shards resume, send only rows that have
no outcome yet, and `report` counts afresh. Set fail_on_unsent=false where some invalid rows are normal.

Trigger rules: `merge` runs when every shard has finished, successful or not (all_done), so the merged file also
shows the rows of a shard that aborted and gave up after its retries (as `failed` / `not_attempted`); it is skipped
when `validate` failed, since then no shard ran. `report` needs every shard and the merge to have succeeded
(all_success), so a shard that failed for good fails the run too: `report` is the only leaf task, and a run fails
when a leaf has failed or its upstream has.

Workers that share no disk (Celery, Kubernetes executors): give the run `state` and `bucket` (or set SENTDM_STATE
and SENTDM_BUCKET on every worker). PLACES above is then `--state STATE --input BUCKET/<input.path's file name>
--results BUCKET/<output.results' file name>`, so every task reads and writes only the state in PostgreSQL and the
objects under the bucket prefix: the input (upload it there before triggering), the shard results and manifests
(beside the results), the merged results and the shard summaries (BUCKET/summaries/). Nothing a task leaves on its
worker's disk is read by another task, and the summaries reach `report` through XCom, from the tool's output. A
retried shard on another worker or in a fresh pod resumes from the state in PostgreSQL and never resends a row the
server acknowledged; the advisory lock refuses a second live attempt of the same shard (exit 2). Without them, all
tasks must see the same files (merge reads every shard's results): use one worker, or keep `output.results` on
storage every worker mounts. README.md, "Running on several machines", has the settings for each executor.
max_active_runs=1 because two runs of one campaign would refuse each other (exit 2, "already running").
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml  # Airflow's own dependency

try:  # Airflow 3: the Task SDK is the authoring interface
    from airflow.sdk import Param, dag, get_current_context, task
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task
    from airflow.exceptions import AirflowException, AirflowFailException, AirflowSkipException
    from airflow.models.param import Param
    from airflow.operators.python import get_current_context

log = logging.getLogger(__name__)

# examples/airflow/campaign_dag.py -> the repository, when the DAG is used from a checkout of it
REPO_DIR = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = "configs/campaign.yaml"

# Exit codes of sentdm-batch (README, "Exit codes")
EXIT_OK, EXIT_ROWS_NOT_SENT, EXIT_USAGE, EXIT_ABORTED, EXIT_INTERNAL = 0, 1, 2, 3, 70
# how the tool says another process holds the campaign's lock (exit 2): the one exit-2 case worth a retry
BUSY_TEXT = "is already running"
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

# When Airflow stops a task while the tool runs, the tool gets one SIGTERM and this long to finish the requests in
# flight and write its results (it waits up to api.timeout_s, default 30 s) before it is killed. Should Airflow kill
# the task's own process sooner, the tool, in a session of its own, still finishes that graceful stop by itself.
STOP_GRACE_S = 60

# Outcomes that count as "not sent" (the summary's other two, sent and duplicate, are fine)
NOT_SENT = ("invalid", "failed", "unknown", "not_attempted")


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    """Where the project, the spec, the Python, the state and the bucket are, and how many shards: from the run's
    params, else the worker's environment, else the defaults."""
    project = Path(os.environ.get("SENTDM_PROJECT_DIR") or REPO_DIR).resolve()
    spec = Path(params.get("spec") or os.environ.get("SENTDM_SPEC") or DEFAULT_SPEC)
    python = params.get("python") or os.environ.get("SENTDM_PYTHON") or sys.executable
    state = params.get("state") or os.environ.get("SENTDM_STATE") or None
    shard_rate = params.get("shard_rate") or os.environ.get("SENTDM_SHARD_RATE") or None
    bucket = (params.get("bucket") or os.environ.get("SENTDM_BUCKET") or "").rstrip("/") or None
    settings = {
        "project_dir": str(project),
        "spec": str(project / spec),
        "python": python,
        "shards": int(params["shards"]),
        "state": state,
        "bucket": bucket,
        "shard_rate": shard_rate,
    }
    if state is not None and urlsplit(state).password is not None:
        # params and XCom are kept in Airflow's database and shown in its UI: no secret may travel in them
        raise AirflowFailException(
            "the state URL holds a password; params are stored and shown by Airflow. Remove it from the URL and "
            "give the workers PGPASSWORD or a ~/.pgpass (PGPASSFILE) instead."
        )
    if bucket is not None:
        input_name, results_name, spec_state = _read_spec(Path(settings["spec"]))
        if state is None and not spec_state:
            raise AirflowFailException(
                f"bucket {bucket} is set but no state: the shards' state must outlive their workers too. Set the "
                "param `state` (or SENTDM_STATE, or the spec's output.state) to a postgresql:// URL every worker "
                "reaches."
            )
        settings["input"] = f"{bucket}/{input_name}"
        settings["results"] = f"{bucket}/{results_name}"
        settings["summaries"] = f"{bucket}/summaries"
    return settings


def _read_spec(spec: Path) -> tuple[str, str, str]:
    """The file names of the spec's input.path and output.results (under a bucket, the input is read from
    BUCKET/<its name> and the results written to BUCKET/<theirs>), and its output.state as written, or ''."""
    try:
        data = yaml.safe_load(spec.read_text(encoding="utf-8"))
        names = (PurePosixPath(data["input"]["path"]).name, PurePosixPath(data["output"]["results"]).name)
        state = str(data["output"].get("state") or "")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise AirflowFailException(
            f"{spec}: cannot read input.path and output.results, whose file names are used in the bucket ({exc}); "
            "run `python -m pipeline validate SPEC` to see what is wrong with the spec."
        ) from None
    if any("$" in name or not name for name in names):
        raise AirflowFailException(
            f"{spec}: with a bucket, input.path and output.results must end in a plain file name (no ${{VAR}}): "
            f"the input is read from BUCKET/<name> and the results written to BUCKET/<name>; got {names}."
        )
    return (*names, state)


def _locations(settings: dict[str, Any]) -> list[str]:
    """The command-line options that put the input, the results and the state where the run's params say."""
    options = ["--state", settings["state"]] if settings.get("state") else []
    if settings.get("bucket"):
        options += ["--input", settings["input"], "--results", settings["results"]]
    return options


class Ran(NamedTuple):
    code: int  # the tool's exit code
    tail: list[str]  # the last lines of its output, for error messages
    summary: dict[str, Any] | None  # with --log-format json: the summary it printed (from stdout, not from a file)


def _cli(settings: dict[str, Any], *args: str) -> Ran:
    """Run `python -m pipeline ARGS` in the project folder, copying its output into the task log as it comes."""
    command = [settings["python"], "-m", "pipeline", *args]
    log.info("$ %s  (in %s)", shlex.join(command), settings["project_dir"])
    summary: dict[str, Any] | None = None
    # unbuffered: progress lines reach the task log when they are printed, not when the process ends
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(  # noqa: S603 - a fixed command; the spec path is an argument, never a shell string
        command,
        cwd=settings["project_dir"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # its own process group: a signal Airflow sends to the task's group must not reach the tool as well as the
        # one forwarded below - a second signal makes the tool stop at once, leaving in-flight rows `unknown`
        start_new_session=True,
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                log.info("%s", line)
                tail.append(line)
                if line.startswith('{"') and '"event": "summary"' in line:
                    summary = json.loads(line)
            return Ran(process.wait(), list(tail), summary)
        except BaseException:
            # Airflow is stopping this task (timeout, marked failed, worker shutdown). Pass that on as one SIGTERM:
            # the tool stops taking rows, lets requests in flight finish, writes its results and state, exits 143.
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
            raise


def _check_exit(what: str, code: int, tail: list[str]) -> None:
    """Turn an exit code of the tool into the task outcome described in the module docstring."""
    if code in (EXIT_OK, EXIT_ROWS_NOT_SENT):
        return
    last = "\n".join(tail[-5:])
    if code == EXIT_USAGE and any(BUSY_TEXT in line for line in tail):
        # the campaign's (shard's) lock is held: by a live worker (the retry is refused again, harmlessly) or by a
        # previous attempt whose machine vanished, whose PostgreSQL session - and lock - ends within about a minute
        raise AirflowException(f"{what}: the campaign's lock is still held (exit 2); retrying later:\n{last}")
    if code == EXIT_USAGE:
        raise AirflowFailException(
            f"{what}: spec, input or usage error, or the campaign is already running (exit 2); "
            f"not retrying - fix it and clear the task:\n{last}"
        )
    if code == EXIT_INTERNAL:
        raise AirflowFailException(f"{what}: internal error in sentdm-batch (exit 70), not retrying:\n{last}")
    if code == EXIT_ABORTED:
        reason = "aborted (authentication failed, service down, or disk full)"
    elif code in (EXIT_SIGINT, EXIT_SIGTERM):
        reason = "interrupted"
    else:
        reason = f"ended unexpectedly (exit {code})"
    # a plain AirflowException: Airflow retries, and the retry resumes without resending acknowledged rows
    raise AirflowException(f"{what}: {reason}; a retry resumes where it stopped:\n{last}")


@task
def validate() -> dict[str, Any]:
    """Check the spec and every row; hand the resolved settings to the rest of the run."""
    settings = _settings(get_current_context()["params"])
    # Python exits 1 when it cannot even import the tool, and 1 from `validate` only means "some rows are invalid";
    # so first prove that this Python runs sentdm-batch at all
    code, tail, _ = _cli(settings, "--version")
    if code != EXIT_OK:
        raise AirflowFailException(f"{settings['python']} cannot run sentdm-batch (exit {code}):\n" + "\n".join(tail))
    code, tail, _ = _cli(settings, "validate", settings["spec"], *_locations(settings))
    _check_exit("validate", code, tail)
    if code == EXIT_ROWS_NOT_SENT:
        log.warning("some rows are invalid: they will not be sent and will be `invalid` in the results (see above)")
    # resolved once here, so every task of this run uses the same spec and Python even if the params' defaults
    # (environment variables) differ between workers
    return settings


@task
def shard_numbers(settings: dict[str, Any]) -> list[int]:
    """0 .. N-1: the list the shard tasks are mapped over, known only when the run's params are."""
    return list(range(settings["shards"]))


@task(retries=3, retry_delay=timedelta(minutes=2), retry_exponential_backoff=True)
def run_shard(settings: dict[str, Any], shard: int) -> dict[str, Any]:
    """Send shard `shard` of the campaign; return its run summary."""
    label = f"{shard}/{settings['shards']}"
    # JSON lines: the summary comes back on stdout, so nothing here depends on a local file (a pod's disk is gone
    # when the task ends); under a bucket a copy of it is also kept there, beside the results
    args = ["run", settings["spec"], "--shard", label, "--quiet", "--log-format", "json", *_locations(settings)]
    if settings.get("shard_rate"):
        args += ["--rate", settings["shard_rate"]]
    if settings.get("bucket"):
        args += ["--summary-json", f"{settings['summaries']}/shard-{shard}-of-{settings['shards']}.json"]
    code, tail, summary = _cli(settings, *args)
    _check_exit(f"shard {label}", code, tail)
    # exit 1 is also what Python returns for a crash before the tool started (e.g. `pipeline` not installed for
    # this Python), so only a summary proves the shard really ran
    if summary is None:
        raise AirflowFailException(f"shard {label}: exited {code} without printing a summary:\n" + "\n".join(tail))
    summary.pop("event", None)
    summary.pop("time", None)
    if code == EXIT_ROWS_NOT_SENT:
        not_sent = {status: n for status, n in summary["counts"].items() if status in NOT_SENT and n}
        log.warning("shard %s finished, but some rows were not sent: %s", label, not_sent)
    return summary


@task(trigger_rule="all_done")
def merge(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Combine the shard results into the campaign's results file."""
    if settings is None:  # validate failed, so no shard ran in this run: there is nothing new to merge
        raise AirflowSkipException("validate did not succeed; nothing was sent, nothing to merge")
    code, tail, _ = _cli(settings, "merge", settings["spec"], *_locations(settings))
    _check_exit("merge", code, tail)
    # merge prints `Results: PATH` last; the path is only used in messages, so a change in that text is harmless
    results = next((line.removeprefix("Results: ") for line in reversed(tail) if line.startswith("Results: ")), None)
    return {"exit_code": code, "results_path": results}


@task
def report(summaries: list[dict[str, Any]], merged: dict[str, Any]) -> dict[str, Any]:
    """Add up the shards; fail the run when rows were not sent (unless fail_on_unsent is false)."""
    summaries = sorted(summaries, key=lambda s: s["shard"])
    counts: collections.Counter[str] = collections.Counter()
    for summary in summaries:
        counts.update(summary["counts"])
    rows = sum(s["rows"] for s in summaries)
    not_sent = {status: counts[status] for status in NOT_SENT if counts[status]}
    totals = {
        "campaign": summaries[0]["campaign"],
        "rows": rows,
        "counts": dict(counts),
        "not_sent": not_sent,
        "results_path": merged["results_path"],
    }
    log.info("campaign %s: %d rows, %s; results: %s", totals["campaign"], rows, dict(counts), merged["results_path"])
    if not not_sent:
        return totals
    by_shard = "; ".join(
        f"{s['shard']}: " + ", ".join(f"{n} {k}" for k, n in s["counts"].items() if k in NOT_SENT and n)
        for s in summaries
        if any(s["counts"].get(k) for k in NOT_SENT)
    )
    message = (
        f"campaign {totals['campaign']}: {sum(not_sent.values())} of {rows} rows not sent "
        f"({', '.join(f'{n} {k}' for k, n in not_sent.items())}; by shard - {by_shard}). "
        f"Results: {merged['results_path']}. Invalid rows: fix the input; failed rows: "
        "`python -m pipeline retry SPEC --shard I/N`; unknown rows: check them before resending."
    )
    if get_current_context()["params"]["fail_on_unsent"]:
        raise AirflowFailException(message)
    log.warning("%s", message)
    return totals


@dag(
    dag_id="sentdm_campaign",
    schedule=None,  # a campaign is sent when someone triggers it; re-triggering resumes, never resends
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["sentdm"],
    doc_md=__doc__,
    params={
        "spec": Param("", type="string", description="job spec; empty: $SENTDM_SPEC or configs/campaign.yaml"),
        "python": Param("", type="string", description="Python with sentdm-batch; empty: $SENTDM_PYTHON or own"),
        # 1024 is Airflow's default limit on the number of mapped task instances (core.max_map_length)
        "shards": Param(3, type="integer", minimum=1, maximum=1024, description="parallel shard tasks (N)"),
        "fail_on_unsent": Param(True, type="boolean", description="fail the run when any row was not sent"),
        "state": Param(
            "",
            type="string",
            description="postgresql:// URL of the state, no password; empty: $SENTDM_STATE or the spec's",
        ),
        "shard_rate": Param(
            "", type="string", description="each shard's rate (--rate), e.g. 2/s; empty: $SENTDM_SHARD_RATE or rate/N"
        ),
        "bucket": Param(
            "",
            type="string",
            description="s3://BUCKET/PREFIX for input, results, summaries; empty: $SENTDM_BUCKET or the spec's",
        ),
    },
)
def sentdm_campaign() -> None:
    settings = validate()
    summaries = run_shard.partial(settings=settings).expand(shard=shard_numbers(settings))
    merged = merge(settings)
    summaries >> merged
    report(summaries, merged)


campaign_dag = sentdm_campaign()
