"""Cost (DESIGN.md, stage 8): a dated pricing table, the latest row on or before the event's
date, exact arithmetic and one half-even rounding to 6 places."""

import csv
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import schemas
from transforms.cost import Price, PriceBook, event_cost

PRICING_COLUMNS = [
    "model",
    "effective_from",
    "input_per_1k_usd",
    "output_per_1k_usd",
    "per_image_usd",
]
MAX_COUNT = 2**63 - 1
DAY = date(2024, 6, 1)


def round_half_even_6(exact: Fraction) -> Fraction:
    """Round to a multiple of 10**-6, ties to the even multiple."""
    scaled = exact * 10**6
    whole = scaled.numerator // scaled.denominator
    rest = scaled - whole
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    return Fraction(whole, 10**6)


def expected_cost(price: Price, input_tokens: int, output_tokens: int, images: int) -> Fraction:
    exact = (
        Fraction(input_tokens) * Fraction(price.input_per_1k) / 1000
        + Fraction(output_tokens) * Fraction(price.output_per_1k) / 1000
        + Fraction(images) * Fraction(price.per_image)
    )
    return round_half_even_6(exact)


def price(input_per_1k: str = "0", output_per_1k: str = "0", per_image: str = "0") -> Price:
    return Price("m", DAY, Decimal(input_per_1k), Decimal(output_per_1k), Decimal(per_image))


def row(
    model: str,
    effective_from: str,
    input_per_1k: str = "",
    output_per_1k: str = "",
    per_image: str = "",
) -> dict[str, str]:
    return {
        "model": model,
        "effective_from": effective_from,
        "input_per_1k_usd": input_per_1k,
        "output_per_1k_usd": output_per_1k,
        "per_image_usd": per_image,
    }


#: A USD amount with up to 9 decimals, e.g. 0.000000123 or 12.5.
amounts = st.builds(
    lambda mantissa, scale: Decimal(mantissa).scaleb(-scale),
    st.integers(min_value=0, max_value=10**11),
    st.integers(min_value=0, max_value=9),
)
counts = st.integers(min_value=0, max_value=MAX_COUNT)


@given(amounts, amounts, amounts, counts, counts, counts)
def test_cost_equals_exact_fraction_rounded_once_half_even(
    input_per_1k: Decimal,
    output_per_1k: Decimal,
    per_image: Decimal,
    input_tokens: int,
    output_tokens: int,
    images: int,
) -> None:
    p = Price("m", DAY, input_per_1k, output_per_1k, per_image)
    cost = event_cost(p, input_tokens, output_tokens, images)
    assert isinstance(cost, Decimal)
    assert cost.as_tuple().exponent == -6  # DECIMAL(10,6): always 6 places
    assert Fraction(cost) == expected_cost(p, input_tokens, output_tokens, images)


@given(amounts, counts)
def test_cost_grows_linearly_before_rounding(input_per_1k: Decimal, tokens: int) -> None:
    cost = event_cost(price(input_per_1k=str(input_per_1k)), tokens, 0, 0)
    assert abs(Fraction(cost) - Fraction(tokens) * Fraction(input_per_1k) / 1000) <= Fraction(1, 2 * 10**6)


@pytest.mark.parametrize(
    ("input_tokens", "cost"),
    [
        (1, "0.000002"),  # 0.0000025 is a tie: half-even goes down to 2
        (3, "0.000008"),  # 0.0000075 is a tie: half-even goes up to 8
        (5, "0.000012"),  # 0.0000125 is a tie: half-even goes down to 12
        (1000, "0.002500"),
        (0, "0.000000"),
    ],
)
def test_cost_ties_round_half_even(input_tokens: int, cost: str) -> None:
    result = event_cost(price(input_per_1k="0.0025"), input_tokens, 0, 0)
    assert result == Decimal(cost)
    assert str(result) == cost


def test_cost_is_rounded_once_not_per_part() -> None:
    # 0.0000025 + 0.0000025 = 0.000005 exactly; rounding each part first would give 0.000004.
    assert event_cost(price(input_per_1k="0.0025", output_per_1k="0.0025"), 1, 1, 0) == Decimal("0.000005")
    # 0.0000025 + 0.0000005 = 0.000003 exactly; rounding each part first would give 0.000002.
    assert event_cost(price(input_per_1k="0.0025", per_image="0.0000005"), 1, 0, 1) == Decimal("0.000003")


def test_cost_of_a_priced_text_event() -> None:
    # 1200 * 0.0025 / 1000 + 300 * 0.01 / 1000 = 0.003 + 0.003
    assert event_cost(price(input_per_1k="0.0025", output_per_1k="0.01"), 1200, 300, 0) == Decimal("0.006000")


def test_cost_of_an_image_event_is_per_image() -> None:
    assert event_cost(price(per_image="0.04"), 0, 0, 3) == Decimal("0.120000")


def test_cost_stays_exact_at_the_largest_token_counts() -> None:
    cost = event_cost(price(input_per_1k="0.000000001"), MAX_COUNT, 0, 0)
    # (2**63 - 1) * 1e-9 / 1000 = 9223372.036854775807 -> 9223372.036855
    assert cost == Decimal("9223372.036855")


