"""Registry clients for tests: no credentials, and retries that record their sleeps.

``Sleeps`` stands in for ``time.sleep`` in a ``RetryPolicy``: it records each
delay instead of waiting, so a test can assert the backoff exactly. The
jitter is pinned at its low end (half the ceiling), so delays are
deterministic: 0.25, 0.5, 1.0, ... for the default 0.5 s base.
"""

from __future__ import annotations

from pipeline.registry.client import RegistryClient
from pipeline.registry.credentials import NoCredentials
from pipeline.registry.retry import RetryPolicy

__all__ = ["Sleeps", "make_client", "recording_retry"]


class Sleeps(list[float]):
    """A ``sleep`` that records the delays it was asked for."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def recording_retry(sleeps: Sleeps | None = None) -> RetryPolicy:
    """The default retry policy, sleeping into ``sleeps`` (or not at all), jitter pinned."""
    return RetryPolicy(sleep=sleeps if sleeps is not None else (lambda _: None),
                       jitter=lambda: 0.0)


def make_client(sleeps: Sleeps | None = None) -> RegistryClient:
    """An anonymous client whose retries sleep into ``sleeps`` (or not at all)."""
    return RegistryClient(credentials=NoCredentials(), retry=recording_retry(sleeps))

