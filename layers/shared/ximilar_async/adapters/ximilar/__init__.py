"""The Ximilar asynchronous request API client (its errors are the port's: `services.errors`)."""

from ximilar_async.adapters.ximilar.client import XimilarClient, default_retry, make_session, validate_records

__all__ = ["XimilarClient", "default_retry", "make_session", "validate_records"]
