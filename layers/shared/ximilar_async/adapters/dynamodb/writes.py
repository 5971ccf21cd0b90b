"""The one rule for a conditional write: did it apply? Its own echo counts as applied.

DynamoDB sometimes applies a write and answers 500, or the connection drops after it: botocore retries,
and the retry meets the write that already applied as a failed condition. So every conditional write
here carries a token that only this attempt writes (`write_id`, 96 random bits), and a condition that
the item does not hold it yet:
- a retry of a write that applied always fails its condition: it never applies twice (an ADD counts
  once, a claim is not taken again);
- the failure comes with the item as DynamoDB holds it (`ReturnValuesOnConditionCheckFailure=ALL_OLD`,
  asked for by `bind_tables` on every conditional write, at no extra read). If it holds this
  attempt's token, the write applied: its own echo, not someone else's write.
- when botocore's retries all end in answers that may or may not have applied (5xx, dropped
  connections), the same write is sent again, same token, a bounded number of times: it applies, or
  its condition fails and the item says whose write it holds. No read is needed, nor any IAM grant.

A write whose item would be too large raises `ItemTooLarge` (the caller can store less); any other
DynamoDB error propagates. An applied update leaves the item as DynamoDB returned it (ALL_NEW, or the
echo's item), so a caller reads what was written without another read.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
from pynamodb.exceptions import DeleteError, PutError, PynamoDBException, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.models import Model

from ximilar_async.services.errors import ItemTooLarge

CONDITION_FAILED: Final = "ConditionalCheckFailedException"
VALIDATION_FAILED: Final = "ValidationException"
WRITE_ID: Final = "write_id"  # the models' attribute holding the token of the last conditional write
# Times a write is sent again, same token, after botocore's own retries all ended in ambiguous answers.
AMBIGUOUS_RESENDS: Final = 2


M = TypeVar("M", bound=Model)


def new_token() -> str:
    """96 random bits: unique among the writes one item meets, in 16 characters (an item's size is its cost)."""
    return secrets.token_urlsafe(12)


def _not_yet(model: Any, token: str, condition: Condition | None) -> Condition:
    """`condition`, and the item does not hold `token` yet (a retry of an applied write fails here)."""
    mark = model.write_id
    fresh: Condition = mark.does_not_exist() | (mark != token)
    return fresh if condition is None else condition & fresh


def put(item: M, condition: Condition | None) -> bool:
    """PutItem `item` if `condition` holds: True when it applied (this attempt's echo included)."""
    token = new_token()
    item.write_id = token  # type: ignore[attr-defined]
    guarded = _not_yet(type(item), token, condition)
    return _settled(item, token, lambda: item.save(condition=guarded))


def update(item: M, actions: list[Action], condition: Condition | None) -> bool:
    """UpdateItem with `actions` if `condition` holds: True when it applied (this attempt's echo included).

    Applied, `item` holds the whole item as written (for a caller that needs more than its key).
    """
    token = new_token()
    model: Any = type(item)
    marked = [*actions, model.write_id.set(token)]
    guarded = _not_yet(model, token, condition)
    return _settled(item, token, lambda: item.update(actions=marked, condition=guarded))


def delete(item: Model, condition: Condition | None) -> bool:
    """DeleteItem if `condition` holds. A delete leaves nothing to recognize it by: a retry that meets
    its own delete reads as not applied (the one conditional delete, `resume`'s, only reports it)."""
    try:
        item.delete(condition=condition)
    except DeleteError as error:
        if error.cause_response_code == CONDITION_FAILED:
            return False
        raise
    return True


def _settled(item: Model, token: str, write: Callable[[], object]) -> bool:
    """Run `write` (marked with `token`) until it has an answer: True when it applied, False when
    someone else's write made its condition fail. Sent again, same token, when botocore's retries ran
    out on answers that may have applied (`AMBIGUOUS_RESENDS` times at most): its condition then tells."""
    for resend in itertools.count():
        try:
            write()
        except (PutError, UpdateError) as error:
            if error.cause_response_code == CONDITION_FAILED:
                held = _item_of(error)
                return held is not None and _adopt_if_ours(item, held, token)
            if _is_item_too_large(error):
                raise ItemTooLarge(error.cause_response_message or "item size exceeded") from error
            if not _is_ambiguous(error) or resend >= AMBIGUOUS_RESENDS:
                raise
        else:
            return True
    raise AssertionError("unreachable")  # itertools.count() never ends


def _item_of(error: PutError | UpdateError) -> dict[str, Any] | None:
    """The item DynamoDB returned with a failed condition (ALL_OLD), or None: there was none.

    pynamodb 6 raises botocore's error again as a `VerboseClientError` that keeps only its `Error`;
    the original, with the item, is that error's `__context__` (pinned by the data layer's tests).
    An implementation that ignores ALL_OLD returns no item either: there, an echo reads as a lost race.
    """
    for answer in _responses(error):
        found = answer.get("Item")
        if isinstance(found, dict):
            return found
    return None


def _responses(error: PynamoDBException) -> Iterator[dict[str, Any]]:
    """The botocore responses behind a pynamodb error: its cause's, and the one pynamodb raised it from."""
    cause: BaseException | None = error.cause
    while cause is not None:
        if isinstance(cause, ClientError):
            yield dict(cause.response)
        cause = cause.__context__


def _adopt_if_ours(item: Model, held: dict[str, Any], token: str) -> bool:
    """Does the stored item `held` hold `token`? Then `item` takes it (what this write made of it);
    someone else's item is left out of `item`, which a caller may still write (a claim taken over)."""
    if held.get(WRITE_ID, {}).get("S") != token:
        return False
    item.deserialize(held)
    return True


THROTTLED: Final = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})
# DynamoDB's answers after which a write may or may not have applied ("the request may or may not have
# succeeded"): its own failures, not the request's.
SERVER_FAILED: Final = frozenset({"InternalServerError", "ServiceUnavailable", "InternalFailure"})


def _code(error: BaseException) -> str | None:
    cause = error.cause if isinstance(error, PynamoDBException) else error
    if isinstance(cause, ClientError):
        return str(cause.response.get("Error", {}).get("Code") or "") or None
    return None


def _lost_connection(error: BaseException) -> bool:
    cause = error.cause if isinstance(error, PynamoDBException) else error
    return isinstance(cause, (ConnectionError, HTTPClientError))


def is_transient_storage_error(error: BaseException) -> bool:
    """DynamoDB throttled, failed on its side, or the connection failed, after the client's retries:
    worth trying again later, and no fault of the item being written or read."""
    return _lost_connection(error) or _code(error) in THROTTLED | SERVER_FAILED


def _is_ambiguous(error: PutError | UpdateError) -> bool:
    """An answer after which the write may or may not have applied: a server error, a lost connection."""
    return _lost_connection(error) or _code(error) in SERVER_FAILED


def _is_item_too_large(error: PutError | UpdateError) -> bool:
    """DynamoDB's item-size refusal: a ValidationException whose message says so (it has no code of its own).

    PutItem says "Item size has exceeded the maximum allowed size", UpdateItem "Item size to update
    has exceeded the maximum allowed size".
    """
    message = (error.cause_response_message or "").lower()
    return error.cause_response_code == VALIDATION_FAILED and "item size" in message and "exceeded" in message


def ask_for_the_item_on_condition_failure(params: dict[str, Any], **_: Any) -> None:
    """botocore hook (`before-parameter-build.dynamodb.*`): a conditional write returns the item it failed on."""
    if "ConditionExpression" in params:
        params.setdefault("ReturnValuesOnConditionCheckFailure", "ALL_OLD")
