"""transforms/moderation.py: from scores and rule hits to decisions, per content and per event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

import schemas
from transforms.moderation import (
    ContentVerdicts,
    Scorers,
    Thresholds,
    decide_contents,
    decision_rows,
    event_decisions,
    first_per_content,
    first_seen,
    moderation_table,
    overall_cents,
)

CATEGORIES = ("hate", "harassment", "offensive", "sexual", "sexual_minors", "violence", "self_harm", "nudity")
DEFAULT = Thresholds.of(0.5, 0.85)
STRICT = Thresholds.of(0.3, 0.6)
T0 = datetime(2025, 7, 8, 9, tzinfo=UTC)


def verdicts(
    rows: dict[str, tuple[dict[str, float], tuple[str, ...]]], kind: str = "text"
) -> ContentVerdicts:
    scores = np.full((len(rows), len(CATEGORIES)), np.nan, np.float32)
    for i, (found, _) in enumerate(rows.values()):
        for category, score in found.items():
            scores[i, CATEGORIES.index(category)] = score
    return ContentVerdicts.build(
        list(rows), [kind] * len(rows), CATEGORIES, scores, [hits for _, hits in rows.values()]
    )


def events(*rows: tuple[str | None, str | None, str | None]) -> pa.Table:
    return pa.table(
        {
            "event_time": pa.array(
                [T0 + timedelta(minutes=i) for i in range(len(rows))], pa.timestamp("us", "UTC")
            ),
            "input_hash": pa.array([r[0] for r in rows], pa.string()),
            "output_hash": pa.array([r[1] for r in rows], pa.string()),
            "image_hash": pa.array([r[2] for r in rows], pa.string()),
        }
    )


def test_the_overall_score_is_the_highest_category_rounded_half_up_and_decides_exactly() -> None:
    scores = np.array([[0.1, 0.495], [0.8449, np.nan], [np.nan, np.nan], [1.0, 0.0]], np.float32)
    assert overall_cents(scores).tolist() == [50, 84, 0, 100]
    assert [DEFAULT.decide(c) for c in (0, 49, 50, 84, 85, 100)] == [
        "approved", "approved", "flagged", "flagged", "rejected", "rejected",
    ]  # fmt: skip


def test_rules_set_a_floor_under_the_decision_but_never_move_the_score() -> None:
    found = verdicts(
        {
            "pii": ({"hate": 0.01}, ("pii_email",)),
            "secret": ({}, ("secret_api_key",)),
            "injection": ({"hate": 0.9}, ("prompt_injection",)),
            "blocked": ({"hate": 0.0}, ("blocklist",)),
            "clean": ({"hate": 0.2}, ()),
        }
    )
    decided = decide_contents(found, DEFAULT)
    assert decided.cents.tolist() == [1, 0, 90, 0, 20]
    assert decided.decisions == ["flagged", "flagged", "rejected", "rejected", "approved"]
    assert decided.fired == [
        ("pii_email",),
        ("secret_api_key",),
        ("hate", "prompt_injection"),
        ("blocklist",),
        (),
    ]


@pytest.mark.parametrize(
    ("image_hit", "expected"),
    [
        ("image_undecodable", "flagged"),
        ("image_oversized", "flagged"),
        ("image_bomb", "flagged"),
        ("image_unscanned", "flagged"),
        ("image_blocklisted", "rejected"),
    ],
)
def test_an_image_the_detector_could_not_judge_is_never_approved(image_hit: str, expected: str) -> None:
    decided = decide_contents(verdicts({"img": ({}, (image_hit,))}, kind="image"), DEFAULT)
    assert decided.decisions == [expected] and decided.cents.tolist() == [0]


def test_an_event_takes_the_stricter_of_its_contents_and_strict_users_their_own_thresholds() -> None:
    found = verdicts(
        {
            "calm": ({"violence": 0.05}, ()),
            "edgy": ({"violence": 0.4}, ()),  # approved by default, flagged when strict
            "bad": ({"violence": 0.7}, ()),  # flagged by default, rejected when strict
            "pii": ({}, ("pii_phone",)),
        }
    )
    decided = decide_contents(found, DEFAULT)
    table = events(
        ("calm", "edgy", None),
        ("calm", "edgy", None),
        ("edgy", None, "bad"),
        ("edgy", None, "bad"),
        ("pii", "calm", None),
        (None, None, None),  # no content at all: nothing to object to
    )
    strict = np.array([False, True, False, True, False, False])
    got = event_decisions(table, found.hashes, decided, strict, DEFAULT, STRICT).to_pylist()
    assert got == ["approved", "flagged", "flagged", "rejected", "flagged", "approved"]


def test_an_event_naming_a_content_nobody_decided_is_an_error_not_an_approval() -> None:
    found = verdicts({"a": ({}, ())})
    with pytest.raises(ValueError, match="output_hash"):
        event_decisions(
            events(("a", "ghost", None)),
            found.hashes,
            decide_contents(found, DEFAULT),
            np.array([False]),
            DEFAULT,
            STRICT,
        )


def test_every_rule_and_image_check_sets_a_floor() -> None:
    from transforms.image_checks import IMAGE_REASONS
    from transforms.moderation import FLAGGING_HITS, REJECTING_HITS
    from transforms.moderation_rules import RULES

    assert set(RULES) | set(IMAGE_REASONS) == FLAGGING_HITS | REJECTING_HITS
    assert not FLAGGING_HITS & REJECTING_HITS


def test_the_moderation_dataset_has_a_score_column_for_every_category() -> None:
    from pipelines.moderation import CATEGORIES as SCORED

    assert SCORED == CATEGORIES
    names = schemas.arrow_schema("moderation").names
    assert all(name in names for name in SCORED)


def test_thresholds_must_be_ordered_and_inside_zero_to_one() -> None:
    for flag, reject in ((-0.1, 0.5), (0.6, 0.5), (0.5, 1.01)):
        with pytest.raises(ValueError, match="0 <= flag <= reject <= 1"):
            Thresholds.of(flag, reject)


def test_moderation_rows_keep_one_row_per_content_its_first_seen_and_store_no_text() -> None:
    schema = schemas.arrow_schema("moderation")
    found = verdicts({"h1": ({"hate": 0.91, "offensive": 0.6}, ()), "h2": ({"hate": 0.1}, ("pii_email",))})
    decided = decide_contents(found, DEFAULT)
    table = events(("h1", "h2", None), ("h2", None, None))
    scorers = Scorers(["m", "m"], ["1", "1"], [None, None])
    rows = moderation_table(found, decided, first_seen(table), scorers, schema)
    assert rows.schema == schema
    later = moderation_table(
        found, decided, first_seen(events((None, None, None), ("h2", "h1", None))), scorers, schema
    )
    one = first_per_content(pa.concat_tables([later, rows]))
    assert one.column("content_hash").to_pylist() == ["h1", "h2"]
    assert one.column("first_seen").to_pylist() == [T0, T0]
    assert one.column("score").to_pylist() == [Decimal("0.91"), Decimal("0.10")]
    assert one.column("categories").to_pylist() == [["hate", "offensive"], ["pii_email"]]
    assert one.column("nudity").to_pylist() == [None, None]  # does not apply to a text
    stored = decision_rows(one).to_pylist()
    assert stored[0] == {
        "content_hash": "h1",
        "decision": "rejected",
        "score": Decimal("0.91"),
        "categories": ["hate", "offensive"],
        "scorer": "m",
        "scorer_version": "1",
    }
    assert stored[1]["decision"] == "flagged"
