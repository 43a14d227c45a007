"""A worker's policy file at work: a real :class:`~leapcore.worker.daemon.Worker`'s own
services (``default_services``) behind a real channel pair (real handshake and ciphers,
classic mode) running real processes, files and sockets. Refusals come back as
``denied_by_policy: <rule>: <what>`` before anything is started, written or dialled;
resource limits reach the process; a reload takes effect at the next call and a broken
file never replaces the policy in force."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.channelpair import MemoryPair, running

from leapcore.crypto.keys import WorkerKeyPair
from leapcore.errors import ConfigError, FileTransferFailed, PolicyDenied, TunnelDenied
from leapcore.peer.channel import Channel
from leapcore.proto.tunnel_policy import TunnelPolicy
from leapcore.store.policyfile import load_policy
from leapcore.worker.advertise import capabilities
from leapcore.worker.daemon import Worker

DEADLINE = 30.0


def make_worker(tmp_path: Path, policy: str | None, **options: object) -> Worker:
    """A worker in ``tmp_path/data`` whose ``policy.toml`` holds ``policy`` (None: none)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    if policy is not None:
        (data / "policy.toml").write_text(policy)
    return Worker(data, name="w", **options)  # type: ignore[arg-type]


@asynccontextmanager
async def channel_to(worker: Worker, keypair: WorkerKeyPair) -> AsyncIterator[Channel]:
    pair = MemoryPair()
    pair.join(keypair, worker.services)
    with trio.fail_after(DEADLINE):
        async with running(pair):
            yield pair.client


def check_denied(exc: PolicyDenied, message: str) -> None:
    assert exc.remote_code == "denied_by_policy"
    assert exc.remote_message == message
    assert str(exc) == f"denied_by_policy: {message}"


# -- exec ---------------------------------------------------------------------------------------


