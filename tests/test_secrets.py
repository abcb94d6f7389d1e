"""A password never shows, however malformed the URL that carries it: redaction hides everything
between the user and the host, and a URL whose password would move the host is refused in one
line instead of connecting somewhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.audit_store import redact, resolve_url
from tests.conftest import run_cli

#: Characters that break a URL when a password holds them raw.
AWKWARD = "@:/%#?&=+ !\\\"'"


@given(st.text(alphabet=st.sampled_from(AWKWARD) | st.characters(codec="utf-8"), min_size=1, max_size=30))
def test_redaction_never_shows_a_raw_password(secret: str) -> None:
    password = f"ZQX{secret}QXZ"  # a marker no other part of the URL holds
    for url in (
        f"mysql+pymysql://app:{password}@db.internal:3306/governance",
        f"mysql+pymysql://app:{password}@db.internal/governance?charset=utf8mb4",
        f"mysql://app:{password}@[::1]:3306/x",
    ):
        shown = redact(url)
        assert "ZQX" not in shown and "QXZ" not in shown, shown
        assert shown.startswith("mysql") and "***" in shown


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql+pymysql://root:Secret@Part2@db:3306/x", "mysql+pymysql://root:***@db:3306/x"),
        ("mysql+pymysql://root:a@:/%#b@db:3306/x", "mysql+pymysql://root:***@db:3306/x"),
        (
            "mysql+pymysql://app@db/x?password=hunter2&charset=utf8mb4",
            "mysql+pymysql://app@db/x?password=***&charset=utf8mb4",
        ),
        ("sqlite:////data/a@b:c/audit.sqlite", "sqlite:////data/a@b:c/audit.sqlite"),
        ("not a url at all", "not a url at all"),
    ],
)
def test_redaction_of_malformed_urls(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_a_raw_at_in_the_password_is_refused_not_sent_to_another_host() -> None:
    with pytest.raises(ValueError, match="percent-encode") as raised:
        resolve_url("mysql+pymysql://root:Secret@Part2@db:3306/x")
    assert "Part2" not in str(raised.value) and "Secret" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://root:Secret@Part2@127.0.0.1:3306/aiep_nowhere",
        "mysql+pymysql://root:a@:/%#b@127.0.0.1:3306/aiep_nowhere",
        "mysql+pymysql://root:Secret.Part2@127.0.0.1:notaport/aiep_nowhere",
        "mysql+pymysql://nobody@127.0.0.1:3306/aiep_nowhere?password=Secret.Part2",
    ],
)
@pytest.mark.parametrize("command", ["run", "db upgrade", "db status"])
def test_a_malformed_url_fails_in_one_line_that_shows_no_part_of_the_password(
    tmp_path: Path, url: str, command: str
) -> None:
    (tmp_path / "in.jsonl").write_text("{}\n")
    args = [*command.split(), "--audit-db", url]
    if command == "run":
        args += ["--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out")]
    result = run_cli(*args)
    assert result.returncode == 1
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything and len(result.stderr.strip().splitlines()) == 1, everything
    for part in ("Secret", "Part2", "a@:", "%#b"):
        assert part not in everything, everything
