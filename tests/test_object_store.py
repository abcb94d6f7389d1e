"""Object stores: ``run --input s3://… --out s3://…`` against an S3 server this module starts
(``moto_server`` over HTTP, with credentials checked), compared with the same run on local files.

The server enforces IAM: after the three requests that create the pipeline's user, its policy and
its access key, every request must be signed with that key, so a wrong secret fails as on AWS.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from connectors.storage import Location
from tests.conftest import (
    CliResult,
    MySQLDatabase,
    drop_database,
    make_database,
    run_cli,
    service_missing,
)
from tests.test_inputs import write_input

BUCKET = "aiep"


@dataclass
class S3Server:
    """A running ``moto_server`` and the pipeline user's credentials on it."""

    endpoint: str
    key_id: str
    secret: str

    def env(self, secret: str | None = None) -> dict[str, str]:
        """A run's environment: the standard AWS variables, nothing from this machine's AWS files."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    @functools.cached_property
    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )

    def keys(self, prefix: str) -> dict[str, Any]:
        """Every object under ``prefix``: key → LastModified."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return {item["Key"]: item["LastModified"] for page in pages for item in page.get("Contents", [])}

    def read(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return body


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """``moto_server`` on a free port, IAM enforced after the 3 requests that create the user."""
    import boto3

    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        service_missing(f"{server} is missing: pip install -e '.[dev]' (moto[server])")
    port = _free_port()
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # a connection, not a request: requests count against the 3
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        iam.create_user(UserName="pipeline")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="pipeline", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="pipeline")["AccessKey"]
        server_ = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        server_.client.create_bucket(Bucket=BUCKET)
        yield server_
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def two_databases(mysql_server: tuple[str, int]) -> Iterator[tuple[MySQLDatabase, MySQLDatabase]]:
    """Two fresh MariaDB databases: the local run's audit store and the object-store run's."""
    first, second = make_database(*mysql_server), make_database(*mysql_server)
    try:
        yield first, second
    finally:
        drop_database(first)
        drop_database(second)


def inputs(folder: Path) -> list[Path]:
    """Generated events with images, duplicates and bad lines; a gzip CSV; a Parquet file."""
    events = folder / "events.jsonl"
    made = run_cli("generate", "--events", "200", "--out", events, "--seed", "18", "--images")
    assert made.returncode == 0, made.stderr
    return [events, write_input(folder, "csv.gz", 20), write_input(folder, "parquet", 30)]


def upload(s3: S3Server, folder: Path, prefix: str) -> None:
    client = s3.client
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def local_files(out: Path) -> dict[str, pa.Table]:
    """Every Parquet file of every dataset under a local output: relative path → rows."""
    return {
        str(path.relative_to(out)): pq.read_table(path)
        for dataset in schemas.dataset_names()
        for path in sorted((out / dataset).glob("dt=*/*.parquet"))
    }


def store_files(s3: S3Server, prefix: str) -> dict[str, pa.Table]:
    """The same, of an output in the store."""
    return {
        key[len(prefix) + 1 :]: pq.read_table(io.BytesIO(s3.read(key)))
        for key in sorted(s3.keys(prefix + "/"))
        if key.endswith(".parquet") and key[len(prefix) + 1 :].split("/")[0] in schemas.dataset_names()
    }


def with_sources(table: pa.Table, old: str, new: str) -> pa.Table:
    """``table`` with its inputs' names moved from one folder to another, where a row names them: its
    ``source``, and a dead letter's ``detail`` (a conflicting duplicate names its first copy's)."""
    for column in ("source", "detail"):
        if column in table.column_names:
            at = table.schema.get_field_index(column)
            moved = [None if text is None else text.replace(old, new) for text in table[column].to_pylist()]
            table = table.set_column(at, table.schema.field(at), pa.array(moved, pa.string()))
    return table


