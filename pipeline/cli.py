"""The command line: parses arguments, calls the library, prints reports, and picks the exit code. This is the one
place where errors become messages and exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from pipeline import __version__, errors, objects
from pipeline.campaign import (
    ProgressSink,
    RetrySelection,
    RunOptions,
    RunSummary,
    ValidationReport,
    run_campaign,
    validate_campaign,
)
from pipeline.campaign.plan import format_plan, plan_campaign
from pipeline.merge import merge_shards
from pipeline.progress import BarProgress, JsonProgress, LogProgress, emit_json, format_summary, format_track
from pipeline.report import check_report_path, report_campaign
from pipeline.report.html import write_html
from pipeline.report.text import format_report
from pipeline.sandbox import ENDPOINTS, serve_forever
from pipeline.shard import Shard
from pipeline.spec import LOCATION_KEYS, CampaignSpec, Note, load_spec, parse_rate
from pipeline.webhooks import WEBHOOK_PATH
from pipeline.webhooks.signature import WebhookSecret

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m pipeline` and `sentdm-batch`; returns the process exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors itself and exits 2; --help/--version exit 0
        return int(exc.code) if isinstance(exc.code, int) else errors.EXIT_USAGE
    handler: Handler = args.handler
    as_json = getattr(args, "log_format", "text") == "json"
    try:
        with objects.synced():  # files in object storage: fetched when read, uploaded when the command ends
            return handler(args)
    except errors.PipelineError as exc:
        _report("error", str(exc), exc.exit_code, as_json=as_json)
        return exc.exit_code
    except KeyboardInterrupt:
        _report("error", "interrupted", errors.EXIT_SIGINT, as_json=as_json)
        return errors.EXIT_SIGINT
    except BrokenPipeError:
        # the reader of our output went away (`| head`); say nothing more, and do not fail on the final flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return errors.EXIT_ROWS_NOT_SENT
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug must not look like a result
        message = (
            f"{type(exc).__name__}: {exc}\n"
            "This is a bug in sentdm-batch, not in your spec or data. Please report it to the sentdm-batch "
            "maintainers with the command you ran and this message (leave out any secrets). "
            "Set SENTDM_BATCH_DEBUG=1 to see the traceback."
        )
        _report("internal error", message, errors.EXIT_INTERNAL, as_json=as_json)
        if os.environ.get("SENTDM_BATCH_DEBUG"):
            traceback.print_exc()
        return errors.EXIT_INTERNAL


def _report(kind: str, message: str, exit_code: int, *, as_json: bool) -> None:
    if as_json:
        emit_json(sys.stderr, kind.replace(" ", "_"), message=objects.show(message), exit_code=exit_code)
    else:
        print(f"{kind}: {objects.show(message)}", file=sys.stderr)


_EPILOG = """\
exit codes:
  0    every row sent (validate, --dry-run: every row valid)
  1    finished, but some rows were not sent (or are invalid)
  2    spec, input or usage error, or the campaign is already running: nothing sent
  3    aborted (authentication, service down, TLS or DNS failure, disk full): run again to resume
  4    finished; every row sent or deferred to its sending hours (send.window): run again when they open
  70   internal error (a bug)
  130  interrupted (Ctrl-C); 143: SIGTERM