async def test_a_denied_program_never_starts(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    worker = make_worker(tmp_path, '[exec]\ndeny = ["touch"]\n')
    marker = tmp_path / "marker"
    async with channel_to(worker, generated_keypair) as channel:
        with pytest.raises(PolicyDenied) as caught:
            await channel.run_command(["touch", str(marker)])
        check_denied(caught.value, "exec.deny touch: touch")
        with pytest.raises(PolicyDenied):  # by its path too
            await channel.run_command([shutil.which("touch") or "/usr/bin/touch", str(marker)])
        link = tmp_path / "innocent"
        link.symlink_to(shutil.which("touch") or "/usr/bin/touch")
        with pytest.raises(PolicyDenied) as caught:  # and through a link to it
            await channel.run_command([str(link), str(marker)])
        check_denied(caught.value, f"exec.deny touch: {link}")
        assert (await channel.run_command(["true"])).ok  # anything else runs
    assert not marker.exists()


async def test_an_allow_list_names_programs_in_the_workers_path(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    worker = make_worker(tmp_path, '[exec]\nallow = ["true", "sh"]\n')
    planted = tmp_path / "bin"
    planted.mkdir()
    shutil.copy(shutil.which("false") or "/bin/false", planted / "true")  # a "true" that fails
    async with channel_to(worker, generated_keypair) as channel:
        assert (await channel.run_command(["true"])).ok
        assert (await channel.run_command("exit 0")).ok  # sh -c: sh is allowed
        with pytest.raises(PolicyDenied) as caught:
            await channel.run_command(["false"])
        check_denied(caught.value, "exec.allow (no rule matches): false")
        with pytest.raises(PolicyDenied):  # found first in a PATH the caller chose
            await channel.run_command(["true"], env={"PATH": str(planted)})
        with pytest.raises(PolicyDenied):
            await channel.run_command([str(planted / "true")])


async def test_deny_wins_over_allow(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    env = os.path.realpath(shutil.which("env") or "/usr/bin/env")
    worker = make_worker(tmp_path, f'[exec]\nallow = ["{env}", "env"]\ndeny = ["env"]\n')
    async with channel_to(worker, generated_keypair) as channel:
        with pytest.raises(PolicyDenied) as caught:
            await channel.run_command([env])
    assert caught.value.remote_message == f"exec.deny env: {env}"


async def test_a_terminal_program_is_checked_too(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    worker = make_worker(tmp_path, '[exec]\ndeny = ["sh", "bash", "dash", "zsh"]\n')
    async with channel_to(worker, generated_keypair) as channel:
        with pytest.raises(PolicyDenied) as caught:
            await channel.spawn_terminal(["sh", "-c", "echo hi"])
        check_denied(caught.value, "exec.deny sh: sh")
        with pytest.raises(PolicyDenied):
            await channel.run_command(["sh", "-c", "true"], pty=(80, 24))
        sessions = await channel.terminals()
    assert sessions == []


async def test_resource_limits_reach_the_process(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    policy = "[exec]\nmax_cpu_seconds = 7\nmax_memory_mb = 300\nmax_open_files = 64\n"
    worker = make_worker(tmp_path, policy)
    async with channel_to(worker, generated_keypair) as channel:
        result = await channel.run_command("ulimit -Sn; ulimit -Hn; ulimit -t; ulimit -v")
        on_terminal = await channel.run_command("ulimit -n", pty=(80, 24))
        hog = await channel.run_command(
            ["python3", "-c", "b = bytearray(600 * 1024 * 1024)"], stderr="stdout"
        )
    assert result.stdout.decode().split() == ["64", "64", "7", str(300 * 1024)]
    assert on_terminal.stdout.strip() == b"64"
    assert hog.exit_status == 1 and b"MemoryError" in hog.stdout


async def test_a_process_over_its_cpu_time_is_killed_and_reported_so(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    worker = make_worker(tmp_path, "[exec]\nmax_cpu_seconds = 1\n")
    async with channel_to(worker, generated_keypair) as channel:
        result = await channel.run_command("while :; do :; done")
    # The kernel's SIGXCPU at the soft limit (the hard one, equal, would be SIGKILL).
    assert result.exit_signal in (signal.SIGXCPU, signal.SIGKILL)
    assert result.exit_status is None


async def test_no_policy_means_no_limits(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    worker = make_worker(tmp_path, None)
    async with channel_to(worker, generated_keypair) as channel:
        result = await channel.run_command("ulimit -n")
    assert result.stdout.strip() == str(os.sysconf("SC_OPEN_MAX")).encode()


# -- run_as_user --------------------------------------------------------------------------------


def _nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root (CI runs as root)")
async def test_run_as_user_starts_processes_as_that_user(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    nobody = _nobody()
    worker = make_worker(tmp_path, '[exec]\nrun_as_user = "nobody"\n')
    async with channel_to(worker, generated_keypair) as channel:
        result = await channel.run_command("id -u; id -g; echo $HOME $USER", cwd="/")
    assert result.stdout.decode().split() == [
        str(nobody.pw_uid),
        str(nobody.pw_gid),
        nobody.pw_dir,
        "nobody",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can switch user")
def test_run_as_user_is_refused_loudly_when_the_worker_cannot_switch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_worker(tmp_path, '[exec]\nrun_as_user = "nobody"\n')
    assert "cannot switch user; run it as root or remove the setting" in str(caught.value)
    assert str(tmp_path / "data" / "policy.toml") in str(caught.value)


def test_run_as_user_must_name_a_user(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("exec.run_as_user: no user 'no-such-user-x'")):
        make_worker(tmp_path, '[exec]\nrun_as_user = "no-such-user-x"\n')


# -- files --------------------------------------------------------------------------------------


async def test_files_stay_under_the_roots(tmp_path: Path, generated_keypair: WorkerKeyPair) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s3cret")
    (root / "escape").symlink_to(outside)
    local = tmp_path / "local.txt"
    local.write_text("hello")
    worker = make_worker(tmp_path, f'[files]\nroots = ["{root}"]\n')
    async with channel_to(worker, generated_keypair) as channel:
        await channel.put(local, str(root / "in.txt"))
        for target in (outside / "out.txt", root / "escape" / "out.txt"):
            with pytest.raises(FileTransferFailed) as caught:
                await channel.put(local, str(target))
            assert caught.value.reason == "denied_by_policy"
            assert caught.value.detail.startswith("files.roots (outside every root): ")
        with pytest.raises(FileTransferFailed) as caught:
            await channel.get(str(root / "escape" / "secret"), tmp_path / "got")
        assert caught.value.reason == "denied_by_policy"
        with pytest.raises(FileTransferFailed):
            await channel.put(tmp_path / "root", str(outside / "tree"), recursive=True)
    assert (root / "in.txt").read_text() == "hello"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]  # nothing written there
    assert not (tmp_path / "got").exists()


def test_a_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        make_worker(tmp_path, f'[files]\nroots = ["{tmp_path / "nowhere"}"]\n')


# -- services -----------------------------------------------------------------------------------


async def test_disabled_services_are_refused_and_not_advertised(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    worker = make_worker(tmp_path, '[services]\ndisabled = ["pty", "files.write"]\n')
    async with channel_to(worker, generated_keypair) as channel:
        with pytest.raises(PolicyDenied) as caught:
            await channel.spawn_terminal(["true"])
        check_denied(caught.value, "services.disabled pty: pty.spawn")
        with pytest.raises(FileTransferFailed, match=re.escape("services.disabled files.write")):
            await channel.put(tmp_path / "data" / "policy.toml", str(tmp_path / "copy"))
        info = json.loads(await channel.call("info"))
        assert (await channel.run_command(["true"])).ok
    assert not any(m.startswith("pty") for m in info["capabilities"])
    assert "files.write" not in info["capabilities"] and "files.read" in info["capabilities"]
    assert "files.write" not in [s["name"] for s in info["services"]]
    assert not (tmp_path / "copy").exists()
    assert "pty" not in capabilities(worker.services)  # what the hub is told
    assert {"exec", "files", "tcp"} <= set(capabilities(worker.services))


# -- tunnels ------------------------------------------------------------------------------------


async def test_the_policy_files_tunnel_rules(
    tmp_path: Path, generated_keypair: WorkerKeyPair
) -> None:
    worker = make_worker(tmp_path, '[tunnel]\ndeny = ["127.0.0.1"]\n')
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        async with channel_to(worker, generated_keypair) as channel:
            with pytest.raises(TunnelDenied) as caught:
                await channel.open_tcp("127.0.0.1", port)
    assert caught.value.detail == f"tunnel.deny 127.0.0.1: 127.0.0.1:{port}"


def test_tunnel_rules_in_two_places_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tunnel rules are set both in"):
        make_worker(
            tmp_path,
            '[tunnel]\ndeny = ["10.0.0.0/8"]\n',
            tunnel_policy=TunnelPolicy.parse(deny=["192.168.0.0/16"]),
        )


# -- reloading ----------------------------------------------------------------------------------


async def test_a_reload_applies_to_the_next_call_and_a_broken_file_changes_nothing(
    tmp_path: Path, generated_keypair: WorkerKeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker(tmp_path, '[exec]\ndeny = ["true"]\n')
    path = tmp_path / "data" / "policy.toml"
    async with channel_to(worker, generated_keypair) as channel:
        with pytest.raises(PolicyDenied):
            await channel.run_command(["true"])
        path.write_text('[exec]\ndeny = ["false"]\n')
        assert worker.reload_policy()
        assert (await channel.run_command(["true"])).ok
        with pytest.raises(PolicyDenied):
            await channel.run_command(["false"])
        before = worker.policy
        for broken in ("[exec]\ndeny = [\n", '[exec]\ndenny = ["x"]\n', "[files]\nroots = []\nx=1"):
            path.write_text(broken)
            assert not worker.reload_policy()
            assert worker.policy is before
            with pytest.raises(PolicyDenied):  # the policy in force stays in force
                await channel.run_command(["false"])
        path.unlink()  # no file at the default place: no policy
        assert worker.reload_policy()
        assert (await channel.run_command(["false"])).exit_status == 1
    assert "policy not reloaded, the one in force stays" in caplog.text


def test_a_named_policy_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        make_worker(tmp_path, None, policy_file=tmp_path / "missing.toml")
    named = tmp_path / "named.toml"
    named.write_text('[exec]\ndeny = ["ssh"]\n')
    worker = make_worker(tmp_path, None, policy_file=named)
    assert worker.policy.exec.deny == ("ssh",)
    named.unlink()
    assert not worker.reload_policy()  # a named file that went away keeps the old policy
    assert worker.policy.exec.deny == ("ssh",)


def test_load_policy_without_a_file(tmp_path: Path) -> None:
    policy = load_policy(tmp_path / "none.toml", required=False)
    assert policy.source is None and not policy.exec.restricts
