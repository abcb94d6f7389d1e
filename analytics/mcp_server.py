"""The MCP server of ``runner.py mcp``: the governance data as tools and resources for assistants.

Built on the official SDK's :class:`~mcp.server.mcpserver.MCPServer` and served over stdio (the
SDK writes only JSON-RPC to stdout; while it serves, stray output goes to stderr). Each tool is a
typed function whose docstring is what the assistant reads; the answers come from
:class:`analytics.governance.GovernanceData`. A question that cannot be answered (a bad argument,
an unknown id, an unreadable store) is a tool error (``is_error``) with one clear line, never a
traceback; passwords never appear in one.

Read-only unless started with ``allow_review``: only ``record_review`` writes, and only then.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

import schemas
from analytics.governance import GROUPINGS, AnswerError, GovernanceData
from analytics.similar import FIELDS
from connectors import review

#: What a tool answers.
AnswerT = TypeVar("AnswerT")

SERVER_NAME = "aiep-governance"
INSTRUCTIONS = (
    "Governance data of an AI content pipeline: costs (exact USD decimals as strings), the audit "
    "trail, moderation decisions, the human-review queue, runs and dead letters. Contents are "
    "named by their SHA-256 hashes; raw prompts and outputs are never returned. Days are UTC, "
    "YYYY-MM-DD. Lists take a limit from 1 to 1000."
)
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)


def _one_of(description: str, values: Any) -> Any:
    """A parameter's description, and its allowed values listed in the schema (checked by the
    answer itself, whose error says what came)."""
    return Field(description=description, json_schema_extra={"enum": list(values)})


Limit = Annotated[int, Field(description="rows to return, 1 to 1000 (a larger value is an error)")]
Decision = Annotated[
    str,
    _one_of("approved, flagged or rejected", review.DECISIONS),
]
ContentHash = Annotated[str, Field(description="a content's SHA-256: 64 lowercase hex digits")]


def answer(question: Callable[[], AnswerT]) -> AnswerT:
    """``question()``, its AnswerError made the tool error the assistant reads."""
    try:
        return question()
    except AnswerError as exc:
        raise ToolError(str(exc)) from None


def build_server(data: GovernanceData) -> MCPServer:
    """The server answering from ``data``: seven tools and three resources."""
    server: MCPServer = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(annotations=READ_ONLY)
    def cost_report(
        since: Annotated[str | None, Field(description="first UTC day, YYYY-MM-DD; none: open")] = None,
        until: Annotated[str | None, Field(description="last UTC day, YYYY-MM-DD; none: open")] = None,
        group_by: Annotated[
            str,
            _one_of("day, tier, operation or model", GROUPINGS),
        ] = "day",
    ) -> dict[str, Any]:
        """Cost of AI usage in USD between two UTC days of event time (both included; all time by
        default), the same figures as `runner.py report`: events, priced and unpriced events and
        cost, grouped by day, tier, operation or model; the total; the top 10 users by cost; models
        with unpriced events; and budget breaches. Costs are exact decimal strings (6 places)."""
        return answer(lambda: data.cost_report(since, until, group_by))

    @server.tool(annotations=READ_ONLY)
    def audit_lookup(
        event_id: Annotated[str | None, Field(description="an event's id")] = None,
        content_hash: Annotated[str | None, Field(description="a content's SHA-256 hash")] = None,
    ) -> dict[str, Any]:
        """Look up one event or one content; give exactly one of event_id or content_hash. For an
        event: its audit-trail row, its row of the events dataset (cost, tier, decision, hashes)
        and the moderation decision of each of its contents (input, output, image). For a content:
        its decision and the events holding it (the first 20, oldest first, and their count).
        Hashes only: raw text is never returned."""
        return answer(lambda: data.audit_lookup(event_id, content_hash))

    @server.tool(annotations=READ_ONLY)
    def review_queue(decision: Decision = "flagged", limit: Limit = 50) -> dict[str, Any]:
        """The human-review queue: moderation decisions of one kind (flagged by default) that no
        human has reviewed yet, oldest first, with their score, categories and when they were
        decided; and how many wait in all."""
        return answer(lambda: data.review_queue(decision, limit))

    @server.tool(annotations=WRITES)
    def record_review(
        content_hash: ContentHash,
        decision: Decision,
        reviewer_id: Annotated[int, Field(description="the reviewer's user id, 1 to 2^63-1")],
    ) -> dict[str, Any]:
        """Record a human reviewer's decision on a content (as `runner.py review` does); a later
        automatic run never overwrites it. Only when the server was started with --allow-review;
        otherwise it is refused. Returns the decision before and after."""
        return answer(lambda: data.record_review(content_hash, decision, reviewer_id))

    @server.tool(annotations=READ_ONLY)
    def similar(
        text: Annotated[str, Field(description="the text to search for")],
        k: Annotated[int, Field(description="matches to return, 1 to 1000")] = 10,
        field: Annotated[
            str,
            _one_of("search prompts, outputs or both", FIELDS),
        ] = "both",
    ) -> dict[str, Any]:
        """Semantic search: the stored prompts and outputs nearest a text by cosine (the
        pipeline's MiniLM embeddings), best first, with event id, user id, field, cosine and
        content hash; the start of the text only where the run was configured to keep it."""
        return answer(lambda: data.similar(text, k, field))

    @server.tool(annotations=READ_ONLY)
    def runs(limit: Limit = 20) -> dict[str, Any]:
        """The latest pipeline runs, newest first: when, engine, events read, processed,
        dead-lettered and collapsed as duplicates, rate-limited, unpriced, total cost, speed,
        dead letters by reason and configuration."""
        return answer(lambda: data.runs(limit))

    @server.tool(annotations=READ_ONLY)
    def dead_letters(
        run_id: Annotated[str | None, Field(description="only this run's inputs' dead letters")] = None,
        reason: Annotated[str | None, Field(description="only this reason code")] = None,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        """Records the pipeline rejected, oldest event time first: source file and line (or
        stream position), the stable reason code and its detail, the event id when it was
        readable; and how many match. The rejected record's bytes are never returned."""
        return answer(lambda: data.dead_letters(run_id, reason, limit))

    _add_resources(server, data)
    return server


def _add_resources(server: MCPServer, data: GovernanceData) -> None:
    folder = Path(schemas.__file__).parent

    @server.resource(
        "aiep://schemas/event",
        name="event contract",
        description="The JSON Schema every input event must satisfy",
        mime_type="application/schema+json",
    )
    def event_contract() -> str:
        return (folder / "event.schema.json").read_text(encoding="utf-8")

    @server.resource(
        "aiep://schemas/datasets",
        name="dataset schemas",
        description="Every Parquet dataset's columns, types and partitioning",
        mime_type="application/json",
    )
    def dataset_schemas() -> str:
        return (folder / "datasets.json").read_text(encoding="utf-8")

    @server.resource(
        "aiep://runs/latest",
        name="latest run summary",
        description="The newest run's summary (_runs/<run_id>.json): counts, cost, configuration",
        mime_type="application/json",
    )
    def latest_run() -> str:
        return answer(data.latest_run_summary)


def serve(data: GovernanceData) -> None:
    """Serve ``data`` over stdio until the client closes the connection."""
    try:
        build_server(data).run("stdio")
    finally:
        data.close()
