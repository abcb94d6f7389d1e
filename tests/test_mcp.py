"""``runner.py mcp``: the MCP server, started as a subprocess and spoken to with the SDK's own stdio
client, against real runs' outputs (the shared analytics run on SQLite; a small run on MariaDB for
the review path). Every figure is checked against ``report`` and the stored rows."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from analytics.report import build_report
from tests.conftest import ROOT, MySQLDatabase, read_dataset, run_cli, run_pipeline

TOOLS = {"cost_report", "audit_lookup", "review_queue", "record_review", "similar", "runs", "dead_letters"}


@dataclass
class Answer:
    """One tool call's result: whether it is an error, and its text (JSON unless an error)."""

    is_error: bool
    text: str

    @property
    def json(self) -> Any:
        assert not self.is_error, self.text
        return json.loads(self.text)


@asynccontextmanager
async def mcp_server(out: Path, *flags: str) -> AsyncIterator[ClientSession]:
    """A ``runner.py mcp --out out flags...`` subprocess and an initialised client session."""
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(ROOT / "runner.py"), "mcp", "--out", str(out), *flags],
        cwd=str(ROOT),
        env={"HF_HUB_OFFLINE": "1"},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> Answer:
    result = await session.call_tool(tool, arguments)
    return Answer(bool(result.is_error), "".join(getattr(block, "text", "") for block in result.content))


def talk(out: Path, *flags: str) -> Callable[[Callable[[ClientSession], Awaitable[None]]], None]:
    """Run a conversation (an async function of the session) with a fresh server."""

    def run(conversation: Callable[[ClientSession], Awaitable[None]]) -> None:
        async def main() -> None:
            async with mcp_server(out, *flags) as session:
                await conversation(session)

        asyncio.run(main())

    return run


