"""Conversions between Python values and the protocol's: durations, times, enum names."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Optional, Union

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

#: A duration: seconds (int or float) or a datetime.timedelta.
Seconds = Union[float, int, timedelta]


def to_seconds(value: Seconds) -> float:
    """A duration as float seconds."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def duration(value: Seconds) -> Duration:
    """A duration as a google.protobuf.Duration, exact to the nanosecond."""
    if isinstance(value, timedelta):
        result = Duration()
        result.FromTimedelta(value)
        return result
    result = Duration()
    result.FromNanoseconds(round(float(value) * 1e9))
    return result


def optional_duration(value: Optional[Seconds]) -> Optional[Duration]:
    """None stays None: the field is left unset (the server's default applies)."""
    return None if value is None else duration(value)


def seconds_of(message: Message, name: str) -> Optional[float]:
    """Float seconds of the Duration field `name` of `message`, or None when it is unset."""
    if not message.HasField(name):
        return None
    value: Duration = getattr(message, name)
    return value.seconds + value.nanos / 1e9


def time_of(message: Message, name: str) -> Optional[datetime]:
    """The Timestamp field `name` of `message` as an aware UTC datetime, or None when unset."""
    if not message.HasField(name):
        return None
    value: Timestamp = getattr(message, name)
    return value.ToDatetime(tzinfo=timezone.utc)


def enum_value(enum: Any, prefix: str, name: str) -> int:
    """The number of the protocol's enum value `prefix + NAME` ("token_bucket" ->
    ALGORITHM_TOKEN_BUCKET), checked against the generated enum's descriptor.

    A name the protocol does not define is a ValueError before any call: never
    silently the default.
    """
    full = prefix + name.upper()
    values = enum.DESCRIPTOR.values_by_name
    if not name or name.upper() == "UNSPECIFIED" or full not in values:
        known = ", ".join(
            repr(v[len(prefix):].lower()) for v in values if not v.endswith("_UNSPECIFIED")
        )
        raise ValueError(f"unknown {enum.DESCRIPTOR.name} {name!r}: expected one of {known}")
    return int(values[full].number)


def enum_name(enum: Any, prefix: str, number: int) -> str:
    """The lower-case short name of an enum number (2 -> "slow_reader"); unknown numbers as str."""
    value = enum.DESCRIPTOR.values_by_number.get(number)
    if value is None:
        return str(number)
    return str(value.name[len(prefix):].lower())