def differences(expected: pa.Table, found: pa.Table) -> dict[str, Any]:
    """Each column that differs: its first differing values, for a failure's message."""
    if expected.schema != found.schema:
        return {"schema": (str(expected.schema), str(found.schema))}
    return {
        name: next(
            (a, b) for a, b in zip(expected[name].to_pylist(), found[name].to_pylist(), strict=True) if a != b
        )
        for name in expected.column_names
        if expected[name].to_pylist() != found[name].to_pylist()
    }


def audit_rows(db: MySQLDatabase) -> list[tuple[Any, ...]]:
    return db.query(
        "SELECT event_id, user_id, operation_type, input_hash, output_hash, cost, model, ai_tier,"
        " cost_status, rate_limited, image_hash, hash_mode, HEX(payload_fingerprint), inputs_fingerprint"
        " FROM ai_audit_trail ORDER BY event_id"
    )


def staging_of(result: CliResult) -> Path:
    """The run's staging folder, from the line on stderr that names where its workers spill."""
    found = re.search(r"this run's workers spill batches under (\S+), which each must reach", result.stderr)
    assert found, result.stderr
    return Path(found.group(1)).parent


#: Summary fields that say what a run did (not when, where or under which id).
COUNTED = (
    "events_read", "events_processed", "events_dead_lettered", "duplicates_collapsed", "rate_limited",
    "unpriced_events", "cost_total", "rate_limit_violations", "audit_rows_inserted",
    "dead_letters_by_reason", "inputs_fingerprint", "blank_lines",
)  # fmt: skip