The job spec reference (every key), the results columns and these codes: README.md, "The job spec".
"""


def _build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Send a templated Sent.dm message to every row of a CSV or Parquet file, exactly once.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"sentdm-batch {__version__}")
    # the global options are accepted before or after the command: the command's copy leaves them unset unless
    # given there, so a value given before the command is kept
    _global_options(parser, default_log_format="text", default_quiet=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    logs = argparse.ArgumentParser(add_help=False)
    _global_options(logs, default_log_format=argparse.SUPPRESS, default_quiet=argparse.SUPPRESS)
    # where the files and the state are, in place of the spec's: one spec for a laptop and a deployment (README,
    # "Running on several machines")
    places = argparse.ArgumentParser(add_help=False)
    places.add_argument("--input", metavar="PATH|URL", help="read the input here instead of input.path")
    places.add_argument("--results", metavar="PATH|URL", help="write the results here instead of output.results")
    places.add_argument("--state", metavar="PATH|URL", help="keep the state here instead of output.state")

    check = commands.add_parser(
        "validate",
        parents=[logs, places],
        epilog=_EPILOG,
        formatter_class=formatter,
        help="read and validate every row; send nothing",
        description="Read the spec and the input and validate every row; print an example payload. Sends nothing; "
        "on v3 it reads the templates from the API when the credentials are set (--offline: no network call).",
    )
    check.add_argument("spec", help="path to the YAML job spec")
    check.add_argument("--output", metavar="FILE", help="write each row's validation outcome (.csv, .parquet, .jsonl)")
    check.add_argument(
        "--offline", action="store_true", help="v3: skip the template check with the API (no network call at all)"
    )
    check.set_defaults(handler=_validate)

    run = commands.add_parser(
        "run",
        parents=[logs, places],
        epilog=_EPILOG,
        formatter_class=formatter,
        help="send the campaign and write the results file",
        description="Validate, send every valid row, and write one results row per input row.",
    )
    run.add_argument("spec", help="path to the YAML job spec")
    run.add_argument("--dry-run", action="store_true", help="do everything except the HTTP requests")
    run.add_argument(
        "--server-dry-run",
        action="store_true",
        help='v3: send every row with "sandbox": true - Sent.dm checks it and sends nothing; results go to '
        "NAME.server-dry-run.EXT",
    )
    run.add_argument(
        "--test-to",
        metavar="NUMBERS",
        help="v3: send the messages of the first valid rows, one per number, to these comma-separated test numbers "
        "instead; results go to NAME.test-send.EXT and nothing of the campaign is marked as sent",
    )
    run.add_argument(
        "--max-messages",
        type=_positive_int,
        metavar="N",
        help="this run may send up to N messages (overrides send.max_messages; above it, nothing is sent)",
    )
    run.add_argument(
        "--wait",
        action="store_true",
        help="send.window: keep running and send each deferred row when its window opens (holding the lock)",
    )
    run.add_argument("--limit", type=_positive_int, metavar="N", help="send at most N rows (a smoke test)")
    run.add_argument("--summary-json", metavar="FILE", help="also write the run summary as JSON to FILE")
    run.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="send only shard I of N (0-based); each shard has its own results file and state, and 1/N of send.rate",
    )
    run.add_argument(
        "--rate", metavar="RATE", help="override send.rate for this run, e.g. 50/s (with --shard: this shard's)"
    )
    run.set_defaults(handler=_run)

    retry = commands.add_parser(
        "retry",
        parents=[logs, places],
        epilog=_EPILOG,
        formatter_class=formatter,
        help="send again the rows whose last outcome was a transient failure",
        description="Resend the campaign's rows whose last outcome was `failed` for a transient reason (429, 503, "
        "408, connection failures), then rewrite the results file. Rows the server acknowledged are never resent.",
    )
    retry.add_argument("spec", help="path to the YAML job spec")
    retry.add_argument(
        "--status",
        default="failed",
        metavar="LIST",
        help="comma-separated statuses to resend: failed, unknown (default: failed)",
    )
    retry.add_argument("--rows", metavar="LIST", help="only these rows (result_row), e.g. 12,40-45")
    retry.add_argument(
        "--include-unknown",
        action="store_true",
        help="also resend `unknown` rows: they may have been delivered, so this can text a person twice",
    )
    retry.add_argument(
        "--include-permanent", action="store_true", help="also resend rows the server refused (4xx, 401/403)"
    )
    retry.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON to FILE")
    retry.add_argument("--shard", type=_shard, metavar="I/N", help="retry within shard I of N")
    retry.add_argument(
        "--max-messages", type=_positive_int, metavar="N", help="resend up to N messages (overrides send.max_messages)"
    )
    retry.add_argument(
        "--delivery-failed",
        action="store_true",
        help="resend the rows whose delivery FAILED (as `track` learnt it) for a reason worth retrying, each under a "
        "new Idempotency-Key; never opted-out or blocked numbers",
    )
    retry.set_defaults(handler=_retry, dry_run=False, server_dry_run=False, limit=None, rate=None, wait=False)

    track = commands.add_parser(
        "track",
        parents=[logs, places],
        epilog=_TRACK_EPILOG,
        formatter_class=formatter,
        help="learn what became of the campaign's messages and add the delivery columns to the results file",
        description="Merge the delivery statuses of the campaign's messages - from the webhook receiver's store "
        "(--events) and/or by asking Sent.dm (--poll, v3) - into its state, and rewrite the results file with "
        "result_delivery_status, _error, _at and _channel.",
    )
    track.add_argument("spec", help="path to the YAML job spec")
    track.add_argument("--events", metavar="FILE", help="the store of `python -m pipeline webhooks`")
    track.add_argument(
        "--poll",
        action="store_true",
        help="v3: GET /v3/messages/{id} for every message without a final status, and once for a failure's reason",
    )
    track.add_argument(
        "--until-final", action="store_true", help="with --poll: poll in rounds until every message is final"
    )
    track.add_argument(
        "--max-wait", type=_duration, default=7200.0, metavar="DURATION", help="with --until-final (default 2h)"
    )
    track.add_argument(
        "--poll-every", type=_duration, default=60.0, metavar="DURATION", help="pause between rounds (default 1m)"
    )
    track.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON to FILE")
    track.add_argument("--shard", type=_shard, metavar="I/N", help="track shard I of N (its state and results file)")
    track.set_defaults(handler=_track)

    plan = commands.add_parser(
        "plan",
        parents=[logs, places],
        epilog=_EPILOG,
        formatter_class=formatter,
        help="what a run would do: rows, checks, suppressed and deferred rows, messages, requests, time; sends nothing",
        description="Read the spec and the input as a run would and say what it would do - rows, valid, invalid, "
        "duplicates, suppressed, deferred now by send.window (with when each time zone's window opens), messages "
        "and requests to send, and how long they take at send.rate and at Sent.dm's plan limits. Sends nothing, "
        "takes no lock and needs no API key.",
    )
    plan.add_argument("spec", help="path to the YAML job spec")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    plan.add_argument("--max-messages", type=_positive_int, metavar="N", help="check against this cap instead")
    plan.set_defaults(handler=_plan)

    merge = commands.add_parser(
        "merge",
        parents=[logs, places],
        epilog=_EPILOG,
        formatter_class=formatter,
        help="combine the results of a sharded run into one results file",
        description="Check that every shard of the campaign has results, then write output.results in input order.",
    )
    merge.add_argument("spec", help="path to the YAML job spec")
    merge.set_defaults(handler=_merge)

    sandbox = commands.add_parser(
        "sandbox",
        help="run the local fake Sent.dm API until Ctrl-C",
        description="Serve a local fake of the Sent.dm API (v1, v2 and v3) on 127.0.0.1; prints its endpoints.",
    )
    sandbox.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    sandbox.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    sandbox.add_argument("--failure-rate", type=float, default=0.0, help="fraction of requests that fail (0-1)")
    sandbox.add_argument("--seed", type=int, help="seed for the injected failures and the v3 messages' fates")
    sandbox.add_argument("--delivery-ms", type=float, default=1000.0, help="v3: time to each message's last status")
    sandbox.add_argument(
        "--delivery-failure-rate", type=float, default=0.05, help="v3: fraction of accepted messages that fail (0-1)"
    )
    sandbox.add_argument("--messages", type=Path, help="v3: SQLite file keeping accepted messages (default: memory)")
    sandbox.add_argument("--webhook-url", help="v3: post status changes there, signed with $SENT_DM_WEBHOOK_SECRET")
    # unset (None) lets each generation answer success its own way: v1 200 JSON, v2 204 empty
    sandbox.add_argument(
        "--empty-success", action="store_true", default=None, help="answer v1 sends too with 204 and no body (like v2)"
    )
    sandbox.set_defaults(handler=_sandbox)

    report = commands.add_parser(
        "report",
        parents=[places],
        help="what happened to a campaign: funnel, reasons, delivery by channel, rate and latency",
        description="Summarise the campaign's results file (output.results) on the terminal, or with --html as one "
        "self-contained HTML file with charts (opens offline; holds no names or numbers). Delivery figures need "
        "the delivery columns `track` adds. Exit 0, or 2 when there is no results file yet.",
    )
    report.add_argument("spec", help="path to the YAML job spec")
    report.add_argument("--html", metavar="FILE", help="write the report as one HTML file (replaced atomically)")
    report.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of text")
    report.set_defaults(handler=_campaign_report)

    webhooks = commands.add_parser(
        "webhooks",
        parents=[logs],
        epilog=_WEBHOOKS_EPILOG,
        formatter_class=formatter,
        help="receive Sent.dm's signed status webhooks into a store, until SIGTERM or Ctrl-C",
        description=f"Serve POST {WEBHOOK_PATH} (register https://YOUR-HOST{WEBHOOK_PATH} in Sent.dm's dashboard) "
        "and GET /healthz. Each delivery's signature is checked with the secret in SENT_DM_WEBHOOK_SECRET "
        "(whsec_...), and the event is committed to the store before it is acknowledged. One receiver serves a "
        "whole account.",
    )
    webhooks.add_argument(
        "--listen",
        type=_host_port,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="address to listen on (default: 127.0.0.1:8080, for a reverse proxy on the same machine; "
        "0.0.0.0:PORT for every interface, [::1]:PORT for IPv6)",
    )
    webhooks.add_argument("--store", required=True, metavar="FILE", help="the SQLite store (created if missing)")
    webhooks.set_defaults(handler=_webhooks)
    return parser


_WEBHOOKS_EPILOG = """\
exit codes:
  0    stopped by SIGTERM or Ctrl-C (SIGINT) after answering the requests in flight
  2    SENT_DM_WEBHOOK_SECRET missing or malformed, the store cannot be opened, or the address cannot be used
  70   internal error (a bug)

