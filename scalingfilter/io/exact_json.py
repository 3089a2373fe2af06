"""JSON that loses nothing: exact numbers, line surgery, and the JSON-safe form of any record.

- `dumps_exact` / `exact_record` / `JsonNumber`: a number that neither a double nor a 64-bit integer holds
  (`1e999`, a 30-digit integer) is kept as its text and written back as it came;
- `drop_fields_from_line`: a JSONL line without some top-level members, every other member kept as its
  original text (nothing is re-serialised);
- `json_safe`: a rejects entry is always valid JSON, whatever the record held (a decimal as its exact digits
  in a string, binary as a base64 string, a non-finite float as "inf"/"-inf"/"nan", a date or time in ISO
  8601, anything else as its str()).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
from json.decoder import scanstring
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from scalingfilter.io.records import Record


def json_safe(value: Any) -> Any:
    """`value` as something every JSON serialiser holds, losing no information a reader needs: the total
    form of a record for a rejects entry (parquet rows may hold decimals, binary, dates; a JSONL record a
    number beyond a double). Decimals as their exact digits (a string), binary as base64 (standard
    alphabet, padded), non-finite floats as "inf" / "-inf" / "nan", dates and times in ISO 8601, mapping
    keys as strings, numpy values as Python ones, anything else as its str()."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        try:
            return json_safe(value.tolist())
        except Exception:  # a value that claims tolist but cannot: fall through to its text
            pass
    return str(value)


def refuse_json_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class JsonNumber:
    """A JSON number kept as its text, for the numbers neither a double nor a 64-bit integer holds
    (`1e999`, a 30-digit integer): `dumps_exact` writes the text back as it was."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"JsonNumber({self.text!r})"


def _exact_float(text: str) -> float | JsonNumber:
    value = float(text)
    return value if math.isfinite(value) else JsonNumber(text)


def _exact_int(text: str) -> int | JsonNumber:
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 64) else JsonNumber(text)


def exact_record(rec: "Record") -> dict[str, Any]:
    """The record's fields as they came in: a JSONL line is parsed again with the standard library, and
    a number that neither a double nor a 64-bit integer holds (orjson turns a 30-digit integer into a
    float; `1e999` overflows) is kept as its text (`JsonNumber`), which `dumps_exact` writes back."""
    if rec.raw is None:
        return dict(rec.data or {})
    try:
        data = json.loads(rec.raw, parse_float=_exact_float, parse_int=_exact_int, parse_constant=refuse_json_constant)
    except (ValueError, RecursionError):
        return dict(rec.data or {})
    return data if isinstance(data, dict) else dict(rec.data or {})


def _number_text(value: Any) -> Any:
    if isinstance(value, JsonNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps_exact(record: dict[str, Any]) -> bytes:
    """Compact JSON of a record: `JsonNumber`s as their text; integers beyond 64 bits (which orjson
    refuses) through the standard library."""
    try:
        return orjson.dumps(record, default=_number_text, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_JSON_WHITESPACE = " \t\r\n"
_decoder = json.JSONDecoder()


def drop_fields_from_line(line: bytes, names: tuple[str, ...] | frozenset[str]) -> bytes:
    """A JSON object line without its top-level members named in `names`; every other member is kept
    as its original text (a 30-digit integer or 0.10 stays as written; nothing is re-serialised).
    A line that is not an object is returned as it is."""
    text = line.decode("utf-8")
    body = text.rstrip(_JSON_WHITESPACE)
    newline = "\n" if line.endswith(b"\n") else ""
    n = len(body)

    def skip(i: int) -> int:
        while i < n and body[i] in _JSON_WHITESPACE:
            i += 1
        return i

    i = skip(0)
    if i >= n or body[i] != "{":
        return line
    members: list[tuple[int, int, str]] = []  # (start, end, key) of each "key": value
    i = skip(i + 1)
    while i < n and body[i] != "}":
        start = i
        key, i = scanstring(body, i + 1)  # body[start] is the key's opening quote
        i = skip(skip(i) + 1)  # past the colon
        _value, i = _decoder.raw_decode(body, i)
        members.append((start, i, key))
        i = skip(i)
        if i < n and body[i] == ",":
            i = skip(i + 1)
    kept = [body[a:b] for a, b, key in members if key not in names]
    if len(kept) == len(members):
        return line
    return ("{" + ",".join(kept) + "}" + newline).encode("utf-8")