@pytest.fixture(scope="module")
def served_out(analytics_out: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared analytics run (the server opens its SQLite store)."""
    out = tmp_path_factory.mktemp("mcp") / "out"
    shutil.copytree(analytics_out, out)
    return out


def _cost_by(out: Path, key: str) -> dict[str, tuple[int, Decimal]]:
    """Events and exact cost per ``key`` value, recomputed from the Parquet rows."""
    found: dict[str, tuple[int, Decimal]] = {}
    for row in read_dataset(out, "events", "event_id"):
        events, cost = found.get(str(row[key]), (0, Decimal(0)))
        found[str(row[key])] = (events + 1, cost + (row["cost"] or Decimal(0)))
    return found


def test_tools_answer_with_the_reports_figures_and_the_stored_rows(
    served_out: Path, analytics_out: Path
) -> None:
    out = served_out
    summary = json.loads(next((out / "_runs").glob("*.json")).read_text())
    report = json.loads(build_report(out, audit_url=f"sqlite:///{out / 'audit.sqlite'}").to_json())[
        "sections"
    ]
    store = sqlite3.connect(out / "audit.sqlite")
    flagged = store.execute(
        "SELECT content_hash FROM moderation_decisions WHERE decision = 'flagged' AND reviewed_by IS NULL "
        "ORDER BY reviewed_at, content_hash"
    ).fetchall()
    embedded = {
        e["event_id"]: e for e in read_dataset(out, "embeddings", "event_id") if e["field"] == "input"
    }
    event = next(
        e
        for e in read_dataset(out, "events", "event_id")
        if e["decision"] == "flagged" and e["input_hash"] and e["event_id"] in embedded
    )
    line = next(line for line in (analytics_out.parent / "events.jsonl").open() if event["event_id"] in line)
    prompt = json.loads(line)["input"]["text"]

    async def conversation(session: ClientSession) -> None:
        listed = await session.list_tools()
        assert {tool.name for tool in listed.tools} == TOOLS
        assert all(tool.description and len(tool.description) > 80 for tool in listed.tools)

        # cost_report() alone: all time by day, exact decimals as text, equal to the Parquet sums.
        by_day = (await call(session, "cost_report")).json
        expected = _cost_by(out, "dt")
        assert {r["day"]: (r["events"], Decimal(r["cost_usd"])) for r in by_day["costs"]} == expected
        assert all(len(r["cost_usd"].split(".")[1]) == 6 for r in by_day["costs"])
        assert by_day["total"]["cost_usd"] == summary["cost_total"]
        assert by_day["top_users"] == report["top_users"]["rows"]
        assert by_day["unpriced_by_model"] == report["unpriced_by_model"]["rows"]
        by_tier = (await call(session, "cost_report", group_by="tier")).json["costs"]
        assert {r["ai_tier"]: (r["events"], Decimal(r["cost_usd"])) for r in by_tier} == _cost_by(
            out, "ai_tier"
        )
        day = min(expected)
        one_day = (await call(session, "cost_report", since=day, until=day)).json
        assert [r["day"] for r in one_day["costs"]] == [day]
        assert Decimal(one_day["total"]["cost_usd"]) == expected[day][1]

        # audit_lookup: the audit row, the event's Parquet row (no metadata) and its decisions.
        found = (await call(session, "audit_lookup", event_id=event["event_id"])).json
        audit = dict(
            zip(
                [d[0] for d in store.execute("SELECT * FROM ai_audit_trail LIMIT 0").description],
                store.execute(
                    "SELECT * FROM ai_audit_trail WHERE event_id = ?", (event["event_id"],)
                ).fetchone(),
                strict=True,
            )
        )
        assert found["audit_row"]["id"] == audit["id"]
        assert found["audit_row"]["input_hash"] == audit["input_hash"] == event["input_hash"]
        assert Decimal(found["event"]["cost"]) == event["cost"]
        assert found["event"]["decision"] == "flagged" and "metadata" not in found["event"]
        stored = dict(
            store.execute(
                "SELECT content_hash, decision FROM moderation_decisions WHERE content_hash IN (?, ?)",
                (event["input_hash"], event["output_hash"] or ""),
            ).fetchall()
        )
        assert {d["content_hash"]: d["decision"] for d in found["decisions"].values()} == stored
        # Hashes only: the prompt's text is nowhere in the answer.
        assert prompt not in json.dumps(found, ensure_ascii=False)
        by_hash = (await call(session, "audit_lookup", content_hash=event["input_hash"])).json
        assert event["event_id"] in {e["event_id"] for e in by_hash["events"]}
        assert by_hash["decision"]["decision"] == stored[event["input_hash"]]

        # review_queue: the store's unreviewed flagged decisions, oldest first.
        queue = (await call(session, "review_queue", limit=5)).json
        assert [q["content_hash"] for q in queue["queue"]] == [h for (h,) in flagged[:5]]
        assert queue["awaiting_review"] == len(flagged)

        # runs and dead_letters: the run summary's figures.
        (run,) = (await call(session, "runs")).json["runs"]
        assert (run["run_id"], run["cost_total"], run["events_read"]) == (
            summary["run_id"],
            summary["cost_total"],
            summary["events_read"],
        )
        letters = (await call(session, "dead_letters")).json
        assert letters["total"] == summary["events_dead_lettered"] == len(letters["dead_letters"])
        assert all("raw" not in row for row in letters["dead_letters"])
        for reason, count in summary["dead_letters_by_reason"].items():
            assert (await call(session, "dead_letters", reason=reason, limit=1)).json["total"] == count
        of_run = (await call(session, "dead_letters", run_id=summary["run_id"])).json
        assert of_run["total"] == summary["events_dead_lettered"]

        # similar: a stored prompt finds itself first (one call: it loads the model).
        matches = (await call(session, "similar", text=prompt, k=3)).json["matches"]
        assert len(matches) == 3 and matches[0]["cosine"] > 0.999
        assert matches[0]["content_hash"] == embedded[event["event_id"]]["content_hash"]

        # resources: the contracts, and the latest run summary.
        listed_resources = await session.list_resources()
        assert {str(r.uri) for r in listed_resources.resources} == {
            "aiep://schemas/event",
            "aiep://schemas/datasets",
            "aiep://runs/latest",
        }
        contract = await session.read_resource("aiep://schemas/event")
        assert getattr(contract.contents[0], "text", None) == (ROOT / "schemas/event.schema.json").read_text()
        latest = await session.read_resource("aiep://runs/latest")
        assert json.loads(getattr(latest.contents[0], "text", ""))["run_id"] == summary["run_id"]

        # record_review is refused without --allow-review, and nothing is written.
        refused = await call(
            session, "record_review", content_hash=flagged[0][0], decision="approved", reviewer_id=7
        )
        assert refused.is_error and "--allow-review" in refused.text

        # bad arguments: tool errors with a clear line, never a traceback.
        for tool, arguments, says in [
            ("audit_lookup", {"event_id": "no-such-event"}, "no event with event_id 'no-such-event'"),
            ("audit_lookup", {}, "exactly one of event_id or content_hash"),
            ("runs", {"limit": 10**9}, "limit must be an integer from 1 to 1000; got 1000000000"),
            ("dead_letters", {"limit": 0}, "limit must be an integer from 1 to 1000; got 0"),
            ("review_queue", {"decision": "maybe"}, "decision must be one of approved, flagged, rejected"),
            ("cost_report", {"group_by": "user"}, "group_by must be one of day, tier, operation, model"),
            ("cost_report", {"since": "2025-07-32"}, "since must be a date, YYYY-MM-DD; got '2025-07-32'"),
            ("dead_letters", {"run_id": "no-such-run"}, "no run 'no-such-run'"),
        ]:
            answer = await call(session, tool, **arguments)
            assert answer.is_error and says in answer.text, (tool, answer.text)
            assert "Traceback" not in answer.text

    talk(out)(conversation)
    assert store.execute(
        "SELECT count(*) FROM moderation_decisions WHERE reviewed_by IS NOT NULL"
    ).fetchone() == (0,)


def test_a_review_recorded_over_mcp_survives_a_rerun_on_mariadb(
    mysql_db: MySQLDatabase, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    made = run_cli("generate", "--events", "20", "--out", events, "--seed", "17")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    run_pipeline([events], out, "--audit-db", mysql_db.root_url, moderation=True)
    mysql_db.grant_pipeline_privileges()
    url = mysql_db.url()  # the least-privilege account, its awkward password in the URL
    (content_hash, decision), *_ = mysql_db.query(
        "SELECT content_hash, decision FROM moderation_decisions WHERE reviewed_by IS NULL "
        "ORDER BY decision = 'flagged' DESC, content_hash"
    )
    new_decision = "approved" if decision != "approved" else "rejected"

    async def review(session: ClientSession) -> None:
        recorded = (
            await call(
                session, "record_review", content_hash=content_hash, decision=new_decision, reviewer_id=42
            )
        ).json
        assert recorded["before"]["decision"] == decision and recorded["before"]["reviewed_by"] is None
        assert recorded["after"]["decision"] == new_decision and recorded["after"]["reviewed_by"] == 42
        outside = await call(
            session, "record_review", content_hash=content_hash, decision="maybe", reviewer_id=42
        )
        assert outside.is_error and "decision must be one of approved, flagged, rejected" in outside.text
        queue = (await call(session, "review_queue", decision=decision, limit=1000)).json["queue"]
        assert content_hash not in {q["content_hash"] for q in queue}

    talk(out, "--audit-db", url, "--allow-review")(review)
    assert mysql_db.query(
        "SELECT decision, reviewed_by FROM moderation_decisions WHERE content_hash = %s", content_hash
    ) == [(new_decision, 42)]

    # A rerun of the pipeline decides every content again, and leaves the human decision alone.
    run_pipeline([events], out, "--audit-db", mysql_db.root_url, moderation=True)
    assert mysql_db.query(
        "SELECT decision, reviewed_by FROM moderation_decisions WHERE content_hash = %s", content_hash
    ) == [(new_decision, 42)]

    # A store that refuses the login: one line naming it, the password hidden.
    wrong = url.replace(f"/{mysql_db.name}", "/no_such_database_here")

    async def refused(session: ClientSession) -> None:
        answer = await call(session, "review_queue")
        assert answer.is_error and "no_such_database_here" in answer.text, answer.text
        assert mysql_db.password not in answer.text and "p%40ss" not in answer.text
        found = await call(session, "audit_lookup", content_hash=content_hash)
        assert found.is_error and mysql_db.password not in found.text

    talk(out, "--audit-db", wrong)(refused)
