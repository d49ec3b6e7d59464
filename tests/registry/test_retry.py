"""Retry policy: which errors are retried, for how long, and Retry-After handling."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.errors import AuthError, RegistryError
from pipeline.registry.retry import (
    MAX_RETRY_AFTER_S,
    RetryPolicy,
    parse_retry_after,
    retry_after_of,
    with_retry_after,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("value, seconds", [
    (None, None),
    ("0", 0.0),
    ("120", 120.0),
    (" 7 ", 7.0),
    ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
    ("Wed, 01 May 2024 11:59:00 GMT", 0.0),  # in the past: no wait
    ("Wednesday, 01-May-24 12:01:00 GMT", 60.0),  # RFC 850 form, still allowed by RFC 9110
    ("soon", None),
    ("-5", None),
    ("1.5", None),
], ids=["absent", "zero", "seconds", "spaces", "http-date", "past-date", "rfc850", "garbage",
        "negative", "fraction"])
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def policy(recorder: Recorder, **kw: object) -> RetryPolicy:
    return RetryPolicy(sleep=recorder, jitter=lambda: 1.0, **kw)  # type: ignore[arg-type]


def failing(errors: list[Exception], result: str = "ok"):  # type: ignore[no-untyped-def]
    calls = []

    def operation() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    operation.calls = calls  # type: ignore[attr-defined]
    return operation


def temporary(status: int = 503, retry_after: float | None = None) -> RegistryError:
    return with_retry_after(RegistryError(f"{status}", status=status, temporary=True),
                            retry_after)


def test_temporary_errors_are_retried_with_exponential_backoff() -> None:
    rec = Recorder()
    op = failing([temporary(), temporary(), temporary()])
    assert policy(rec).run(op) == "ok"
    assert rec.sleeps == [0.5, 1.0, 2.0]
    assert len(op.calls) == 4


def test_backoff_is_capped_and_jittered() -> None:
    rec = Recorder()
    p = RetryPolicy(sleep=rec, jitter=lambda: 0.0, base_delay_s=1.0, max_delay_s=3.0)
    assert [p.backoff(n) for n in range(4)] == [0.5, 1.0, 1.5, 1.5]


@pytest.mark.parametrize("error", [
    RegistryError("404", status=404, code="MANIFEST_UNKNOWN"),
    AuthError("403", status=403, code="DENIED"),
    AuthError("401", status=401, code="UNAUTHORIZED"),
], ids=["404", "403", "401-after-auth"])
def test_permanent_errors_fail_at_once(error: RegistryError) -> None:
    rec = Recorder()
    op = failing([error])
    with pytest.raises(RegistryError) as info:
        policy(rec).run(op)
    assert info.value is error
    assert rec.sleeps == [] and len(op.calls) == 1


def test_attempts_are_bounded() -> None:
    rec = Recorder()
    errors: list[Exception] = [temporary(500) for _ in range(10)]
    op = failing(errors)
    with pytest.raises(RegistryError) as info:
        policy(rec, attempts=3).run(op)
    assert info.value.status == 500
    assert len(op.calls) == 3 and len(rec.sleeps) == 2
    # The last line says it was the last try, not that another is coming.
    assert str(info.value) == "500; gave up after 3 attempts"


def test_giving_up_keeps_the_errors_kind_and_attributes() -> None:
    last = with_retry_after(AuthError("token server t: 503", status=503, temporary=True), 1.0)
    op = failing([last, last])
    with pytest.raises(AuthError) as info:
        policy(Recorder(), attempts=2).run(op)
    assert str(info.value) == "token server t: 503; gave up after 2 attempts"
    assert (info.value.status, info.value.temporary, info.value.retry_after) == (503, True, 1.0)


def test_retry_after_is_honoured() -> None:
    rec = Recorder()
    op = failing([temporary(429, retry_after=7.0)])
    assert policy(rec).run(op) == "ok"
    assert rec.sleeps == [7.0]


def test_retry_after_beyond_the_cap_fails_at_once_and_says_so() -> None:
    rec = Recorder()
    error = temporary(429, retry_after=3600.0)
    error.method, error.url = "GET", "https://r.example/v2/a/manifests/1"
    op = failing([error])
    with pytest.raises(RegistryError) as info:
        policy(rec).run(op)
    assert str(info.value) == ("429; the registry asks to retry after 3600 s, longer than the"
                               f" {MAX_RETRY_AFTER_S:.0f} s we wait; try again later")
    assert info.value.status == 429 and not info.value.temporary
    assert info.value.url == "https://r.example/v2/a/manifests/1"
    assert rec.sleeps == []


def test_other_exceptions_pass_through() -> None:
    rec = Recorder()
    op = failing([KeyError("x")])
    with pytest.raises(KeyError):
        policy(rec).run(op)
    assert rec.sleeps == []


def test_retry_after_of_reads_registry_errors_only() -> None:
    error = RegistryError("x")
    assert retry_after_of(error) is None
    assert retry_after_of(ValueError("x")) is None
    assert retry_after_of(with_retry_after(error, 3)) == 3.0


def test_policy_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="internal error"):
        RetryPolicy(attempts=0)


def test_http_date_relative_to_real_now() -> None:
    later = datetime.now(timezone.utc) + timedelta(seconds=90)
    value = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    seconds = parse_retry_after(value)
    assert seconds is not None and 80 <= seconds <= 90