The store, the dedupe and ordering rules and deployment (TLS proxy, systemd): README.md, "Webhooks".
"""


_TRACK_EPILOG = """\
exit codes:
  0    every message the campaign sent has a final status (DELIVERED, READ or FAILED)
  2    spec or usage error (e.g. --poll on v1/v2, no state yet), or the campaign is running: nothing learnt
  3    aborted: authentication failed, the service looks down, or the state could not be written
  4    done, but some messages have no final status yet (track again later, or --until-final)
  70   internal error (a bug)
  130  interrupted (Ctrl-C); 143: SIGTERM. What was learnt is kept, and the results file is written

The delivery columns and how a row's status is chosen from its messages: README.md, "Tracking delivery".
"""


def _duration(text: str) -> float:
    """`90s`, `30m`, `2h`, `1h30m` (or plain seconds) -> seconds."""
    import re

    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 2h or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def _global_options(parser: argparse.ArgumentParser, *, default_log_format: object, default_quiet: object) -> None:
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=default_log_format,
        help="json: one JSON object per line (start, progress, summary, errors) for log collectors",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        default=default_quiet,
        help="no progress bar; a progress line every few seconds (the default when stderr is not a terminal)",
    )


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except errors.UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--shard {text!r}: ")) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _local(text: str, option: str) -> Path:
    """A file named on the command line: a path, or a file://, s3://, gs:// or az:// URL (pipeline/objects.py)."""
    try:
        return objects.local_path(text)
    except ValueError as exc:
        raise errors.UsageError(f"{option}: {exc}") from None


