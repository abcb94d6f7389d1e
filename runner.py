"""aiep: the command line of the AI content governance pipeline.

    runner.py run --input PATH... --out DIR [--engine beam] [--audit-db URL] [--config FILE]
                  [--no-embeddings] [--no-moderation] [--device auto|cpu|cuda] [--cache PATH|URL]
                  [--staging-dir DIR] [-- BEAM_OPTIONS...]
    runner.py similar --out DIR "TEXT" [--k 10] [--field input|output|both]
    runner.py generate --events N --out FILE [--seed S] [--dup-rate R] [--bad-rate R] [--images]
    runner.py db upgrade|status --audit-db URL
    runner.py review --audit-db URL CONTENT_HASH --decision approved|flagged|rejected --reviewer ID
    runner.py review --audit-db URL --list approved|flagged|rejected [--limit N] [--format table|json]
    runner.py publish --input FILE --to redis://HOST:PORT/DB?stream=NAME
    runner.py sql --out DIR "SELECT …" [--format table|csv|json]
    runner.py report --out DIR [--since DATE] [--until DATE] [--config FILE] [--audit-db URL]
                     [--format table|csv|json] [--top N] [--fail-on-breach]
    runner.py dashboard --out DIR --html FILE [--since DATE] [--until DATE] [--config FILE] [--audit-db URL]
    runner.py validate --out DIR
    runner.py mcp --out DIR [--audit-db URL] [--config FILE] [--allow-review]

Thin over the library: parsing and printing here, everything else in ``pipelines``/``connectors``
(and, for ``generate``, ``loadgen``; for ``validate``, ``analytics.quality``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.summary import RunSummary

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models never come from a hub at run time

PROG = "runner.py"
EXIT_FAILED = 1
EXIT_BAD_FLAGS = 2


#: How the store's URL is given, wherever a command takes one.
_AUDIT_DB_HELP = (
    "sqlite:///PATH or mysql+pymysql://USER@HOST:PORT/DB (password from $AIEP_MYSQL_PASSWORD "
    "or percent-encoded in the URL)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Streaming dataflow pipeline for AI content governance.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="validate, deduplicate, hash, price and rate-limit events from files or a stream, embed "
        "and moderate them, build user features; write Parquet and the audit store",
        usage="%(prog)s --input PATH [PATH ...] --out DIR [--engine {beam}] [--audit-db URL] "
        "[--config FILE] [--no-embeddings] [--no-moderation] [--device {auto,cpu,cuda}] [--cache PATH|URL] "
        "[--no-progress] [--staging-dir DIR] [-- BEAM_OPTIONS ...]\n"
        "       %(prog)s --engine bytewax (--source URL | --input PATH [PATH ...] [--follow]) --out DIR "
        "[--recovery-dir DIR] [--workers N] [--processes P | --process-id I --addresses 'HOST:PORT;...'] "
        "[--metrics-port P] [--until-end] [--image-root DIR] "
        "[--audit-db URL] [--config FILE] [--no-embeddings] [--no-moderation] [--device ...] [--cache ...]",
        description=(
            "Run the pipeline over input files (Beam, the default) or as the stream job (Bytewax: a "
            "Redis stream, files followed as they grow, or files read to their end). Arguments after "
            "`--` are passed to Beam as pipeline options, e.g. `-- --runner=FlinkRunner "
            "--flink_master=host:8081`. With none that choose otherwise, a large input (4 splits per "
            "core or more) runs on one DirectRunner worker process per core, unless a model stage "
            "runs; `-- --direct_num_workers=1` keeps any run in one process."
        ),
        epilog="Exit status: 0 on success (dead letters are data, not failure), and for the stream "
        "job on SIGTERM once it drained; 1 when the run cannot do its job (an input unreadable or "
        "unusable as a whole, unwritable output, an unusable audit store or one that did not keep "
        "rows it was given, a bad config or pricing table, another run holding the output's lock, "
        "an unreachable stream, a recovery store made with other settings, a stream cluster that lost a "
        "process), or with --validate when an expectation fails (after the run's summary); 2 on bad "
        "flags, and for --runner=DaskRunner (Beam 2.77's sends tagged outputs to the wrong consumer).",
    )
    inputs = run.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="JSONL/CSV (optionally .gz) or Parquet files or globs, in order; for beam also objects "
        "(s3://BUCKET/KEY, gs://BUCKET/KEY, globs too); '-' reads JSONL from stdin",
    )
    inputs.add_argument(
        "--source",
        metavar="URL",
        help="a live source (--engine bytewax): redis://HOST:PORT/DB?stream=NAME&group=GROUP, read "
        "through its consumer group, entries acknowledged once every sink holding their results committed",
    )
    run.add_argument(
        "--out",
        required=True,
        type=_run_output,
        metavar="DIR",
        help="output directory: Parquet datasets, audit.sqlite and _runs/<run_id>.json; or, for beam, "
        "an object store (s3://BUCKET/PREFIX or gs://BUCKET/PREFIX; needs --audit-db; credentials and "
        "endpoint from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)",
    )
    run.add_argument(
        "--engine",
        default="beam",
        choices=["beam", "bytewax"],
        help="dataflow engine (default: beam): beam runs bounded files; bytewax runs the stream job "
        "(files, stdin or --source), with event-time windows, late events and crash recovery",
    )
    run.add_argument(
        "--audit-db",
        metavar="URL",
        default=None,
        help="audit store URL (default: sqlite:///<DIR>/audit.sqlite); mysql+pymysql://USER@HOST:PORT/DB "
        "takes its password from $AIEP_MYSQL_PASSWORD or percent-encoded in the URL",
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=None,
        help="TOML file overriding quotas, window, pricing table, hashing mode and batch sizes",
    )
    run.add_argument(
        "--no-embeddings",
        action="store_true",
        help="skip the embedding stage and what needs it (topics, user features); "
        "config: [embeddings] enabled = false",
    )
    run.add_argument(
        "--no-moderation",
        action="store_true",
        help="skip moderation (no decisions: for runs that only account costs, and the spine "
        "benchmark); config: [moderation] enabled = false",
    )
    run.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="where models run; auto (the default) takes a GPU when there is one",
    )
    run.add_argument(
        "--cache",
        metavar="PATH|URL",
        default=None,
        help="embedding cache shared across runs: a SQLite file (default: <DIR>/_cache/embeddings.sqlite) "
        "or redis://HOST:PORT/DB for several workers or machines",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    run.add_argument(
        "--staging-dir",
        type=_staging_dir,
        metavar="DIR",
        help="beam: where spill files go, a folder every worker reaches (default: <DIR>/_staging, or a "
        "local temporary folder when --out is an object store)",
    )
    run.add_argument(
        "--validate",
        action="store_true",
        help="after the run, check DIR with the data-quality suites, as `validate` does; exit 1 "
        "if an expectation fails",
    )
    stream = run.add_argument_group("stream job (--engine bytewax)")
    stream.add_argument(
        "--recovery-dir",
        type=Path,
        metavar="DIR",
        help="Bytewax recovery store, created when missing (default: <DIR>/_recovery/<stream id>); "
        "a restart with the same command resumes from it, with other --processes and --workers too",
    )
    stream.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker threads in each process (default: 1)",
    )
    stream.add_argument(
        "--processes",
        type=int,
        metavar="P",
        help="run the job as a cluster of P local processes of N workers each, talking TCP on free "
        "127.0.0.1 ports; process 0 reads the input and writes the summary; SIGTERM to this process "
        "drains them all; if one dies, the others are stopped and the run exits 1 (the same command "
        "resumes) (default: 1, this process only)",
    )
    stream.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="with --addresses: join a cluster across machines as process I (0-based); every "
        "machine runs the same command with its own I, and each waits until all have joined; "
        "process 0 prepares the output, reads the input, serves --metrics-port, writes the summary "
        "and drains the cluster on SIGTERM; --out and the inputs must be on a filesystem every "
        "machine shares, and --audit-db a MySQL server, not an SQLite file",
    )
    stream.add_argument(
        "--addresses",
        metavar="'HOST:PORT;...'",
        help="with --process-id: every process's HOST:PORT, in process order, separated by ';'; "
        "process I listens on the I-th",
    )
    stream.add_argument(
        "--image-root",
        type=Path,
        metavar="DIR",
        help="with --source: the folder relative image paths resolve against (default: the current one)",
    )
    stream.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve Prometheus metrics on 127.0.0.1:P (/metrics): events in, out and dead-lettered by "
        "reason, source lag, per-stage latency, model batch sizes, cache hit rate, decisions; in a "
        "cluster, process 0 serves them for every process",
    )
    stream.add_argument(
        "--follow",
        action="store_true",
        help="with --input: follow JSONL files and folders as they grow (new lines, new *.jsonl files), "
        "until SIGTERM; a restart resumes where the last snapshot left off",
    )
    stream.add_argument(
        "--until-end",
        action="store_true",
        help="with --source: stop at the stream's last entry at start, as the end of the input "
        "(every window closes); without it the job runs until SIGTERM",
    )
    run.add_argument("engine_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    gen = commands.add_parser(
        "generate",
        help="write realistic synthetic events (JSONL), deterministic for a seed",
        description="Write realistic multimodal AI-generation events with duplicates and bad lines "
        "of every kind, plus <FILE>.manifest.json with the counts a run should report.",
        epilog="Exit status: 0 on success; 1 when a file cannot be written (permissions, a full "
        "disk); 2 on bad flags: a value out of range, --dup-rate + --bad-rate over 1, or an --out "
        "that is a folder or whose folder, manifest or images/ is taken by something else.",
    )
    gen.add_argument("--events", type=int, required=True, metavar="N", help="lines to write")
    gen.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="JSONL file to write (.gz compresses)"
    )
    gen.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    gen.add_argument(
        "--dup-rate",
        type=float,
        default=0.02,
        metavar="R",
        help="fraction of lines that repeat an earlier event_id (default: 0.02)",
    )
    gen.add_argument(
        "--bad-rate",
        type=float,
        default=0.01,
        metavar="R",
        help="fraction of lines that break the contract (default: 0.01)",
    )
    gen.add_argument(
        "--images",
        action="store_true",
        help="give image events real PNG images (files under images/ beside FILE, and inline base64)",
    )
    near = commands.add_parser(
        "similar",
        help="semantic search: the stored prompts and outputs nearest a text, by cosine",
        description="Embed TEXT with the pipeline's model and rank the vectors of <DIR>/embeddings "
        "by cosine (DuckDB's array_cosine_similarity). Prints event_id, user_id, field, cosine and "
        "the start of the text where the run kept it ([embeddings] keep_text_chars), else its hash.",
        epilog="Exit status: 0 on success; 1 when DIR holds no embeddings or the model cannot load; "
        "2 on bad flags.",
    )
    near.add_argument("--out", required=True, type=_local_dir, metavar="DIR", help="a run's output directory")
    near.add_argument("text", metavar="TEXT", help="the text to search for")
    near.add_argument("--k", type=int, default=10, metavar="K", help="matches to print (default: 10)")
    near.add_argument(
        "--field",
        choices=["input", "output", "both"],
        default="both",
        help="search prompts, outputs or both (default: both)",
    )
    near.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model runs (default: auto)",
    )
    db = commands.add_parser(
        "db",
        help="audit-store schema: apply migrations, show the applied version",
        description="Manage the audit store's schema (versioned Alembic migrations in schemas/migrations).",
    )
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    for name, text in (
        ("upgrade", "apply every migration not yet applied (idempotent: a second run changes nothing)"),
        ("status", "show the applied migration version and the newest this code ships"),
    ):
        sub = db_commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("--audit-db", required=True, metavar="URL", help=_AUDIT_DB_HELP)
    _add_review_parser(commands)
    _add_analytics_parsers(commands)
    _add_dashboard_parser(commands)
    _add_validate_parser(commands)
    _add_mcp_parser(commands)
    publish = commands.add_parser(
        "publish",
        help="feed a Redis stream from a JSONL file, one entry per line (demos, tests)",
        description="XADD each non-blank line of FILE (JSONL, or JSONL.gz) to the stream, in order, "
        "as its raw bytes under the field 'event': a line that is not valid JSON or UTF-8 is sent as "
        "it is and becomes a dead letter where the stream is read. Entries go in pipelined batches of "
        "1,000; nothing is retried (a half-sent batch would be sent twice).",
        epilog="Exit status: 0 on success; 1 when FILE cannot be read or the server refuses or cannot "
        "be reached (saying how many entries were added before); 2 on bad flags or a malformed URL.",
    )
    publish.add_argument("--input", required=True, type=Path, metavar="FILE", help="a JSONL file (.gz too)")
    publish.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="redis://[:PASSWORD@]HOST:PORT/DB?stream=NAME (a &group=GROUP is allowed and ignored)",
    )
    return parser


def _run_output(text: str) -> Path | str:
    """``run --out`` (argparse's type): an object-store URL as it is, a local folder as a path."""
    from connectors.storage import is_object_store

    return text if is_object_store(text) else Path(text)


def _staging_dir(text: str) -> Path:
    """``run --staging-dir`` (argparse's type): a folder on a disk, local or shared."""
    from connectors.storage import is_object_store

    if is_object_store(text):
        raise argparse.ArgumentTypeError(
            "spill files are memory-mapped: give a folder on a disk, local or shared"
        )
    return Path(text)


def _local_dir(text: str) -> Path:
    """An analyst command's ``--out`` (argparse's type): a local folder; only ``run`` writes to an
    object store, and these commands read what it wrote from a local copy."""
    from connectors.storage import is_object_store

    if is_object_store(text):
        from connectors.database_url import redact

        raise argparse.ArgumentTypeError(
            f"{redact(text)} is an object store; this command reads a local DIR: copy the outputs "
            "there first (e.g. aws s3 sync)"
        )
    return Path(text)


def _day(text: str) -> Any:
    """A ``--since``/``--until`` date: YYYY-MM-DD (argparse's type)."""
    from analytics.report import utc_day

    try:
        return utc_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_period_flags(parser: argparse.ArgumentParser) -> None:
    """The flags ``report`` and ``dashboard`` share: the period, the budgets' config, the store."""
    parser.add_argument(
        "--out", required=True, type=_local_dir, metavar="DIR", help="a run's output directory"
    )
    parser.add_argument(
        "--since", type=_day, metavar="DATE", help="first UTC day of event time to include (YYYY-MM-DD)"
    )
    parser.add_argument(
        "--until", type=_day, metavar="DATE", help="last UTC day of event time to include (YYYY-MM-DD)"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML file whose [budgets] section gives the budgets"
    )
    parser.add_argument(
        "--audit-db",
        metavar="URL",
        help="the store whose review queue to show (default: <DIR>/audit.sqlite when it exists); "
        + _AUDIT_DB_HELP,
    )


def _add_analytics_parsers(commands: Any) -> None:
    sql = commands.add_parser(
        "sql",
        help="run read-only SQL against DuckDB views of a run's outputs",
        description="Run SQL (queries only) in DuckDB over one view per dataset (events, moderation, "
        "rate_limit_violations, dead_letter, late_events, embeddings, user_features; each with its dt "
        "partition as a DATE) and `runs`, the run summaries. Only files under DIR can be read; a "
        "statement that writes (COPY, CREATE, ATTACH, INSERT, SET, …) is refused before anything runs.",
        epilog="Exit status: 0 on success; 1 when the SQL fails or DIR or a run summary cannot be read; "
        "2 on bad flags or a statement that is not a query.",
    )
    sql.add_argument("--out", required=True, type=_local_dir, metavar="DIR", help="a run's output directory")
    sql.add_argument("query", metavar="SQL", help="one or more statements; the last one's rows are printed")
    sql.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="how to print (default: table)"
    )
    report = commands.add_parser(
        "report",
        help="cost monitoring: cost by day, tier, operation and model; top users; decisions; budgets",
        description="Report, from a run's output directory: cost by day, tier, operation and model; "
        "top users by cost; unpriced events by model; moderation decisions by day and category; the "
        "human-review queue; rate-limit violations; dead letters by reason; the embedding cache's hit "
        "rate; the runs; and budget breaches ([budgets] in --config). Costs are exact decimals.",
        epilog="Exit status: 0 on success; 1 when DIR, a run summary, the config or the audit store "
        "cannot be read, or with --fail-on-breach when a budget is breached; 2 on bad flags.",
    )
    _add_period_flags(report)
    report.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="how to print (default: table)"
    )
    report.add_argument("--top", type=int, default=10, metavar="N", help="top users to list (default: 10)")
    report.add_argument(
        "--fail-on-breach",
        action="store_true",
        help="exit 1 when any budget is breached (for cron and CI); the report is printed first",
    )


