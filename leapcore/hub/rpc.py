"""The hub's answers to a client's ``hub_request`` calls (list workers, registration keys, …).

:func:`call` runs one method for one authenticated user and returns the
``result`` object, or raises a :class:`~leapcore.errors.RequestError` carrying the
``error_code`` and ``error_message`` of the ``hub_response``. Parameters are
checked strictly: an unknown method, a missing, unknown or mistyped parameter
is an ``invalid_argument`` answer, never a crash of the link.

Every store call goes through the hub's ``store_call``: a worker thread, never the event
loop (see :mod:`leapcore.hub.server`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, ParamSpec, Protocol, TypeVar

from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    LeapcoreError,
    LocalError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RecordError,
    RequestError,
    StorageError,
    Unauthenticated,
)
from ..proto.audit_events import Origin, user_actor
from ..proto.capabilities import WorkerFilter
from ..proto.limits import HubLimits
from ..records import b64encode
from ..store.hubstore import HubStore, Notification, User, Worker, WorkerStatus

__all__ = ["METHODS", "WORKER_METHODS", "call", "worker_view"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class HubContext(Protocol):
    """What a method needs from the hub."""

    store: HubStore
    limits: HubLimits

    def now_ms(self) -> int: ...

    def is_online(self, worker_id: str) -> bool: ...

    async def store_call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` off the event loop (``Hub.store_call``)."""
        ...

    async def notify_deregister(self, note: Notification) -> bool:
        """Send ``note`` now if its worker holds a link; True when it was sent."""
        ...


#: A method: the hub, the caller, its parameters and where it calls from (the audit
#: trail's actor and address, for the methods that change something).
Method = Callable[[HubContext, User, Mapping[str, Any], Origin], Awaitable[dict[str, Any]]]


def _params(params: Mapping[str, Any], **spec: type) -> dict[str, Any]:
    """Exactly the parameters in ``spec``, each of its type (``bool`` is not an ``int``)."""
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise RequestError("invalid_argument", f"unknown parameter(s): {', '.join(unknown)}")
    out = {}
    for name, kind in spec.items():
        if name not in params:
            raise RequestError("invalid_argument", f"missing parameter {name!r}")
        value = params[name]
        if type(value) is not kind:
            raise RequestError("invalid_argument", f"parameter {name!r} must be a {kind.__name__}")
        out[name] = value
    return out


def worker_view(hub: HubContext, worker: Worker) -> dict[str, Any]:
    """What ``workers.list`` (and the web page) shows of one worker."""
    view: dict[str, Any] = {
        "id": worker.id,
        "name": worker.name,
        "version": worker.version,
        "labels": dict(worker.labels),
        "capabilities": list(worker.capabilities),
        "os": worker.os,
        "arch": worker.arch,
        "online": hub.is_online(worker.id),
        "last_seen_at": worker.last_seen_at,
        "encryption_mode": worker.encryption_mode.value if worker.encryption_mode else None,
    }
    if worker.keys is not None:
        view["fingerprint"] = worker.keys.fingerprint
    return view