def test_price_in_force_is_the_latest_row_on_or_before_the_date() -> None:
    book = PriceBook.from_rows(
        [
            row("m", "2024-06-01", "0.005"),
            row("m", "2024-01-01", "0.01"),
            row("m", "2025-01-01", "0.002"),
        ]
    )
    assert book.price_in_force("m", date(2024, 5, 31)).input_per_1k == Decimal("0.01")
    assert book.price_in_force("m", date(2024, 6, 1)).input_per_1k == Decimal("0.005")
    assert book.price_in_force("m", date(2024, 12, 31)).input_per_1k == Decimal("0.005")
    assert book.price_in_force("m", date(2030, 1, 1)).input_per_1k == Decimal("0.002")


def test_effective_from_is_inclusive() -> None:
    book = PriceBook.from_rows([row("m", "2024-01-01", "0.01")])
    assert book.price_in_force("m", date(2024, 1, 1)) is not None
    assert book.price_in_force("m", date(2023, 12, 31)) is None


def test_no_price_before_the_first_row() -> None:
    book = PriceBook.from_rows([row("m", "2024-01-01", "0.01")])
    assert book.price_in_force("m", date(1970, 1, 1)) is None


def test_unknown_model_has_no_price() -> None:
    book = PriceBook.from_rows([row("m", "2024-01-01", "0.01")])
    assert book.price_in_force("other-model", date(2024, 6, 1)) is None
    assert book.price_in_force("M", date(2024, 6, 1)) is None


@given(
    st.lists(st.dates(date(2020, 1, 1), date(2030, 12, 31)), min_size=1, max_size=8, unique=True),
    st.dates(date(2019, 1, 1), date(2031, 12, 31)),
)
def test_price_in_force_matches_latest_date_not_after_the_day(dates: list[date], on: date) -> None:
    book = PriceBook.from_rows([row("m", d.isoformat(), str(i)) for i, d in enumerate(dates)])
    earlier = [d for d in dates if d <= on]
    found = book.price_in_force("m", on)
    if not earlier:
        assert found is None
    else:
        latest = max(earlier)
        assert found is not None
        assert found.effective_from == latest
        assert found.input_per_1k == Decimal(dates.index(latest))


def test_empty_cells_are_zero() -> None:
    book = PriceBook.from_rows([row("embed", "2024-01-01", "0.00002", "", "")])
    p = book.price_in_force("embed", date(2024, 1, 1))
    assert p is not None
    assert (p.input_per_1k, p.output_per_1k, p.per_image) == (Decimal("0.00002"), 0, 0)
    assert event_cost(p, 1000, 500, 2) == Decimal("0.000020")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_per_1k_usd", "abc"),
        ("output_per_1k_usd", "-0.01"),
        ("per_image_usd", "NaN"),
        ("effective_from", "2024-13-01"),
        ("effective_from", ""),
    ],
)
def test_malformed_row_raises_naming_the_row(field: str, value: str) -> None:
    bad = row("broken-model", "2024-01-01", "0.01", "0.02", "")
    bad[field] = value
    rows = [row("ok-model", "2024-01-01", "0.01"), bad]
    with pytest.raises(ValueError, match="row 3") as raised:  # header is line 1
        PriceBook.from_rows(rows)
    assert "broken-model" in str(raised.value)


def test_truncated_csv_row_raises_value_error_naming_the_row(tmp_path: Path) -> None:
    path = tmp_path / "pricing.csv"
    path.write_text(",".join(PRICING_COLUMNS) + "\nok-model,2024-01-01,0.01,0.02,\ncut-short\n")
    with pytest.raises(ValueError, match="row 3") as raised:
        PriceBook.from_rows(schemas.pricing_rows(path))
    assert "cut-short" in str(raised.value)


def test_two_rows_for_one_model_and_date_raise() -> None:
    rows = [row("m", "2024-01-01", "0.01"), row("m", "2024-01-01", "0.02")]
    with pytest.raises(ValueError, match="'m'"):
        PriceBook.from_rows(rows)


def test_one_date_for_two_models_is_fine() -> None:
    book = PriceBook.from_rows([row("a", "2024-01-01", "0.01"), row("b", "2024-01-01", "0.02")])
    assert book.models == ["a", "b"]


def test_shipped_pricing_table_has_the_contract_columns() -> None:
    with (schemas.HERE / "pricing.csv").open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == PRICING_COLUMNS


def test_shipped_pricing_table_loads() -> None:
    book = PriceBook.from_rows(schemas.pricing_rows())
    assert len(book.models) >= 8


def test_shipped_pricing_table_prices_text_and_image_models() -> None:
    rows = schemas.pricing_rows()
    assert len({r["model"] for r in rows}) >= 8
    text_models = {r["model"] for r in rows if r["output_per_1k_usd"] and Decimal(r["output_per_1k_usd"]) > 0}
    image_models = {r["model"] for r in rows if r["per_image_usd"] and Decimal(r["per_image_usd"]) > 0}
    assert text_models
    assert image_models


def test_shipped_pricing_table_gives_every_model_a_price_from_its_first_date() -> None:
    rows = schemas.pricing_rows()
    book = PriceBook.from_rows(rows)
    for model in book.models:
        first = min(date.fromisoformat(r["effective_from"]) for r in rows if r["model"] == model)
        assert book.price_in_force(model, first) is not None
        assert book.price_in_force(model, first - timedelta(days=1)) is None
