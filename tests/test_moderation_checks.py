"""The predicates behind the moderation rules (transforms/moderation_checks.py): the checksums
catch what they are designed to catch, and no pattern backtracks catastrophically: hostile inputs
of 100,000 characters, and random long strings of pattern fragments, all return.

Time is never asserted (a loaded machine would make that flaky): an input that backtracked
exponentially would not return at all, and the run would hang here.
"""

from __future__ import annotations

import base64
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.moderation_checks import card_issuer, iban_valid, jwt_header_valid, luhn_valid
from transforms.moderation_patterns import IBAN_LENGTHS
from transforms.moderation_rules import RULES, RuleSet

PEM_BEGIN = "-----" + "BEGIN "


@settings(deadline=None)
@given(digits=st.text(alphabet="0123456789", min_size=12, max_size=18), position=st.integers(0, 17))
def test_luhn_catches_every_single_digit_error(digits: str, position: int) -> None:
    check = next(d for d in "0123456789" if luhn_valid(digits + d))
    number = digits + check
    i = position % len(number)
    wrong = str((int(number[i]) + 1) % 10)
    assert not luhn_valid(number[:i] + wrong + number[i + 1 :])


@settings(deadline=None)
@given(
    country=st.sampled_from(sorted(IBAN_LENGTHS)),
    data=st.data(),
)
def test_an_iban_with_computed_check_digits_is_valid_and_any_other_check_digits_are_not(
    country: str, data: st.DataObject
) -> None:
    bban = data.draw(
        st.text(alphabet="0123456789", min_size=IBAN_LENGTHS[country] - 4, max_size=IBAN_LENGTHS[country] - 4)
    )
    numeric = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    check = f"{98 - numeric % 97:02d}"
    assert iban_valid(country + check + bban)
    other = data.draw(st.integers(2, 98).filter(lambda n: n != int(check)))
    assert not iban_valid(f"{country}{other:02d}{bban}")


# --- Hostile inputs return (no catastrophic backtracking); time is never asserted ---------------

N = 100_000
HOSTILE = {
    "digits": "1" * N,
    "spaced digits": "1 " * (N // 2),
    "dashed digits": "4-" * (N // 2),
    "plus signs": "+1 " * (N // 3),
    "parentheses": "(415) " * (N // 6),
    "PEM headers": PEM_BEGIN * (N // 11),
    "PEM headers with key type": (PEM_BEGIN + "PRIVATE KEY-----\n") * (N // 28),
    "PEM header lines": PEM_BEGIN + "PRIVATE KEY-----\n" + "A: b\n" * (N // 5),
    "at signs": "a@" * (N // 2),
    "a long local part": "a" * N + "@example.com",
    "dotted labels": "x@" + "a." * (N // 2),
    "JWT prefix": "eyJ" + "a" * N,
    "JWT parts": "eyJhbGciOiJub25lIn0." * (N // 20),
    "nested JSON header": "eyJ" + "W1s" * (N // 3) + ".aa.bb",
    "override verbs": "ignore all " * (N // 11),
    "whitespace": "ignore" + " " * N,
    "key prefixes": "sk-ghp_xoxb-AKIA" * (N // 16),
    "secret names": "aws_secret_access_key=" + "a/" * (N // 2),
    "IBAN prefixes": "DE89 " + "AAAA " * (N // 5),
    "SSN fragments": "123-45-" * (N // 7),
    "invisible characters": "x\u200b" * (N // 2),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_inputs_of_100k_characters_return(text: str) -> None:
    (result,) = RuleSet(blocklist=("a", "ignore all")).hits([text])
    assert set(result) <= set(RULES)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "1",
                "0",
                " ",
                "-",
                ".",
                "+",
                "(",
                ")",
                "@",
                "a",
                "Z",
                "eyJ",
                "AKIA",
                "sk-",
                "\n",
                "ignore ",
                "all ",
                "previous ",
                PEM_BEGIN,
                "PRIVATE KEY-----",
                "/",
                "=",
                "_",
            ]
        ),
        min_size=1000,
        max_size=5000,
    )
)
def test_random_long_strings_of_pattern_fragments_return(fragments: list[str]) -> None:
    (result,) = RuleSet(blocklist=("a",)).hits(["".join(fragments)])
    assert set(result) <= set(RULES)


def test_card_issuers_need_both_the_prefix_and_a_length_the_scheme_issues() -> None:
    assert card_issuer("4111111111111111") == "visa"
    assert card_issuer("411111111111111") is None  # Visa issues 13, 16 and 19 digits, not 15
    assert card_issuer("2221000000000009") == "mastercard"
    assert card_issuer("2721000000000004") is None  # past the 2-series range


def test_a_jwt_header_nested_too_deep_for_json_is_not_a_header() -> None:
    deep = base64.urlsafe_b64encode(b'{"a":' + b"[" * 5000).decode().rstrip("=")
    assert not jwt_header_valid(deep)


def test_a_rule_set_survives_pickling_as_engines_ship_it_to_workers() -> None:
    rules = RuleSet(blocklist=("launch codes",))
    copy = pickle.loads(pickle.dumps(rules))
    assert copy == rules and copy.hits(["the LAUNCH codes"]) == [("blocklist",)]