def _load(
    path: str, *, as_json: bool = False, offline: bool = False, places: argparse.Namespace | None = None
) -> CampaignSpec:
    """The spec, with its warnings printed. `offline`: the command makes no network call, so the credentials may
    be left unset. `places`: the command's arguments, whose --input, --results and --state replace the spec's."""
    given = {key: getattr(places, option[2:], None) for key, option in LOCATION_KEYS.items()}
    # a path given here is relative to the current folder (the spec's own paths are relative to the spec)
    locations = {key: value if "://" in value else str(Path(value).resolve()) for key, value in given.items() if value}
    spec, warnings = load_spec(path, offline=offline, locations=locations)
    for warning in warnings:
        kind = "note" if isinstance(warning, Note) else "warning"
        if as_json:
            emit_json(sys.stderr, kind, message=objects.show(str(warning)))
        else:
            print(f"{kind}: {objects.show(str(warning))}", file=sys.stderr)
    return spec


def _validate(args: argparse.Namespace) -> int:
    spec = _load(args.spec, as_json=args.log_format == "json", offline=True, places=args)
    output = _local(args.output, "--output") if args.output else None
    report = validate_campaign(spec, output=output, offline=args.offline)
    for warning in report.warnings:
        if args.log_format == "json":
            emit_json(sys.stderr, "warning", message=warning)
        else:
            print(f"warning: {warning}", file=sys.stderr)
    if args.log_format == "json":
        shown = objects.display(spec.input.path)
        emit_json(sys.stdout, "validation", campaign=spec.name, input=shown, **asdict(report))
    else:
        _print_validation(spec, report, sys.stdout)
        if output is not None:
            print(f"Per-row outcome written to {args.output}")
    return errors.EXIT_ROWS_NOT_SENT if report.invalid else errors.EXIT_OK


