"""Two hubs on one PostgreSQL database: a token revoked or a worker deregistered through
the other one (another hub, or the admin CLI) reaches this hub's links at once, through
LISTEN/NOTIFY, not at its next periodic check (set here to its longest, 60 s)."""

from __future__ import annotations

from pathlib import Path

import trio
from support.hubpeer import now_ms, running_hub
from support.pgserver import PgServer
from support.storekit import StoreMaker

from leapcore.proto.limits import HubLimits
from leapcore.proto.link_codec import ErrorMessage
from leapcore.store.hubstore import open_hub_store

#: Polling would take up to 60 s; the notification must be heard well before.
HEARD_WITHIN = 20


async def test_a_token_revoked_at_another_hub_ends_its_link_at_once(
    tmp_path: Path, pg_server: PgServer
) -> None:
    stores = StoreMaker("postgresql", tmp_path, pg_server)
    url = stores.location()
    limits = HubLimits(revocation_check_interval=60.0)
    try:
        async with running_hub(tmp_path, store=open_hub_store(url), limits=limits) as env:
            other = stores.open()  # the other hub's (or the admin CLI's) store
            async with env.client() as peer:
                start = trio.current_time()
                other.revoke_token(other.find_token(env.token).id, now_ms())
                with trio.fail_after(HEARD_WITHIN):
                    messages = await peer.until_closed()
                assert trio.current_time() - start < HEARD_WITHIN
            errors = [m for m in messages if isinstance(m, ErrorMessage)]
            assert [e.code for e in errors] == ["unauthenticated"]
    finally:
        stores.close()
