"""Bounded retries with exponential backoff and jitter, honouring ``Retry-After``.

What is worth retrying is decided where the error is made: a RegistryError
carries ``temporary`` (429, 408, 5xx, connection errors, resets, truncated
bodies) and, when the registry sent one, ``retry_after`` in seconds. This
module only decides how long to wait and when to give up; it never retries
404, 403 or a 401 that survived authentication.

``Retry-After`` (RFC 9110 section 10.2.3) is either delay-seconds or an
HTTP-date. We wait at least that long, but never longer than
``MAX_RETRY_AFTER_S``: a registry that asks for more (Docker Hub's pull limit
says hours) fails at once with its request in the message instead of hanging
a build.
"""

from __future__ import annotations

import copy
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TypeVar

import structlog

from pipeline.errors import RegistryError

__all__ = ["header_int", "RetryPolicy", "DEFAULT_RETRY", "MAX_RETRY_AFTER_S", "TEMPORARY_STATUSES",
           "parse_retry_after", "retry_after_of", "with_retry_after"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Longest Retry-After we are willing to sleep through inside one build step.
MAX_RETRY_AFTER_S = 60.0
# 408 Request Timeout, 429 Too Many Requests and the 5xx a proxy or an
# overloaded registry answers with (go-containerregistry's temporary set).
TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


# An HTTP integer header (Content-Length, Retry-After seconds): ASCII digits
# only (str.isdigit also says yes to "²" and "٣"), at most 18 of them.
_HEADER_INT = re.compile(r"[0-9]{1,18}")


def header_int(value: str | None) -> int | None:
    """A non-negative integer header value, or None when absent or not plain digits."""
    if value is None or not _HEADER_INT.fullmatch(value.strip()):
        return None
    return int(value.strip())


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value, or None if absent or unreadable.

    Nonsense (non-ASCII digits, dates past year 9999, 40-digit numbers) counts
    as absent: the usual backoff applies.
    """
    if value is None:
        return None
    value = value.strip()
    seconds = header_int(value)
    if seconds is not None:
        return float(seconds)
    if not value.isascii() or len(value) > 64:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def with_retry_after(error: RegistryError, seconds: float | None) -> RegistryError:
    """Attach the registry's Retry-After to an error."""
    error.retry_after = seconds
    return error


def retry_after_of(error: BaseException) -> float | None:
    return error.retry_after if isinstance(error, RegistryError) else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to try (``attempts`` in total) and how long to wait between."""

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 10.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    jitter: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("internal error: RetryPolicy.attempts must be >= 1,"
                             f" got {self.attempts}")

    def backoff(self, attempt: int) -> float:
        """Delay before try ``attempt + 1`` (attempt counts from 0): exponential, half jitter."""
        ceiling: float = min(self.max_delay_s, self.base_delay_s * 2.0 ** attempt)
        return ceiling * (0.5 + 0.5 * self.jitter())

    def next_delay(self, error: RegistryError, attempt: int) -> float:
        """The wait before retrying after ``error`` on try ``attempt``; raise if giving up."""
        if not error.temporary:
            raise error
        if attempt + 1 >= self.attempts:
            raise _gave_up(error, attempt + 1)
        asked = retry_after_of(error)
        if asked is not None and asked > self.max_retry_after_s:
            raise _too_long(error, asked, self.max_retry_after_s) from error
        delay = self.backoff(attempt) if asked is None else asked
        log.warning("registry.retry", what=str(error), attempt=attempt + 1,
                    attempts=self.attempts, delay_s=round(delay, 3))
        return delay

    def run(self, operation: Callable[[], T]) -> T:
        """Call ``operation`` until it succeeds, fails for good, or attempts run out."""
        attempt = 0
        while True:
            try:
                return operation()
            except RegistryError as error:
                delay = self.next_delay(error, attempt)
            self.sleep(delay)
            attempt += 1


DEFAULT_RETRY = RetryPolicy()


def _gave_up(error: RegistryError, attempts: int) -> RegistryError:
    """``error`` (same type and attributes), saying it was the last of ``attempts`` tries."""
    if attempts < 2:
        return error
    final = copy.copy(error)  # PipelineError pickles (and so copies) whole
    final.args = (f"{error}; gave up after {attempts} attempts",)
    return final


def _too_long(error: RegistryError, asked: float, limit: float) -> RegistryError:
    final = RegistryError(
        f"{error}; the registry asks to retry after {asked:.0f} s, longer than the"
        f" {limit:.0f} s we wait; try again later", status=error.status, code=error.code)
    final.method, final.url = error.method, error.url
    return final