def _print_validation(spec: CampaignSpec, report: ValidationReport, out: TextIO) -> None:
    print(f"Campaign {spec.name}: {objects.display(spec.input.path)} ({spec.input_format})", file=out)
    width = len(str(report.rows))
    print(f"  rows read   {report.rows:>{width}}", file=out)
    print(f"  valid       {report.valid:>{width}}", file=out)
    print(f"  invalid     {report.invalid:>{width}}", file=out)
    print(f"  duplicates  {report.duplicates:>{width}}", file=out)
    if spec.suppress:
        print(f"  suppressed  {report.suppressed:>{width}}", file=out)
    if report.skipped_lines:
        print(f"  skipped {report.skipped_lines} blank or separator-only line(s) (not rows)", file=out)
    for note in report.notes:
        print(f"Note: {note}", file=out)
    if report.template_check is not None:
        print(f"Template check: {report.template_check}", file=out)
    if report.reasons:
        print("Invalid rows by reason:", file=out)
        for reason in report.reasons:
            rows = ", ".join(map(str, reason.example_rows))
            more = ", ..." if reason.rows > len(reason.example_rows) else ""
            print(f"  {reason.rows:>{width}}  {reason.reason} (rows {rows}{more})", file=out)
    if report.example_payload is not None:
        print("Example payload:", file=out)
        print(json.dumps(report.example_payload, indent=2, ensure_ascii=False), file=out)


def _run(args: argparse.Namespace, retry: RetrySelection | None = None) -> int:
    spec = _load(args.spec, as_json=args.log_format == "json", offline=args.dry_run, places=args)
    progress: ProgressSink
    if args.log_format == "json":
        progress = JsonProgress(sys.stderr)
    elif sys.stderr.isatty() and not args.quiet:
        progress = BarProgress(sys.stderr)
    else:
        progress = LogProgress(sys.stderr)
    if args.rate is not None:
        try:
            parse_rate(args.rate)
        except ValueError as exc:
            raise errors.UsageError(f"--rate: {exc}") from None
    summary_json = _local(args.summary_json, "--summary-json") if args.summary_json else None
    test_to = getattr(args, "test_to", None)
    if test_to is not None and not test_to.strip(" ,"):
        raise errors.UsageError("--test-to needs at least one phone number, e.g. --test-to +14155550123")
    options = RunOptions(
        test_to=tuple(test_to.split(",")) if test_to is not None else (),
        wait=args.wait,
        max_messages=args.max_messages,
        dry_run=args.dry_run,
        server_dry_run=args.server_dry_run,
        limit=args.limit,
        retry=retry,
        shard=args.shard,
        rate=args.rate,
        summary_json=summary_json,
    )
    summary = run_campaign(spec, options, progress=progress)
    if args.log_format == "json":
        emit_json(sys.stdout, "summary", **summary.to_json())
    else:
        print(format_summary(summary))
    if summary_json is not None:
        _write_json(summary_json, summary)
    return _run_exit_code(summary)


def _retry(args: argparse.Namespace) -> int:
    statuses = frozenset(s.strip() for s in args.status.split(",") if s.strip())
    unknown_statuses = statuses - {"failed", "unknown"}
    if not statuses or unknown_statuses:
        raise errors.UsageError(f"--status takes failed and/or unknown, not {args.status!r}")
    if args.include_unknown:
        statuses |= {"unknown"}
    elif "unknown" in statuses:
        raise errors.UsageError(
            "`unknown` rows may already have been delivered; add --include-unknown to resend them anyway"
        )
    if "unknown" in statuses:
        warning = "resending `unknown` rows: each may already have reached its recipient, who may get it twice."
        if args.log_format == "json":
            emit_json(sys.stderr, "warning", message=warning)
        else:
            print(f"warning: {warning}", file=sys.stderr)
    rows = _parse_rows(args.rows) if args.rows else None
    if args.delivery_failed:
        if args.status != "failed" or args.include_unknown or args.include_permanent:
            raise errors.UsageError(
                "--delivery-failed resends rows the server accepted whose delivery failed: it goes with --rows only, "
                "not with --status, --include-unknown or --include-permanent"
            )
        return _run(args, RetrySelection(rows=rows, delivery_failed=True))
    return _run(args, RetrySelection(statuses=statuses, include_permanent=args.include_permanent, rows=rows))


