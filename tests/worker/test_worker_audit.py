"""The worker's audit log at work: a real :class:`~leapcore.worker.daemon.Worker`'s
services behind real channel pairs (real handshake and ciphers, classic mode) running real
processes and copies; every call leaves one JSON line with who, what, the outcome, the
duration and the bytes, security refusals are marked, and no secret reaches the file."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import trio
from support.channelpair import MemoryPair, answers_to_requests, running

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import PolicyDenied, RemoteCallError
from leapcore.peer.channel import Channel
from leapcore.proto.link_records import ChannelRequest
from leapcore.worker.daemon import Worker

SECRET = "hunter2-never-logged"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def serve(worker: Worker, keypair: WorkerKeyPair, user_id: str, test: Any) -> None:
    pair = MemoryPair()
    pair.join(keypair, worker.services, user_id=user_id)
    with trio.fail_after(30):
        async with running(pair):
            await test(pair.client)


async def test_every_call_is_recorded(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "policy.toml").write_text('[exec]\ndeny = ["touch"]\n')
    worker = Worker(data, name="w")
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(5000))

    async def as_owner(channel: Channel) -> None:
        assert (
            await channel.run_command(["sh", "-c", "exit 3"], env={"TOKEN": SECRET})
        ).exit_status == 3
        with contextlib.suppress(PolicyDenied):
            await channel.run_command(["touch", str(tmp_path / "x")])
        await channel.put(upload, str(tmp_path / "copy.bin"))
        session = await channel.spawn_terminal(["cat"])
        await channel.send_keys(session.id, f"{SECRET}\r")
        await channel.kill_terminal(session.id)

    async def as_stranger(channel: Channel) -> None:
        with contextlib.suppress(RemoteCallError):
            await channel.call("info")

    await serve(worker, generated_keypair, "u-owner", as_owner)
    await serve(worker, generated_keypair, "u-mallory", as_stranger)
    log = data / "audit.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert SECRET not in log.read_text()
    records = lines(log)
    by_method = {r["method"]: r for r in records}

    exec_ok = next(r for r in records if r["method"] == "exec" and r["outcome"] == "ok")
    assert exec_ok["exit_status"] == 3 and exec_ok["exit_signal"] is None
    assert exec_ok["args"]["argv"] == ["sh", "-c", "exit 3"]
    assert exec_ok["args"]["env"] == {"TOKEN": "<redacted>"}
    assert exec_ok["user"] == "u-owner" and exec_ok["duration_ms"] > 0

    denied = next(r for r in records if r["outcome"] == "denied_by_policy")
    assert denied["method"] == "exec" and denied["security"] is True
    assert denied["message"] == "exec.deny touch: touch"

    write = by_method["files.write"]
    assert (write["outcome"], write["bytes_in"]) == ("ok", 5000)
    assert by_method["pty.send"]["args"]["data"] == {"length": len(SECRET) + 1}

    stranger = by_method["info"]
    assert stranger["user"] == "u-mallory"
    assert (stranger["outcome"], stranger["security"]) == ("permission_denied", True)
    assert all(r["event"] == "call" for r in records)


def test_off_means_no_log(tmp_path: Path) -> None:
    worker = Worker(tmp_path, name="w", audit_log="off")
    assert worker.audit_log is None and worker.services.observers == []


async def test_a_refused_channel_is_recorded(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    worker = Worker(tmp_path, name="w")
    await answers_to_requests(
        generated_keypair,
        [ChannelRequest(1, 5, "u-mallory", b"\0" * 48, 1 << 24)],
        services=worker.services,
        on_refused=worker._audit_refused_channel,
    )
    (record,) = lines(tmp_path / "audit.log")
    assert record["event"] == "channel_refused" and record["security"] is True
    assert (record["user"], record["outcome"]) == ("u-mallory", "permission_denied")