def _report_inputs(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The budgets (from --config) and the audit store to read the review queue from."""
    from analytics.report import Budgets
    from connectors.config import load_config

    budgets = Budgets.from_config(load_config(args.config))
    audit_url = args.audit_db
    if audit_url is None and (args.out / "audit.sqlite").is_file():
        audit_url = f"sqlite:///{(args.out / 'audit.sqlite').resolve()}"
    return budgets, audit_url


def _cmd_report(args: argparse.Namespace) -> int:
    if args.top < 1:
        return _bad_flags("report", f"argument --top: must be at least 1; got {args.top}")
    report = _read_report(args, "report", top=args.top)
    if isinstance(report, int):
        return report
    print({"table": report.to_table, "csv": report.to_csv, "json": report.to_json}[args.format](), end="")
    if args.format == "json":
        print()
    breaches = len(report.breaches.rows)
    if breaches:
        print(f"{breaches} budget breach{'es' if breaches > 1 else ''}", file=sys.stderr)
        if args.fail_on_breach:
            return EXIT_FAILED
    return 0


def _read_report(args: argparse.Namespace, command: str, top: int = 10) -> Any:
    """The report the flags of ``_add_period_flags`` ask for (``report`` and ``dashboard``), or the
    exit status after printing why there is none (2: bad flags; 1: an unreadable dir or store)."""
    if args.since and args.until and args.since > args.until:
        return _bad_flags(command, f"--since {args.since} is after --until {args.until}")
    from analytics.report import build_report
    from analytics.views import ViewError
    from connectors import database
    from connectors.database_url import redact

    budgets, audit_url = _report_inputs(args)
    try:
        return build_report(
            args.out, since=args.since, until=args.until, budgets=budgets, audit_url=audit_url, top=top
        )
    except ViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # the audit store's driver, of any kind: one line, redacted
        if audit_url is None or not _is_database_error(exc):
            raise
        print(
            f"error: audit store {redact(audit_url)}: {database.describe_error(exc, audit_url)}",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _is_database_error(exc: BaseException) -> bool:
    import sqlalchemy

    return isinstance(exc, sqlalchemy.exc.SQLAlchemyError | ConnectionError)


def _cmd_sql(args: argparse.Namespace) -> int:
    from analytics.report import Report, Section
    from analytics.views import QueryRefused, ViewError, query

    try:
        columns, rows = query(args.out, args.query)
    except QueryRefused as exc:
        return _bad_flags("sql", str(exc))
    except ViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    result = Report(
        args.out, None, None, {"result": Section("result", "result", tuple(columns), tuple(rows))}
    )
    if args.format == "json":
        print(json.dumps(json.loads(result.to_json())["sections"]["result"]["rows"], indent=2))
    elif args.format == "csv":
        print(result.to_csv().split("\n", 1)[1], end="")
    else:
        print(result.to_table().split("\n", 1)[1], end="")
    return 0


def _add_validate_parser(commands: Any) -> None:
    check = commands.add_parser(
        "validate",
        help="data-quality gates: check an output directory with the Great Expectations suites",
        description="Check every dataset of DIR, file by file, and the conservation of events_read "
        "against each batch run summary, with the Great Expectations suites in schemas/expectations/ "
        "(an ephemeral context, usage analytics off). Prints a line per suite and, for each failed "
        "expectation, its dataset, column, unexpected count and files: never a value of a failing "
        "row. Writes Data Docs HTML to DIR/_quality/index.html.",
        epilog="Exit status: 0 when every expectation holds (a dataset without files has nothing to "
        "check); 1 when an expectation fails (named on stderr), a file or summary cannot be checked "
        "(unreadable, or not of its dataset's schema in datasets.json), or DIR is not a directory; "
        "2 on bad flags.",
    )
    check.add_argument(
        "--out", required=True, type=_local_dir, metavar="DIR", help="a run's output directory"
    )


def _add_mcp_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "mcp",
        help="serve the governance data to AI assistants over MCP (stdio): costs, audit trail, reviews",
        description="Serve a Model Context Protocol server on stdin/stdout for an assistant's client "
        "(e.g. Claude Desktop): tools cost_report, audit_lookup, review_queue, record_review, similar, "
        "runs and dead_letters, and resources for the event contract, the dataset schemas and the "
        "latest run summary. Read-only unless --allow-review. Only JSON-RPC goes to stdout; logs go "
        "to stderr. A bad tool argument is a tool error for the assistant, not an exit.",
        epilog="Exit status: 0 when the client closes the connection; 1 when DIR is not a directory or "
        "the config cannot be read; 2 on bad flags.",
    )
    serve.add_argument(
        "--out", required=True, type=_local_dir, metavar="DIR", help="a run's output directory"
    )
    serve.add_argument(
        "--audit-db",
        metavar="URL",
        help="the audit store to read (default: <DIR>/audit.sqlite when it exists); " + _AUDIT_DB_HELP,
    )
    serve.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML file whose [budgets] section cost_report checks"
    )
    serve.add_argument(
        "--allow-review",
        action="store_true",
        help="let the record_review tool write human decisions to the audit store (default: refused)",
    )


def _cmd_mcp(args: argparse.Namespace) -> int:
    from analytics.governance import GovernanceData
    from analytics.mcp_server import serve

    if not args.out.is_dir():
        print(f"error: no output directory {str(args.out)!r}", file=sys.stderr)
        return EXIT_FAILED
    budgets, audit_url = _report_inputs(args)
    serve(GovernanceData(args.out, audit_url, allow_review=args.allow_review, budgets=budgets))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    return _validate_outputs(args.out)


def _validate_outputs(out_dir: Path) -> int:
    """Run the data-quality suites over ``out_dir``, print the report; 0 if all pass, else 1."""
    from analytics.quality import QualityError, validate

    try:
        result = validate(out_dir)
    except QualityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(result.lines()))
    if result.passed:
        return 0
    failures = result.failures
    shown = "; ".join(failures[:10]) + (f"; and {len(failures) - 10} more" if len(failures) > 10 else "")
    print(f"error: data quality failed ({len(failures)}): {shown}", file=sys.stderr)
    return EXIT_FAILED


def _cmd_publish(args: argparse.Namespace) -> int:
    from connectors.redis_stream import StreamAddress, StreamError, file_lines, publish

    try:
        address = StreamAddress.parse(args.to)
    except StreamError as exc:
        return _bad_flags("publish", str(exc))
    try:
        done = publish(address, file_lines(args.input))
    except StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"published {done.entries:,} entries to stream {address.stream!r}"
        f" (blank lines left out: {done.blank_lines:,}); the stream now holds {done.stream_length:,}"
    )
    return 0


def _add_review_parser(commands: Any) -> None:
    decisions = "{approved,flagged,rejected}"
    review = commands.add_parser(
        "review",
        help="human review of moderation decisions: record a reviewer's decision, list the queue",
        usage=f"%(prog)s --audit-db URL CONTENT_HASH --decision {decisions} --reviewer ID\n"
        f"       %(prog)s --audit-db URL --list {decisions} [--limit N] [--format {{table,json}}]",
        description="Record a human decision on a content (its moderation_decisions row, or a new "
        "pre-emptive one where the pipeline has not decided yet), or list the decisions no human has "
        "reviewed, oldest first. A later automatic run never changes a reviewed row. The store is "
        "upgraded to the newest schema first; a SQLite file that does not exist is an error.",
        epilog="Exit status: 0 on success; 1 when the audit store cannot be opened, upgraded or "
        "written; 2 on bad arguments.",
    )
    review.add_argument(
        "content_hash",
        nargs="?",
        metavar="CONTENT_HASH",
        help="the content's SHA-256, 64 lowercase hex digits",
    )
    review.add_argument("--audit-db", required=True, metavar="URL", help=_AUDIT_DB_HELP)
    review.add_argument("--decision", metavar=decisions, help="the reviewer's decision on CONTENT_HASH")
    review.add_argument("--reviewer", metavar="ID", help="the reviewer's user id (1 to 2^63-1)")
    review.add_argument(
        "--list",
        dest="queue",
        metavar=decisions,
        help="instead, list the unreviewed decisions of this kind, oldest first: content hash, "
        "decision, score, categories, decided at",
    )
    review.add_argument("--limit", metavar="N", help="with --list: at most N rows, 1 to 1000 (default: 100)")
    review.add_argument(
        "--format", metavar="{table,json}", help="with --list: a table (default) or one JSON array"
    )


def _add_dashboard_parser(commands: Any) -> None:
    dashboard = commands.add_parser(
        "dashboard",
        help="write the monitoring dashboard: one self-contained HTML file of `report`'s figures",
        description="Write one HTML file that works offline (every script and style inlined, so it can "
        "be mailed): cost over time by tier and by model, top users, unpriced share, decisions over "
        "time, the human-review queue, rate-limit pressure by tier, dead letters by reason, the "
        "embedding cache hit rate, the runs and the budget breaches. The figures are `report`'s.",
        epilog="Exit status: 0 on success; 1 when DIR, a run summary, the config or the audit store "
        "cannot be read, or FILE cannot be written; 2 on bad flags.",
    )
    _add_period_flags(dashboard)
    dashboard.add_argument(
        "--html", required=True, type=Path, metavar="FILE", help="the HTML file to write (replaced whole)"
    )


def _cmd_dashboard(args: argparse.Namespace) -> int:
    report = _read_report(args, "dashboard")
    if isinstance(report, int):
        return report
    from analytics.dashboard import render_dashboard

    page = render_dashboard(report)
    # Written beside FILE, then renamed over it: a reader never sees half a page.
    partial = args.html.with_name(f".{args.html.name}.partial")
    try:
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, args.html)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        print(f"error: cannot write --html {args.html}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    breaches = len(report.breaches.rows)
    print(f"wrote {args.html} ({len(page.encode()) / 1e6:.1f} MB; budget breaches: {breaches})")
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from connectors import database
    from connectors.database_url import redact

    shown = redact(args.audit_db)
    try:
        engine = database.open_engine(args.audit_db, create=args.db_command == "upgrade")
        if args.db_command == "upgrade":
            done = database.upgrade(engine)
            change = (
                "already up to date"
                if done.before == done.after
                else f"upgraded from {done.before or 'empty'}"
            )
            print(f"{shown}: schema version {done.after} ({change})")
        else:
            before = database.current_version(engine)
            head = database.head_version()
            state = "up to date" if before == head else "needs `db upgrade`"
            print(f"{shown}: schema version {before or 'none'}; newest {head} ({state})")
    except Exception as exc:  # a driver error of any kind: report it in one line, redacted
        print(f"error: audit store {shown}: {database.describe_error(exc, args.audit_db)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from connectors import database
    from connectors.database_url import redact

    try:
        _check_review_arguments(args)
    except ValueError as exc:
        return _bad_flags("review", str(exc))
    try:
        engine = database.open_engine(args.audit_db, create=False)
        database.upgrade(engine)
        if args.queue is not None:
            _print_review_queue(engine, args.queue, int(args.limit or 100), args.format or "table")
        else:
            _record_review(engine, args.content_hash, args.decision, int(args.reviewer))
    except Exception as exc:  # a driver error of any kind: report it in one line, redacted
        shown = redact(args.audit_db)
        print(f"error: audit store {shown}: {database.describe_error(exc, args.audit_db)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _check_review_arguments(args: argparse.Namespace) -> None:
    """ValueError (one line, for exit 2) unless the flags make one of the two uses of ``review``."""
    from connectors import review

    recording = {"CONTENT_HASH": args.content_hash, "--decision": args.decision, "--reviewer": args.reviewer}
    listing = {"--limit": args.limit, "--format": args.format}
    if args.queue is not None:
        given = [flag for flag, value in recording.items() if value is not None]
        if given:
            raise ValueError(f"--list cannot go with {', '.join(given)}: they record a decision")
        _check_flag("--list", review.check_decision, args.queue)
        _check_flag("--limit", review.check_queue_limit, _whole_number("--limit", args.limit or "100"))
        if args.format not in (None, "table", "json"):
            raise ValueError(f"argument --format: must be table or json; got {args.format!r}")
        return
    if args.content_hash is None:
        raise ValueError("give CONTENT_HASH with --decision and --reviewer, or --list DECISION")
    for flag, value in [*recording.items(), *listing.items()]:
        if flag in listing and value is not None:
            raise ValueError(f"{flag} goes with --list, not with CONTENT_HASH")
        if flag in recording and value is None:
            raise ValueError(f"{flag} is required with CONTENT_HASH")
    _check_flag("CONTENT_HASH", review.check_content_hash, args.content_hash)
    _check_flag("--decision", review.check_decision, args.decision)
    _check_flag("--reviewer", review.check_reviewer, _whole_number("--reviewer", args.reviewer))


def _check_flag(flag: str, check: Callable[[object], None], value: object) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise ValueError(f"argument {flag}: {exc}") from None


def _whole_number(flag: str, text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"argument {flag}: must be a whole number; got {text!r}")
    return int(text)


def _record_review(engine: Any, content_hash: str, decision: str, reviewer_id: int) -> None:
    """Record the decision; print one line: the hash, old → new decision, the reviewer."""
    from connectors import review

    before = review.decision_of(engine, content_hash)
    after = review.record_review(engine, content_hash, decision, reviewer_id)
    if before is None:
        note = "; pre-emptive: no automatic decision yet"
    elif before.reviewed_by is not None:
        note = f"; was reviewed by {before.reviewed_by}"
    else:
        note = ""
    old = before.decision if before is not None else "none"
    print(f"{content_hash}: {old} → {after.decision} (reviewer {after.reviewed_by}{note})")


def _print_review_queue(engine: Any, decision: str, limit: int, output: str) -> None:
    """Print the queue, oldest first: a table, or one JSON array (scores as exact decimal strings)."""
    import json

    from connectors import review

    rows = review.review_queue(engine, decision, limit)
    if output == "json":
        print(json.dumps([_queue_entry(row) for row in rows], indent=2))
        return
    width = max([len("categories"), *(len(",".join(row.categories)) for row in rows)])
    print(f"{'content_hash':<64} {'decision':<8} {'score':>5} {'categories':<{width}} decided_at")
    for entry in map(_queue_entry, rows):
        print(
            f"{entry['content_hash']:<64} {entry['decision']:<8} {entry['score'] or '-':>5} "
            f"{','.join(entry['categories']):<{width}} {entry['decided_at'] or '-'}"
        )
    if not rows:
        print(f"(no {decision} decision awaits review)", file=sys.stderr)


def _queue_entry(row: Any) -> dict[str, Any]:
    """A ``ReviewedDecision`` of the queue as ``review --list`` prints it: its automatic decision,
    decided at ``reviewed_at`` (no reviewer yet)."""
    entry = row.to_json()
    entry["decided_at"] = entry.pop("reviewed_at")
    del entry["reviewed_by"]
    return entry


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags give, by field of ``PipelineConfig``; they win over the config file."""
    overrides: dict[str, Any] = {}
    if args.no_embeddings:
        overrides["embeddings"] = False
    if args.no_moderation:
        overrides["moderation"] = False
    if args.device is not None:
        overrides["device"] = args.device
    if args.cache is not None:
        overrides["embedding_cache"] = args.cache
    return overrides


def _cmd_similar(args: argparse.Namespace) -> int:
    from analytics.similar import SearchError, similar
    from models.handler import ModelError

    if args.k < 1:
        print(f"error: --k must be at least 1, got {args.k}", file=sys.stderr)
        return EXIT_BAD_FLAGS
    try:
        matches = similar(args.out, args.text, k=args.k, field=args.field, device=args.device)
    except (SearchError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{'event_id':<24} {'user_id':>20} {'field':<6} {'cosine':>7}  text")
    for match in matches:
        shown = match.text_prefix if match.text_prefix is not None else f"sha256:{match.content_hash}"
        shown = shown.replace("\n", " ")[:80]
        print(f"{match.event_id:<24} {match.user_id:>20} {match.field:<6} {match.cosine:7.4f}  {shown}")
    return 0


def _engine_args(raw: list[str]) -> list[str]:
    return raw[1:] if raw[:1] == ["--"] else raw


def _cmd_stream(args: argparse.Namespace) -> int:
    from connectors.storage import is_object_store
    from pipelines.stream_cluster import run_local_cluster
    from pipelines.stream_job import StreamRequest
    from pipelines.stream_run import run_stream

    if args.staging_dir or any(is_object_store(where) for where in [args.out, *(args.input or ())]):
        print(
            "error: --staging-dir and object-store inputs and outputs are for --engine beam", file=sys.stderr
        )
        return EXIT_BAD_FLAGS
    if args.source and args.input:
        print("error: give --input or --source, not both", file=sys.stderr)
        return EXIT_BAD_FLAGS
    if args.follow and args.source:
        print(
            "error: --follow is for --input files and folders; a --source is followed anyway", file=sys.stderr
        )
        return EXIT_BAD_FLAGS
    if args.until_end and not args.source:
        print("error: --until-end is for --source; files end where they end", file=sys.stderr)
        return EXIT_BAD_FLAGS
    if args.metrics_port is not None and not 1 <= args.metrics_port <= 65535:
        print(f"error: --metrics-port must be 1 to 65535, got {args.metrics_port}", file=sys.stderr)
        return EXIT_BAD_FLAGS
    if not 1 <= args.workers <= 256:
        print(f"error: --workers must be 1 to 256, got {args.workers}", file=sys.stderr)
        return EXIT_BAD_FLAGS
    cluster = _cluster_flags(args)
    if isinstance(cluster, str):
        print(f"error: {cluster}", file=sys.stderr)
        return EXIT_BAD_FLAGS
    if _engine_args(args.engine_args):
        print("error: engine options after `--` are for beam; bytewax takes none", file=sys.stderr)
        return EXIT_BAD_FLAGS
    run = run_local_cluster if (args.processes or 1) > 1 else run_stream
    summary = run(
        StreamRequest(
            out_dir=args.out,
            source=args.source,
            inputs=tuple(args.input or ()),
            audit_url=args.audit_db,
            config_path=args.config,
            recovery_dir=args.recovery_dir,
            workers=args.workers,
            until_end=args.until_end,
            image_root=args.image_root,
            metrics_port=args.metrics_port,
            follow=args.follow,
            processes=args.processes or 1,
            process_id=args.process_id,
            addresses=cluster,
            overrides=_config_overrides(args),
        )
    )
    if summary is None:  # another process of the cluster holds the summary
        print(
            f"process {args.process_id} of {len(cluster)}: done; process 0 wrote the summary", file=sys.stderr
        )
        return 0
    print(json.dumps(summary, indent=2))
    return _validate_outputs(args.out) if args.validate else 0


def _cluster_flags(args: argparse.Namespace) -> tuple[str, ...] | str:
    """The cluster's addresses from --processes, --process-id and --addresses (empty for one
    process), or what is wrong with them."""
    from pipelines.stream_cluster import parse_addresses

    local_stdin = bool(args.input) and "-" in args.input
    if args.processes is not None:
        if args.process_id is not None or args.addresses is not None:
            return "--processes starts a local cluster, --process-id and --addresses join one: not both"
        if not 1 <= args.processes <= 64:
            return f"--processes must be 1 to 64, got {args.processes}"
        if args.processes > 1 and local_stdin:
            return "stdin ('-') is read by one process: not with --processes"
        return ()
    if (args.process_id is None) != (args.addresses is None):
        return "--process-id and --addresses go together: this process's index, and every process's HOST:PORT"
    if args.process_id is None:
        return ()
    try:
        addresses = parse_addresses(args.addresses)
    except ValueError as exc:
        return str(exc)
    if not 0 <= args.process_id < len(addresses):
        last = len(addresses) - 1
        return f"--process-id must be 0 to {last} for {len(addresses)} addresses, got {args.process_id}"
    if local_stdin:
        return "stdin ('-') is read by one process: not with --process-id"
    return addresses


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.batch_run import RunRequest, object_store_needs_audit_db, run_batch
    from pipelines.beam_options import refusal

    if args.engine == "bytewax":
        return _cmd_stream(args)
    for flag in (
        "source",
        "recovery_dir",
        "image_root",
        "metrics_port",
        "processes",
        "process_id",
        "addresses",
    ):
        if getattr(args, flag) is not None:
            print(f"error: --{flag.replace('_', '-')} is for --engine bytewax", file=sys.stderr)
            return EXIT_BAD_FLAGS
    if args.until_end or args.follow or args.workers != 1:
        print("error: --until-end, --follow and --workers are for --engine bytewax", file=sys.stderr)
        return EXIT_BAD_FLAGS

    extra = _engine_args(args.engine_args)
    if extra and args.engine_args[:1] != ["--"]:
        print(f"error: unexpected arguments {extra!r}; engine options go after `--`", file=sys.stderr)
        return EXIT_BAD_FLAGS
    if refused := refusal(extra):
        print(f"error: {refused}", file=sys.stderr)
        return EXIT_BAD_FLAGS
    if not isinstance(args.out, Path) and not args.audit_db:  # an object store
        return _bad_flags("run", object_store_needs_audit_db(args.out))
    if not isinstance(args.out, Path) and args.validate:
        return _bad_flags(
            "run", "--validate reads a local DIR; validate a local copy of an object-store --out"
        )
    request = RunRequest(
        inputs=args.input,
        out_dir=args.out,
        engine=args.engine,
        audit_url=args.audit_db,
        config_path=args.config,
        engine_args=tuple(extra),
        overrides=_config_overrides(args),
        staging_dir=args.staging_dir,
    )
    bar = _ReadingBar() if sys.stderr.isatty() and not args.no_progress else None
    try:
        summary = run_batch(request, on_progress=None if bar is None else bar.update_to)
    finally:
        if bar is not None:
            bar.close()
    _print_summary(summary)
    return _validate_outputs(args.out) if args.validate else 0


class _ReadingBar:
    """The terminal's progress bar of input bytes read, drawn by tqdm on stderr.

    It appears at the engine's first progress report, not at start-up, so that start-up messages
    (a migration notice) print before it rather than into it, however quickly a run goes. It
    always shows its last step (100 % at the end), and is cleared when the run ends. When the
    workers read elsewhere and report nothing here (``done`` is ``None``), it shows only the time
    the run has taken, never a count it does not know.
    """

    def __init__(self) -> None:
        self._bar: Any = None

    def update_to(self, done: int | None, total: int) -> None:
        """Show ``done`` of ``total`` bytes read (``run_batch``'s ``on_progress``)."""
        if self._bar is None:
            from tqdm import tqdm

            columns, lines = _terminal_size(sys.stderr)
            unknown = {"bar_format": "running: {elapsed} (workers elsewhere report no progress)"}
            self._bar = tqdm(
                desc="reading",
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                file=sys.stderr,
                ncols=columns - 1,  # tqdm's own measure leaves the last column free
                nrows=lines - 1,
                **(unknown if done is None else {}),
            )
        bar = self._bar
        if done is None:
            bar.refresh()  # the elapsed time
            return
        bar.total = total
        step = done - bar.n
        # tqdm skips a step smaller than the ones it has drawn; the last one must show.
        if not bar.update(step) and step and done >= total:
            bar.refresh()

    def close(self) -> None:
        """Clear the bar from the terminal (if it was drawn)."""
        if self._bar is not None:
            self._bar.close()


def _terminal_size(stream: Any) -> os.terminal_size:
    """The size of the terminal ``stream`` writes to, or the stdlib's fallback where it reports none.

    A terminal nobody sized (``os.openpty()``, some CI and container terminals) reports 0 x 0,
    from which tqdm would make a bar it never draws.
    """
    size = os.get_terminal_size(stream.fileno())
    return size if size.columns and size.lines else shutil.get_terminal_size()


def _print_summary(summary: RunSummary) -> None:
    out = summary.out_dir  # a local folder or an object-store URL
    print(
        f"run {summary.run_id} finished in {summary.seconds:.1f}s "
        f"({summary.events_per_second or 0:,} events/s)"
    )
    print(
        f"  read {summary.events_read:,} = processed {summary.events_processed:,}"
        f" + dead-lettered {summary.events_dead_lettered:,}"
        f" + duplicates collapsed {summary.duplicates_collapsed:,}"
    )
    print(
        f"  rate-limited {summary.rate_limited:,} events in {summary.rate_limit_violations:,} windows;"
        f" unpriced {summary.unpriced_events:,}; cost ${summary.cost_total}"
    )
    if summary.dead_letters_by_reason:
        reasons = ", ".join(f"{k} {v:,}" for k, v in summary.dead_letters_by_reason.items())
        print(f"  dead letters: {reasons}")
    datasets = "events,rate_limit_violations,dead_letter"
    if summary.config.get("embeddings"):
        looked_up = summary.embedding_cache_hits + summary.embedding_cache_misses
        print(
            f"  embedded {summary.embeddings_written:,} texts: {summary.embedding_cache_hits:,} of"
            f" {looked_up:,} distinct from the cache, {summary.embedding_cache_misses:,} by the model;"
            f" {summary.user_features_written:,} user windows"
        )
        datasets += ",embeddings,user_features"
    if summary.config.get("moderation"):
        print(
            f"  decisions: approved {summary.decisions_approved:,}, flagged {summary.decisions_flagged:,},"
            f" rejected {summary.decisions_rejected:,};"
            f" {summary.moderation_rows_written:,} contents moderated"
        )
        datasets += ",moderation"
    else:
        print("  moderation: off (--no-moderation): no decisions were made")
    print(f"  outputs: {out}/{{{datasets}}}/dt=*/*.parquet")
    print(f"  audit:   {summary.audit_db}")
    print(f"  summary: {out}/_runs/{summary.run_id}.json")


#: The flag that gives each argument of ``generate_events``, to name it in an error.
_GENERATE_FLAGS = {
    "n": "--events",
    "out": "--out",
    "seed": "--seed",
    "dup_rate": "--dup-rate",
    "bad_rate": "--bad-rate",
    "images": "--images",
}


def _cmd_generate(args: argparse.Namespace) -> int:
    from loadgen.generate import ArgumentError, generate_events

    try:
        report = generate_events(
            args.events,
            args.out,
            seed=args.seed,
            dup_rate=args.dup_rate,
            bad_rate=args.bad_rate,
            images=args.images,
        )
    except ArgumentError as exc:  # raised before anything is written
        flags = " and ".join(_GENERATE_FLAGS[name] for name in exc.names)
        noun = "arguments" if len(exc.names) > 1 else "argument"
        return _bad_flags("generate", f"{noun} {flags}: {exc.problem}")
    except OSError as exc:
        where = str(exc.filename or args.out)
        what = f"--out {where}" if where == str(args.out) else f"{where} (for --out {args.out})"
        print(f"error: cannot write {what}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"wrote {report.lines:,} lines to {report.path}: {report.valid_unique:,} valid events, "
        f"{report.exact_duplicates:,} exact and {report.conflicting_duplicates:,} conflicting duplicates, "
        f"{sum(report.bad_by_reason.values()):,} bad lines, {report.images_written} images"
    )
    return 0


def _bad_flags(command: str, message: str) -> int:
    """Report flags that argparse could not check alone: argparse's error line, without usage."""
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return EXIT_BAD_FLAGS


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``runner.py`` and the ``aiep`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Beam logs start-up chatter at WARNING and a failed step's traceback at ERROR; the run
    # reports that failure itself, in one line, so only Beam's own critical errors show.
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    args = _parser().parse_args(argv)
    from connectors.config import ConfigError
    from connectors.inputs import InputError
    from pipelines.batch_run import RunError

    try:
        commands = {
            "run": _cmd_run,
            "generate": _cmd_generate,
            "similar": _cmd_similar,
            "db": _cmd_db,
            "review": _cmd_review,
            "publish": _cmd_publish,
            "sql": _cmd_sql,
            "report": _cmd_report,
            "dashboard": _cmd_dashboard,
            "validate": _cmd_validate,
            "mcp": _cmd_mcp,
        }
        return commands[args.command](args)
    except (RunError, InputError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