def _parse_rows(text: str) -> frozenset[int]:
    rows: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise errors.UsageError(f"--rows: {part.strip()!r} is not a row number or a range like 40-45") from None
        if low < 1 or high < low:
            raise errors.UsageError(f"--rows: {part.strip()!r} is not a valid range (rows count from 1)")
        rows.update(range(low, high + 1))
    return frozenset(rows)


def _run_exit_code(summary: RunSummary) -> int:
    if summary.interrupted_by == "SIGTERM":
        return errors.EXIT_SIGTERM
    if summary.interrupted_by is not None:
        return errors.EXIT_SIGINT
    if summary.aborted_reason is not None:
        return errors.EXIT_ABORTED
    if summary.dry_run:
        if summary.counts.get("invalid"):
            return errors.EXIT_ROWS_NOT_SENT
        return errors.EXIT_DEFERRED if summary.counts.get("deferred") else errors.EXIT_OK
    if summary.server_dry_run:  # rows the server accepted are `valid`: every row accepted is a success
        refused = sum(n for status, n in summary.counts.items() if status not in ("valid", *_FINE))
        return errors.EXIT_ROWS_NOT_SENT if refused else errors.EXIT_OK
    return _exit_for(summary.counts)


# statuses that are no failure to send: the row repeats another, or its person must not get the message
_FINE = ("duplicate", "suppressed")


def _exit_for(counts: dict[str, int]) -> int:
    """1 when a row is neither sent nor fine (1 wins), 4 when the others only wait for their sending hours, else 0."""
    not_sent = sum(n for status, n in counts.items() if status not in ("sent", "deferred", *_FINE))
    if not_sent:
        return errors.EXIT_ROWS_NOT_SENT
    return errors.EXIT_DEFERRED if counts.get("deferred") else errors.EXIT_OK


def _write_json(path: Path, summary: RunSummary) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise errors.OutputError(
            f"{path}: cannot write the summary: {exc.strerror or exc}", after_sending=True
        ) from None


def _track(args: argparse.Namespace) -> int:
    from pipeline.campaign.track import TrackOptions, track_campaign

    as_json = args.log_format == "json"
    spec = _load(args.spec, as_json=as_json, offline=not args.poll, places=args)
    summary_json = _local(args.summary_json, "--summary-json") if args.summary_json else None

    def on_round(number: int, waiting: int) -> None:
        if as_json:
            emit_json(sys.stderr, "round", round=number, messages=waiting)
        else:
            what = "without a final status or a failure's reason"
            print(f"track: round {number}: asking for {waiting:,} message(s) {what}", file=sys.stderr)

    options = TrackOptions(
        on_round=on_round,
        events=Path(args.events) if args.events else None,
        poll=args.poll,
        until_final=args.until_final,
        max_wait_s=args.max_wait,
        round_pause_s=args.poll_every,
        shard=args.shard,
    )
    summary = track_campaign(spec, options)
    if as_json:
        emit_json(sys.stdout, "track", **summary.to_json())
    else:
        print(format_track(summary))
    if summary_json is not None:
        try:
            summary_json.parent.mkdir(parents=True, exist_ok=True)
            summary_json.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise errors.OutputError(f"{summary_json}: cannot write the summary: {exc.strerror or exc}") from None
    if summary.interrupted_by == "SIGTERM":
        return errors.EXIT_SIGTERM
    if summary.interrupted_by is not None:
        return errors.EXIT_SIGINT
    if summary.aborted_reason is not None:
        return errors.EXIT_ABORTED
    return errors.EXIT_OK if summary.all_final else errors.EXIT_DEFERRED


def _plan(args: argparse.Namespace) -> int:
    spec = _load(args.spec, as_json=args.log_format == "json" or args.json, offline=True, places=args)
    found = plan_campaign(spec, max_messages=args.max_messages)
    if args.json or args.log_format == "json":
        print(json.dumps(found.to_json(), ensure_ascii=False))
    else:
        print(format_plan(found))
    return errors.EXIT_OK


