"""JSON from a peer, parsed so that nothing it sends can hurt or surprise us.

A leaf module (it imports only :mod:`edgewire.errors`): the wire codec, the HTTP
inference codec and the management API read peer JSON through :func:`loads_strict`.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from edgewire.errors import ProtocolError, one_line


class _Constant(ValueError):
    """NaN, Infinity or -Infinity met by the strict decoder (its text is the token)."""


def _refuse_constant(token: str) -> NoReturn:
    raise _Constant(token)


#: One decoder for every call: ``json.loads`` with an argument builds a new one each time.
_STRICT = json.JSONDecoder(parse_constant=_refuse_constant)


def loads_strict(raw: bytes | str, *, what: str) -> Any:
    """Parse ``raw`` as JSON; anything a peer can get wrong is a one-line ProtocolError.

    ``what`` names the document in the message ("request", "meta"). Refused:

    - bytes that are not UTF-8, a byte-order mark included (``json.loads`` would
      otherwise guess UTF-16 or UTF-32 and skip a BOM);
    - invalid JSON, and NaN, Infinity and -Infinity, which are not JSON: whatever is
      accepted here can be encoded again with ``allow_nan=False``;
    - nesting deep enough to exhaust the parser's recursion limit;
    - integers past Python's digit limit (``sys.get_int_max_str_digits``), which
      would otherwise take quadratic time to convert.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 (bad byte at {exc.start})") from None
    try:
        return _STRICT.decode(text)
    except _Constant as exc:
        raise ProtocolError(f"{exc} is not a JSON number; {what} values must be finite") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {one_line(exc)}") from None
    except RecursionError:
        raise ProtocolError(f"{what} JSON is nested too deeply") from None
    except ValueError:  # only an integer literal past the digit limit is left
        raise ProtocolError(f"{what} JSON holds an integer with too many digits") from None


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity as None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
