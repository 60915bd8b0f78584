"""The engine's decimal arithmetic, and why no accepted input can make it fail.

An input is a decimal the decoder accepted (shared/PROTOCOL.md): at most 15
digits before the point and 10 after, so at most 25 significant digits at a
scale of at least -10. Operation by operation:

* Sums, differences and products run in ``EXACT`` (64 digits). The product of
  two inputs has at most 50 digits, so it is exact; cash and realized P&L,
  sums of such products, stay exact while under 10^44 (10^14 fills of the
  largest size). Past that they round (``Inexact`` is not trapped): they
  never raise.
* Quotients (average entry, intraday base, ratios) run in ``QUOTIENT``
  (34 digits): they are inexact at any precision, and 34 digits are far
  finer than the 4 to 6 places an event shows. Products of a quantity and a
  quotient round at 64 digits, below anything shown.
* Overflow needs an exponent past ``Emax``, which is ``MAX_EMAX`` (10^18 - 1).
  Every value the engine holds is a sum over the events applied of terms
  below 10^45 (a quantity times a price or an intraday base, which is a
  price less a P&L per share), so it stays below (events applied) x 10^45:
  no number of events that could ever be sent gets near 10^(10^18).
* Division by zero cannot happen: the engine tests every divisor first (the
  new quantity of an add is a same-sign sum of non-zero values; a published
  position of qty 0 is dropped, not divided by; the reference price and the
  cost basis are tested).
* ``quantize`` was the operation that failed (``1e30`` at 4 places needs 35
  digits, more than the old context's 34): it widens its context to the
  value when 64 digits are not enough, so it refuses no finite value.
* NaN and infinities never get in: the decoder refuses them, and the
  operations above make none (a trapped condition raises instead, and none
  of them is reachable).

Whatever still raises (a bug) is contained by the ledger: the user's book is
rolled back and only that publish fails.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

_TRAPS = [decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow]
EXACT = decimal.Context(
    prec=64, rounding=decimal.ROUND_HALF_EVEN, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=_TRAPS
)
QUOTIENT = decimal.Context(
    prec=34, rounding=decimal.ROUND_HALF_EVEN, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=_TRAPS
)

_quantize = EXACT.quantize


def quantize(value: Decimal, exp: Decimal) -> Decimal:
    """``value`` rounded (half even) to the places of ``exp``; never ``-0``, never an error."""
    try:
        rounded = _quantize(value, exp)
    except decimal.InvalidOperation:
        # More digits than EXACT holds (|value| of 10^59 and up at 4 places): as many as the value
        # needs, and one for a carry.
        wide = EXACT.copy()
        wide.prec = max(1, value.adjusted() - exp.adjusted() + 2)
        rounded = wide.quantize(value, exp)
    return rounded if rounded else rounded.copy_abs()  # copy_abs turns -0 into 0