def _merge(args: argparse.Namespace) -> int:
    summary = merge_shards(_load(args.spec, as_json=args.log_format == "json", places=args))
    if args.log_format == "json":
        emit_json(sys.stdout, "merge", **asdict(summary))
    else:
        print(f"Merged {summary.shards} shard(s) of campaign {summary.campaign}: {summary.rows} row(s)")
        for status, n in summary.counts.items():
            print(f"  {status:<13}  {n}")
        print(f"Results: {summary.results_path}")
    return _exit_for(summary.counts)


def _campaign_report(args: argparse.Namespace) -> int:
    spec = _load(args.spec, offline=True, places=args)
    html = _local(args.html, "--html") if args.html else None
    if html is None:
        found = report_campaign(spec)
        print(json.dumps(found.to_json(), ensure_ascii=False) if args.json else format_report(found))
        return errors.EXIT_OK
    check_report_path(spec, html)
    write_html(report_campaign(spec), html)
    print(f"Report: {objects.display(html)}")
    return errors.EXIT_OK


def _sandbox(args: argparse.Namespace) -> int:
    # imported here: only this command builds them
    from pipeline.sandbox.lifecycle import DeliveryOptions
    from pipeline.sandbox.webhook_posts import WebhookTarget

    target = None
    if args.webhook_url:
        if not args.webhook_url.startswith(("http://", "https://")):
            raise errors.UsageError(
                "sandbox: --webhook-url must be an http(s) URL, such as http://127.0.0.1:8080/webhooks/sent"
            )
        target = WebhookTarget(args.webhook_url, WebhookSecret.from_env(os.environ).key)  # exit 2 when unset or bad

    def ready(url: str) -> None:
        print(f"Sandbox listening on {url} (Sent.dm API v1, v2 and v3); Ctrl-C to stop")
        for generation, method, path in ENDPOINTS:
            print(f"  {generation}: {method} {url}{path}")
        sys.stdout.flush()

    try:
        delivery = DeliveryOptions(
            delivery_ms=args.delivery_ms, failure_rate=args.delivery_failure_rate, seed=args.seed or 0
        )
        server = serve_forever(
            host="127.0.0.1",
            port=args.port,
            on_ready=ready,
            latency_ms=args.latency_ms,
            failure_rate=args.failure_rate,
            seed=args.seed,
            empty_success=args.empty_success,
            count_keys=False,  # a long-running server must not grow with every message
            delivery=delivery,
            messages_path=args.messages,
            webhooks=target,
        )
    except ValueError as exc:
        raise errors.UsageError(f"sandbox: {exc}") from None
    except OSError as exc:
        raise errors.UsageError(f"sandbox: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    counts = server.webhook_counts()
    if target is not None and counts is not None:
        scheduled, _delivered, undelivered = counts
        print(f"Webhooks: {scheduled - undelivered} of {scheduled} delivered to {target.where}; {undelivered} not")
    return errors.EXIT_OK


def _webhooks(args: argparse.Namespace) -> int:
    as_json = args.log_format == "json"
    secret = WebhookSecret.from_env(os.environ)  # checked before anything else: a receiver that rejects all is worse
    host, port = args.listen
    store = Path(args.store)

    def log(event: str, fields: Mapping[str, object]) -> None:
        if as_json:
            emit_json(sys.stderr, event, **fields)
            return
        text = " ".join(f"{name}={value}" for name, value in fields.items() if value is not None)
        print(f"webhooks: {event} {text}", file=sys.stderr, flush=True)

    def ready(bound_host: str, bound_port: int) -> None:
        url = f"http://{bound_host}:{bound_port}" if ":" not in bound_host else f"http://[{bound_host}]:{bound_port}"
        if as_json:
            emit_json(sys.stderr, "listening", url=url, path=WEBHOOK_PATH, store=str(store))
        else:
            print(f"Receiving webhooks on {url}{WEBHOOK_PATH} into {store}; SIGTERM or Ctrl-C to stop", file=sys.stderr)
        sys.stderr.flush()

    # imported here: the HTTP server library is only the receiver's, and every other command would pay its import
    from pipeline.webhooks.server import run_receiver

    stats = run_receiver(host=host, port=port, store_path=store, secret=secret, log=log, on_ready=ready)
    fields = {
        "stopped_by": stats.stopped_by,
        "accepted": stats.accepted,
        "unauthorized": stats.unauthorized,
        "malformed": stats.malformed,
        "too_large": stats.too_large,
        "store_errors": stats.store_errors,
        "commits": stats.commits,
    }
    log("stopped", fields)
    return errors.EXIT_OK
