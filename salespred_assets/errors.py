"""Errors that carry a message a person can act on."""

from __future__ import annotations

from salespred_assets.settings import mask_url


class SalespredError(Exception):
    """An error whose message is complete: what failed and how to fix it."""


class ServiceUnavailable(SalespredError):
    """A database or cache could not be reached."""

    def __init__(self, service: str, url: str | None, cause: object, hint: str = "") -> None:
        self.service = service
        self.url = mask_url(url)
        self.cause = cause
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        fix = hint or ("check that the server runs and the URL is right, or unset the variable to use the embedded "
                       "service")
        super().__init__(f"{service} is unreachable at {self.url}: {detail[:200]} ({fix})")


class NotEnoughData(SalespredError):
    """Training was asked to learn from too few closed opportunities."""