def test_a_run_from_and_into_an_object_store_equals_the_local_run_and_a_rerun_replaces_it(
    tmp_path: Path, s3: S3Server, two_databases: tuple[MySQLDatabase, MySQLDatabase]
) -> None:
    local_db, store_db = two_databases
    source = tmp_path / "src"
    source.mkdir()
    files = inputs(source)
    upload(s3, source, "in")
    patterns = [str(files[0]), str(source / "in.*")]  # a glob: the CSV, then the Parquet file
    urls = ["s3://aiep/in/events.jsonl", "s3://aiep/in/in.*"]
    config = tmp_path / "two-shards.toml"  # fewer, larger files: each costs requests, not bytes
    config.write_text("[pipeline]\nshards = 2\n")

    def run(
        where: list[str], out: str | Path, db: MySQLDatabase, *extra: str | Path, **env: str
    ) -> CliResult:
        result = run_cli(
            "run", "--input", *where, "--out", out, "--audit-db", db.root_url, "--config", config, *extra,
            env=env, out_dir=out if isinstance(out, Path) else None,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result

    local = run(patterns, tmp_path / "out", local_db)
    remote = run(urls, "s3://aiep/out/", store_db, **s3.env())

    # Every dataset, file by file (the same deterministic names), row for row.
    here, there = local_files(tmp_path / "out"), store_files(s3, "out")
    assert set(here) == set(there) and {name.split("/")[0] for name in here} >= {"events", "dead_letter"}
    for name, rows in here.items():
        expected = with_sources(rows, str(source), "s3://aiep/in")
        assert expected.equals(there[name]), (name, differences(expected, there[name]))
    assert audit_rows(local_db) == audit_rows(store_db) and len(audit_rows(store_db)) > 200

    # The summary is in the store; it counts what the local run counted and names the URLs.
    (summary_key,) = [key for key in s3.keys("out/_runs/") if key.endswith(".json")]
    summary = json.loads(s3.read(summary_key))
    assert {k: summary[k] for k in COUNTED} == {k: local.summary()[k] for k in COUNTED}
    assert [{**i, "path": ""} for i in summary["inputs"]] == [
        {**i, "path": ""} for i in local.summary()["inputs"]
    ]
    assert summary["events_dead_lettered"] > 0 and summary["duplicates_collapsed"] > 0
    assert summary["out_dir"] == "s3://aiep/out"
    assert [i["path"] for i in summary["inputs"]] == [
        "s3://aiep/in/events.jsonl", "s3://aiep/in/in.csv.gz", "s3://aiep/in/in.parquet",
    ]  # fmt: skip
    assert f"summary: s3://aiep/out/_runs/{summary['run_id']}.json" in remote.stdout
    # Staging was a local folder, named, and is gone; nothing hidden is left in the store.
    assert not staging_of(remote).exists()
    first_keys = s3.keys("out/")
    assert not [key for key in first_keys if "/." in key], "a temporary object was left behind"

    # What a killed run would leave, and a file an earlier run of these inputs wrote that this
    # rerun will not write again: the rerun removes them.
    fingerprint = summary["inputs_fingerprint"]
    client = s3.client
    stale = f"out/events/dt=2025-07-01/part-{fingerprint}-9999-20250701T000000.parquet"
    left = [
        "out/events/dt=2025-07-01/.part-x.parquet.123-abcdef01.tmp",
        "out/_runs/.20250101T000000Z-dead.json.123-abcdef01.tmp",
    ]
    for key in [stale, *left]:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"PAR1")

    again = run(urls, "s3://aiep/out", store_db, "--staging-dir", tmp_path / "shared", **s3.env())
    assert staging_of(again).parent.parent == tmp_path / "shared"  # there, in a folder of its output
    assert not any((tmp_path / "shared").iterdir())
    second_keys = s3.keys("out/")
    parts = {key for key in first_keys if key.endswith(".parquet")}
    assert {key for key in second_keys if key.endswith(".parquet")} == parts  # replaced, not doubled
    assert all(second_keys[key] > first_keys[key] for key in parts)  # each one written again
    assert not {stale, *left} & set(second_keys)
    rewritten = store_files(s3, "out")
    assert rewritten.keys() == there.keys() and all(rewritten[name].equals(there[name]) for name in there)
    assert audit_rows(store_db) == audit_rows(local_db)
    assert len([key for key in second_keys if key.startswith("out/_runs/") and key.endswith(".json")]) == 2

    # The secret went nowhere: not in what the runs printed, nor in what they wrote.
    written = b"".join(s3.read(key) for key in second_keys if key.endswith(".json"))
    for text in (remote.stdout, remote.stderr, again.stdout, again.stderr, written.decode()):
        assert s3.secret not in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give the audit store with --audit-db URL"),
        (["--audit-db", "sqlite:///a.sqlite", "--validate"], "--validate reads a local DIR"),
        (["--audit-db", "sqlite:///a.sqlite", "--engine", "bytewax"], "are for --engine beam"),
    ],
)
def test_what_an_object_store_output_cannot_do_is_refused_in_one_line(
    s3: S3Server, extra: list[str], message: str
) -> None:
    result = run_cli(
        "run", "--input", "s3://aiep/in/x.jsonl", "--out", "s3://aiep/refused", *extra, env=s3.env()
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert message in line
    assert not s3.keys("refused/")


@pytest.mark.parametrize("where", ["--input", "--out"])
def test_a_url_holding_credentials_is_refused_without_showing_them(
    tmp_path: Path, s3: S3Server, where: str
) -> None:
    url = "s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@aiep/x.jsonl"  # a '/' and a '+', as AWS secrets hold
    flags = {"--input": str(tmp_path / "x.jsonl"), "--out": str(tmp_path / "out"), where: url}
    result = run_cli(
        "run", *[part for flag, value in flags.items() for part in (flag, value)],
        "--audit-db", f"sqlite:///{tmp_path / 'a.sqlite'}", "--no-embeddings", "--no-moderation",
    )  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "holds credentials" in line and "s3://AKIAEXAMPLE:***@aiep/x.jsonl" in line
    assert "wJalr" not in result.stdout + result.stderr


def test_a_wrong_secret_key_fails_in_one_line_that_does_not_show_it(tmp_path: Path, s3: S3Server) -> None:
    wrong = "WrongSecretKeyForTheTest0123456789abcdef"
    for out in ("s3://aiep/denied", tmp_path / "out"):  # the output refused; then the input
        result = run_cli(
            "run", "--input", "s3://aiep/in/events.jsonl", "--out", out,
            "--audit-db", f"sqlite:///{tmp_path / 'audit.sqlite'}", env=s3.env(secret=wrong),
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert re.search(r"SIGNATURE_DOES_NOT_MATCH|ACCESS_DENIED", line), line
        assert wrong not in result.stdout + result.stderr and s3.secret not in result.stderr
    assert not s3.keys("denied/")


def test_a_second_run_into_an_object_store_output_refuses_while_one_holds_it(
    s3: S3Server, mysql_db: MySQLDatabase
) -> None:
    from connectors.storage import Location
    from pipelines.batch_run import output_lock

    with output_lock(Location.of("s3://aiep/busy"), mysql_db.root_url):  # as a running run holds it
        result = run_cli(
            "run", "--input", "s3://aiep/in/events.jsonl", "--out", "s3://aiep/busy",
            "--audit-db", mysql_db.root_url, "--no-embeddings", "--no-moderation", env=s3.env(),
        )  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: another run is writing to s3://aiep/busy")
    assert not s3.keys("busy/")


def test_images_resolve_against_the_inputs_folder_in_the_store(
    s3: S3Server, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from connectors import storage
    from connectors.images import image_loader, image_location
    from transforms.dead_letter import ContractViolation, Reason

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    storage._filesystem.cache_clear()  # made in this environment, and forgotten after the test
    request.addfinalizer(storage._filesystem.cache_clear)
    s3.client.put_object(Bucket=BUCKET, Key="pics/in/images/a.png", Body=png_bytes)
    s3.client.put_object(Bucket=BUCKET, Key="pics/secret.png", Body=png_bytes)
    load = image_loader("s3://aiep/pics/in", max_bytes=len(png_bytes))
    assert load("images/a.png") == load("images/../images/a.png") == png_bytes
    # As the moderation stage reads an image again: by the folder and name validation resolved.
    where = image_location("s3://aiep/pics/in", "images/../images/a.png")
    assert where == "s3://aiep/pics/in/images/a.png"
    assert image_loader(where.rsplit("/", 1)[0], len(png_bytes))(where.rsplit("/", 1)[1]) == png_bytes
    cases = {
        "../secret.png": Reason.PATH_OUTSIDE_INPUT,
        "images/../../secret.png": Reason.PATH_OUTSIDE_INPUT,
        "/pics/secret.png": Reason.PATH_OUTSIDE_INPUT,
        "images/b.png": Reason.IMAGE_NOT_FOUND,
        "images/": Reason.IMAGE_NOT_FOUND,
    }
    for relative, reason in cases.items():
        with pytest.raises(ContractViolation) as refused:
            load(relative)
        assert refused.value.reason == reason, relative
    with pytest.raises(ContractViolation) as large:
        image_loader("s3://aiep/pics/in", max_bytes=len(png_bytes) - 1)("images/a.png")
    assert large.value.reason == Reason.IMAGE_TOO_LARGE


@pytest.mark.parametrize(
    "pattern", ["**", "in/**", "in/**/*.jsonl", "in/*/*.jsonl", "in/a/*", "**/b/*.jsonl", "in/[ab]/x?.jsonl"]
)
def test_a_listing_matches_what_glob_matches(tmp_path: Path, pattern: str) -> None:
    """``Location.files`` (the listing an object-store input goes through, here on a local disk)
    gives exactly ``glob.glob(recursive=True)``'s files, at any depth, hidden names skipped."""
    for name in ["top.jsonl", "in/x1.jsonl", "in/a/x1.jsonl", "in/a/b/x2.jsonl", "in/b/x3.jsonl",
                 "in/a/.hidden.jsonl", "in/.h/x4.jsonl", "in/b/c/d/x5.jsonl"]:  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    place = Location.of(tmp_path)
    listed = [place.relative(info.path) for info in place.files(pattern)]
    expected = sorted(
        str(Path(path).relative_to(tmp_path))
        for path in glob.glob(str(tmp_path / pattern), recursive=True)
        if Path(path).is_file()
    )
    assert listed == expected and expected, pattern