async def _workers_list(
    hub: HubContext, user: User, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    """The user's active workers; the optional parameters ``labels``, ``capabilities`` and
    ``online`` keep only those that match (:class:`~leapcore.proto.capabilities.WorkerFilter`)."""
    try:
        wanted = WorkerFilter.from_params(params)
    except RecordError as exc:
        raise RequestError("invalid_argument", str(exc)) from None
    workers = await hub.store_call(hub.store.list_workers, owner_id=user.id)
    views = [worker_view(hub, w) for w in workers]
    return {
        "workers": [v for v in views if wanted.matches(v["labels"], v["capabilities"], v["online"])]
    }


async def _regkey_create(
    hub: HubContext, user: User, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    _params(params)
    record, key = await hub.store_call(
        hub.store.mint_registration_key,
        user.id,
        hub.now_ms(),
        max_live=hub.limits.max_live_registration_keys,
        origin=origin,
    )
    return {"registration_key": key, "expires_at": record.expires_at}


def _key(params: Mapping[str, Any]) -> str:
    key: str = _params(params, registration_key=str)["registration_key"]
    if not key:
        raise RequestError("invalid_argument", "registration_key is required")
    return key


async def _regkey_extend(
    hub: HubContext, user: User, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    key = _key(params)
    expires_at = await hub.store_call(hub.store.extend_registration_key, user.id, key, hub.now_ms())
    return {"expires_at": expires_at}


async def _regkey_revoke(
    hub: HubContext, user: User, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    # The key itself, or its id (from regkey.list): either names it.
    key_id = await hub.store_call(
        hub.store.revoke_registration_key_by_ref,
        _key(params),
        hub.now_ms(),
        owner=user.id,
        origin=origin,
    )
    return {"key_id": key_id}


async def _regkey_list(
    hub: HubContext, user: User, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    _params(params)
    now = hub.now_ms()
    keys = await hub.store_call(hub.store.list_registration_keys, now, include_expired=True)
    return {
        "keys": [
            {
                "id": k.id,
                "prefix": k.prefix,
                "created_at": k.created_at,
                "expires_at": k.expires_at,
                "state": "live" if k.expires_at > now else "expired",
            }
            for k in keys
            if k.created_by == user.id
        ]
    }


async def _regkey_state(
    hub: HubContext, user: User, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    key = _key(params)
    state = await hub.store_call(hub.store.registration_key_state, user.id, key, hub.now_ms())
    return {"state": state}


async def _worker_deregister(
    hub: HubContext, user: User, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    worker_id: str = _params(params, worker_id=str)["worker_id"]
    try:
        note = await hub.store_call(
            hub.store.deregister_worker,
            worker_id,
            hub.now_ms(),
            requested_by=user.id,
            origin=origin,
        )
    except NotFound:
        # Missing and foreign workers are indistinguishable.
        raise RequestError("not_found", "worker not found") from None
    return {
        "worker_id": worker_id,
        "status": "deregistering",
        "notified": await hub.notify_deregister(note),
    }


async def _worker_keys(
    hub: HubContext, user: User, params: Mapping[str, Any], origin: Origin
) -> dict[str, Any]:
    worker_id: str = _params(params, worker_id=str)["worker_id"]
    try:
        worker = await hub.store_call(hub.store.get_worker, worker_id)
    except NotFound:
        worker = None
    if worker is None or worker.owner_id != user.id or worker.status is not WorkerStatus.ACTIVE:
        # Missing, foreign and deregistered workers are indistinguishable.
        raise RequestError("not_found", "worker not found")
    if worker.keys is None or worker.encryption_mode is None:
        raise RequestError("failed_precondition", "worker has not reported its keys yet")
    return {
        "worker_id": worker.id,
        "encryption_mode": worker.encryption_mode.value,
        "public_key": b64encode(worker.keys.x25519),
        "mlkem_public_key": b64encode(worker.keys.mlkem),
        "slhdsa_public_key": b64encode(worker.keys.slhdsa),
    }


#: Method name -> implementation.
METHODS: Final[dict[str, Method]] = {
    "workers.list": _workers_list,
    "regkey.create": _regkey_create,
    "regkey.extend": _regkey_extend,
    "regkey.revoke": _regkey_revoke,
    "regkey.list": _regkey_list,
    "regkey.state": _regkey_state,
    "worker.deregister": _worker_deregister,
    "worker.keys": _worker_keys,
}
#: The methods a worker may call on its own link, acting as its owner.
WORKER_METHODS: Final = frozenset({"workers.list", "worker.keys"})

#: Store errors -> hub_response error codes (first match wins, so subclasses come first).
_ERROR_CODES: Final[tuple[tuple[type[LeapcoreError], str], ...]] = (
    (StorageError, "internal"),
    (NotFound, "not_found"),
    (FailedPrecondition, "failed_precondition"),
    (PermissionDenied, "permission_denied"),
    (Unauthenticated, "unauthenticated"),
    (QuotaExceeded, "quota_exceeded"),
    (AlreadyExists, "already_exists"),
    (LocalError, "invalid_argument"),
)


async def call(
    hub: HubContext,
    user: User,
    method: str,
    params: Mapping[str, Any],
    origin: Origin | None = None,
) -> dict[str, Any]:
    """Run ``method`` for ``user``; :class:`RequestError` when it fails. ``origin`` (the
    link's actor and address) is what the audit trail records of a change; by default the
    user, from nowhere known."""
    if origin is None:
        origin = Origin(user_actor(user.name))
    impl = METHODS.get(method)
    if impl is None:
        raise RequestError("invalid_argument", f"unknown method {method!r}")
    try:
        return await impl(hub, user, params, origin)
    except RequestError:
        raise
    except LeapcoreError as exc:
        for cls, code in _ERROR_CODES:
            if isinstance(exc, cls):
                message = "hub storage error" if code == "internal" else str(exc)
                raise RequestError(code, message) from None
        raise
