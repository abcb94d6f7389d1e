"""Event cost from a dated pricing table, exact in Decimal and rounded once (half-even, 6 places)."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Context, Decimal

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z", re.ASCII)
_AMOUNT = re.compile(r"\d+(\.\d+)?([eE][+-]?\d+)?\Z", re.ASCII)

#: Bounds on a price that keep every event's cost exact in integer arithmetic: a price past
#: them is a typo (or an attack), not a tariff.
PRICE_MAX = Decimal(1_000_000)
PRICE_PLACES = 18

#: DECIMAL(10,6): the audit trail's cost column.
COST_PLACES = 6
COST_MAX = Decimal("9999.999999")
# Wide enough that moving the decimal point of any product of 64-bit counts never rounds.
_WIDE = Context(prec=100)


@dataclass(frozen=True, slots=True)
class Price:
    """One row of the pricing table: USD per 1K input/output tokens and per image."""

    model: str
    effective_from: date
    input_per_1k: Decimal
    output_per_1k: Decimal
    per_image: Decimal
    # The three prices as exact integers in units of 10**-scale USD, so event_cost works on ints.
    scale: int = field(init=False, repr=False, compare=False)
    units: tuple[int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        amounts = (self.input_per_1k, self.output_per_1k, self.per_image)
        scale = max(0, *(-int(a.as_tuple().exponent) for a in amounts))
        object.__setattr__(self, "scale", scale)
        # The wide context: the default one rounds past 28 digits, and these must stay exact.
        object.__setattr__(self, "units", tuple(int(a.scaleb(scale, context=_WIDE)) for a in amounts))


class PriceBook:
    """Prices by model and date; ``price_in_force`` picks the row that applies to an event.

    >>> book = PriceBook.from_rows([
    ...     {"model": "m", "effective_from": "2024-01-01", "input_per_1k_usd": "0.01",
    ...      "output_per_1k_usd": "0.02", "per_image_usd": ""},
    ...     {"model": "m", "effective_from": "2024-06-01", "input_per_1k_usd": "0.005",
    ...      "output_per_1k_usd": "0.01", "per_image_usd": ""}])
    >>> book.price_in_force("m", date(2024, 5, 31)).input_per_1k
    Decimal('0.01')
    >>> book.price_in_force("m", date(2024, 6, 1)).input_per_1k
    Decimal('0.005')
    >>> book.price_in_force("m", date(2023, 12, 31)) is None
    True
    """

    def __init__(self, prices: Iterable[Price]) -> None:
        by_model: dict[str, list[Price]] = {}
        for price in prices:
            by_model.setdefault(price.model, []).append(price)
        self._prices: dict[str, list[Price]] = {}
        self._dates: dict[str, list[date]] = {}
        for model, rows in by_model.items():
            rows.sort(key=lambda p: p.effective_from)
            dates = [p.effective_from for p in rows]
            if len(set(dates)) != len(dates):
                raise ValueError(f"pricing: model {model!r} has two rows with one effective_from")
            self._prices[model] = rows
            self._dates[model] = dates

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, str]]) -> PriceBook:
        """Build from ``pricing.csv`` rows (the header is row 1); an empty cell is 0.

        A bad cell raises ValueError naming its row, column and model; so do two rows for one
        model and date.
        """
        prices = []
        first_row: dict[tuple[str, date], int] = {}
        for row_no, row in enumerate(rows, start=2):
            price = _price(row, row_no)
            key = (price.model, price.effective_from)
            if key in first_row:
                raise ValueError(
                    f"rows {first_row[key]} and {row_no}: model {price.model!r} has two prices "
                    f"from {price.effective_from}"
                )
            first_row[key] = row_no
            prices.append(price)
        return cls(prices)

    @property
    def models(self) -> list[str]:
        """Every model with at least one price row."""
        return sorted(self._prices)

    def price_in_force(self, model: str, on: date) -> Price | None:
        """The row with the latest ``effective_from`` on or before ``on``, else ``None``."""
        dates = self._dates.get(model)
        if dates is None:
            return None
        i = bisect.bisect_right(dates, on)
        return self._prices[model][i - 1] if i else None


def _price(row: Mapping[str, str], row_no: int) -> Price:
    def cell(column: str) -> str:
        value = row.get(column)
        if not isinstance(value, str):
            raise ValueError(f"row {row_no}, column {column}: the cell is missing")
        return value.strip()

    model = cell("model")
    if not model:
        raise ValueError(f"row {row_no}, column model: the model name is empty")

    def fail(column: str, expected: str, detail: str = "") -> ValueError:
        why = f" ({detail})" if detail else ""
        return ValueError(
            f"row {row_no} (model {model!r}), column {column}: {cell(column)!r} is not {expected}{why}"
        )

    try:
        if not _ISO_DATE.match(cell("effective_from")):
            raise ValueError("expected YYYY-MM-DD")
        effective_from = date.fromisoformat(cell("effective_from"))
    except ValueError as exc:
        raise fail("effective_from", "a date (YYYY-MM-DD)", str(exc)) from None
    amounts = []
    for column in ("input_per_1k_usd", "output_per_1k_usd", "per_image_usd"):
        text = cell(column)
        if text and not _AMOUNT.match(text):
            raise fail(column, "an amount in USD (digits, a point, an optional exponent; >= 0)")
        value = Decimal(text) if text else Decimal(0)
        if value > PRICE_MAX or _decimal_places(value) > PRICE_PLACES:
            raise fail(
                column, f"an amount of at most {PRICE_MAX} USD with at most {PRICE_PLACES} decimal places"
            )
        amounts.append(value)
    return Price(model, effective_from, *amounts)


def _decimal_places(value: Decimal) -> int:
    """Places after the point that a digit other than 0 needs (``1.50`` has 1), counted exactly."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: the pattern admits no NaN or Infinity
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing)) if any(digits) else 0


def event_cost(price: Price, input_tokens: int, output_tokens: int, images: int) -> Decimal:
    """Exact cost of one event, rounded once, half-even, to 6 places.

    Computed on integers (prices scaled to whole units of 10**-scale USD), which is exact for any
    token count, so the single rounding at the end is the only one.

    >>> p = Price("m", date(2024, 1, 1), Decimal("0.0025"), Decimal("0.01"), Decimal("0"))
    >>> event_cost(p, 1000, 500, 0)
    Decimal('0.007500')
    >>> event_cost(p, 1, 0, 0)  # 0.0000025 rounds half-even to 0.000002
    Decimal('0.000002')
    """
    per_input, per_output, per_image = price.units
    # In units of 10**-(scale + 3) USD: token prices are per 1,000 tokens.
    exact = input_tokens * per_input + output_tokens * per_output + images * per_image * 1000
    shift = price.scale + 3 - COST_PLACES
    if shift <= 0:
        micros = exact * 10**-shift
    else:
        divisor = 10**shift
        micros, rest = divmod(exact, divisor)
        if 2 * rest > divisor or (2 * rest == divisor and micros & 1):
            micros += 1
    return Decimal(micros).scaleb(-COST_PLACES, context=_WIDE)
