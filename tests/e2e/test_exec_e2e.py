"""``leapcore remote exec`` as a real process, through a real hub to a real ``leapcore-worker``
process (classic mode), like ``ssh host cmd``: exit statuses and signals, stderr kept apart,
100 MiB of stdin through ``cat``, ``-n``, a ``yes`` nobody reads (the worker's RSS stays
flat), a timeout and a killed client leaving no process behind, clear failures (255)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.procs import TIMEOUT, Env, Proc, script, wait_for, worker_box
from support.termkit import finish, on_terminal, screen_read, set_size

MIB = 1024 * 1024


@pytest.fixture(name="box", scope="module")
def box_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Proc]]:
    """One hub and one worker ``box`` for the module (each test's processes are its own)."""
    with worker_box(tmp_path_factory.mktemp("exec")) as box:
        yield box


def command(env: Env, *args: str) -> list[str]:
    return [script("leapcore"), "remote", "exec", "--worker", "box", *env.client_flags(), *args]


def run(
    env: Env, *args: str, timeout: float = TIMEOUT, **options: object
) -> subprocess.CompletedProcess[bytes]:
    if "input" not in options:
        options.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        command(env, *args),
        env={**env.env, "LEAPCORE_HUB": env.url},
        capture_output=True,
        timeout=timeout,
        check=False,
        **options,
    )


def alive(pid: int) -> bool:
    """Is ``pid`` a live (not zombie) process? Asked of ``ps``."""
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    state = out.stdout.strip()
    return bool(state) and not state.startswith("Z")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def pids_in(path: Path, count: int) -> list[int]:
    def ready() -> list[int] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        done = len(lines) >= count and path.read_text().endswith("\n")
        return [int(line) for line in lines[:count]] if done else None

    return wait_for(ready, f"{count} pids in {path}")


@pytest.mark.parametrize(
    ("words", "status"),
    [
        (["true"], 0),
        (["false"], 1),
        (["sh", "-c", "exit 42"], 42),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        (["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
    ],
)
def test_exit_status_is_the_commands(box: tuple[Env, Proc], words: list[str], status: int) -> None:
    env, _ = box
    done = run(env, "--", *words)
    assert done.returncode == status, done.stderr
    assert done.stderr == b""


def test_stdout_and_stderr_go_to_their_own(box: tuple[Env, Proc]) -> None:
    env, _ = box
    done = run(env, "--shell", "--", "echo to-out; echo to-err >&2; echo again")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"to-out\nagain\n", b"to-err\n")


def test_argv_env_and_cwd(box: tuple[Env, Proc], tmp_path: Path) -> None:
    env, _ = box
    done = run(env, "--env", "GREETING=a b", "--cwd", str(tmp_path), "--",
               "sh", "-c", 'echo "$GREETING" "$(pwd)"; echo "$1"', "sh", "*  *")  # fmt: skip
    assert done.stdout.decode() == f"a b {tmp_path}\n*  *\n"


def test_100_mib_of_stdin_through_cat(box: tuple[Env, Proc], tmp_path: Path) -> None:
    env, _ = box
    source, sink = tmp_path / "in.bin", tmp_path / "out.bin"
    with source.open("wb") as out:
        for _ in range(100):
            out.write(os.urandom(MIB))
    started = time.monotonic()
    with source.open("rb") as stdin, sink.open("wb") as stdout:
        done = subprocess.run(command(env, "--", "cat"), stdin=stdin, stdout=stdout,
                              stderr=subprocess.PIPE, env={**env.env, "LEAPCORE_HUB": env.url},
                              timeout=120, check=False)  # fmt: skip
    elapsed = time.monotonic() - started
    print(f"\n100 MiB through cat: {elapsed:.1f} s")
    assert done.returncode == 0, done.stderr
    assert sink.stat().st_size == 100 * MIB
    digest = [hashlib.sha256(path.read_bytes()).hexdigest() for path in (source, sink)]
    assert digest[0] == digest[1]


def test_stdin_from_a_pipe(box: tuple[Env, Proc]) -> None:
    env, _ = box
    done = run(env, "--", "tr", "a-z", "A-Z", input=b"hello\n")
    assert (done.returncode, done.stdout) == (0, b"HELLO\n")


def test_n_does_not_read_stdin(box: tuple[Env, Proc]) -> None:
    """With -n, ``cat`` gets EOF at once although local stdin is an open pipe."""
    env, _ = box
    proc = subprocess.Popen(command(env, "-n", "--", "cat"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env.env, "LEAPCORE_HUB": env.url})  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        status = proc.wait(timeout=TIMEOUT)  # its stdin still open: never read
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        proc.kill()
        proc.stdin.close()
    assert (status, out) == (0, b""), err


def test_the_end_of_the_command_ends_it_though_stdin_is_open(box: tuple[Env, Proc]) -> None:
    """Local stdin is forwarded (a pipe nobody closes): the command's exit still ends it."""
    env, _ = box
    proc = subprocess.Popen(command(env, "--", "head", "-c", "3"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env.env, "LEAPCORE_HUB": env.url})  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"abcdef")
        proc.stdin.flush()
        status = proc.wait(timeout=TIMEOUT)  # stdin still open
        out = proc.stdout.read()
    finally:
        proc.kill()
        proc.stdin.close()
    assert (status, out) == (0, b"abc")


def test_a_chatty_command_nobody_reads_keeps_the_worker_flat(box: tuple[Env, Proc]) -> None:
    """``yes`` writes as fast as it can into a client whose stdout nobody reads: the
    windows stop it; the worker's RSS does not grow with time."""
    env, worker = box
    pid = worker.popen.pid
    before = rss_kib(pid)
    reader_r, reader_w = os.pipe()  # the client's stdout: a pipe never read
    client = subprocess.Popen(command(env, "--", "yes"), stdin=subprocess.DEVNULL,
                              stdout=reader_w, stderr=subprocess.PIPE,
                              env={**env.env, "LEAPCORE_HUB": env.url})  # fmt: skip
    os.close(reader_w)
    try:
        wait_for(lambda: subprocess.run(["pgrep", "-x", "-P", str(pid), "yes"],
                                        capture_output=True, check=False).returncode == 0,
                 "yes to run on the worker")  # fmt: skip
        samples = []
        for _ in range(16):
            time.sleep(0.25)
            samples.append(rss_kib(pid))
        client_rss = rss_kib(client.pid)
        print(f"\nworker RSS before {before} KiB, while yes ran unread: {samples} KiB;"
              f" client RSS {client_rss} KiB")  # fmt: skip
        assert client.poll() is None
        # At most the channel's windows and queues (a few MiB), and flat once they are full.
        assert max(samples) - before < 24 * 1024
        assert max(samples[8:]) - min(samples[8:]) < 4 * 1024
        assert client_rss < 200 * 1024
    finally:
        client.kill()
        client.wait(10)
        os.close(reader_r)
    # The client's death closed the channel: the worker killed yes.
    wait_for(lambda: subprocess.run(["pgrep", "-x", "-P", str(pid), "yes"],
                                    capture_output=True, check=False).returncode == 1,
             "yes to be killed")  # fmt: skip


def test_head_closing_the_pipe_ends_it_like_sigpipe(box: tuple[Env, Proc]) -> None:
    env, _ = box
    shell = f"{' '.join(command(env, '--', 'yes'))} | head -3; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, timeout=TIMEOUT,
                          env={**env.env, "LEAPCORE_HUB": env.url}, check=False)  # fmt: skip
    assert done.stdout == b"y\ny\ny\n141\n", done.stderr


def test_a_timeout_kills_the_whole_group(box: tuple[Env, Proc], tmp_path: Path) -> None:
    env, _ = box
    pids = tmp_path / "pids"
    done = run(env, "--command-timeout", "1", "--shell", "--",
               f"echo $$ > {pids}; sleep 300 & echo $! >> {pids}; wait")  # fmt: skip
    assert done.returncode in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    assert b"error: the command timed out after 1s" in done.stderr
    shell, grandchild = pids_in(pids, 2)
    wait_for(lambda: not alive(shell) and not alive(grandchild), "no orphan left")


def test_a_killed_client_leaves_no_process(box: tuple[Env, Proc], tmp_path: Path) -> None:
    """SIGKILL the client mid-command: the hub closes the channel, the worker kills the
    process group (SIGTERM, then SIGKILL)."""
    env, _ = box
    pids = tmp_path / "pids"
    client = subprocess.Popen(
        command(env, "--shell", "--", f"echo $$ > {pids}; sleep 300 & echo $! >> {pids}; wait"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**env.env, "LEAPCORE_HUB": env.url},
    )  # fmt: skip
    try:
        shell, grandchild = pids_in(pids, 2)
        assert alive(shell) and alive(grandchild)
        client.kill()
        client.wait(10)
        wait_for(lambda: not alive(shell) and not alive(grandchild), "no orphan left")
    finally:
        client.kill()


def test_failures_of_leapcore_exit_255(box: tuple[Env, Proc], tmp_path: Path) -> None:
    env, _ = box
    done = run(env, "--", "no-such-command-xyz")
    assert done.returncode == 255
    assert done.stderr.decode().strip().splitlines()[-1] == (
        "error: command_not_found: no-such-command-xyz: command not found"
    )
    done = run(env, "--cwd", str(tmp_path / "nope"), "--", "ls")
    assert done.returncode == 255
    assert b"error: bad_cwd: cwd " in done.stderr
    done = run(env, "--env", "A=b\x01", "--env", "BAD", "--", "true")
    assert done.returncode == 255
    assert b"--env takes NAME=VALUE" in done.stderr
    done = run(env, "--bogus", "--", "true")
    assert done.returncode == 255
    done = subprocess.run(command(env, "--token", "t", "--", "true"), capture_output=True,
                          env={**env.env, "LEAPCORE_HUB": "http://127.0.0.1:1"},
                          timeout=TIMEOUT, check=False)  # fmt: skip
    assert done.returncode == 255
    assert b"error: cannot reach the hub" in done.stderr
    # ... while a command's own 255 passes through, without an error line.
    done = run(env, "--", "sh", "-c", "exit 255")
    assert (done.returncode, done.stderr) == (255, b"")


# -- -t: a terminal on the worker ---------------------------------------------------------


def test_t_joins_the_local_terminal_to_the_remote_one(box: tuple[Env, Proc]) -> None:
    """``exec -t`` from a terminal (a PTY of this test): raw keys reach the command, its
    output the terminal, a window change reaches it (SIGWINCH, the new size), the exit
    status is the command's; ``TERM`` is the client's."""
    env, _ = box
    script = (
        'trap \'echo "size:$(stty size)"; seen=1\' WINCH; stty size; echo "term=$TERM"; '
        'read a; echo "got:$a"; while [ -z "$seen" ]; do sleep 0.05; done; read b; exit 5'
    )
    proc, master = on_terminal(
        env, ["exec"], "-t", "--shell", "--", script, extra_env={"TERM": "vt220"}
    )
    try:
        shown = screen_read(master, b"term=vt220")
        assert b"30 100" in shown
        os.write(master, b"abc\r")
        screen_read(master, b"got:abc")
        set_size(master, 120, 40)  # the client gets SIGWINCH and resizes the remote one
        screen_read(master, b"size:40 120")
        os.write(master, b"\r")
        assert finish(proc, master) == 5
    finally:
        if proc.poll() is None:
            proc.kill()


def test_t_tilde_dot_disconnects_and_kills_the_command(
    box: tuple[Env, Proc], tmp_path: Path
) -> None:
    env, _ = box
    pids = tmp_path / "pids"
    proc, master = on_terminal(env, ["exec"], "-t", "--shell", "--", f"echo $$ > {pids}; cat")
    try:
        [pid] = pids_in(pids, 1)
        os.write(master, b"x\r")
        screen_read(master, b"x\r\n")
        os.write(master, b"~.")
        screen_read(master, b"connection closed (~.)")
        assert finish(proc, master) == 255
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not alive(pid), "the command killed")


def test_t_without_a_local_terminal(box: tuple[Env, Proc]) -> None:
    """Like ``ssh -tt``: the command still gets a terminal (80x24, CR LF line ends),
    piped stdin is forwarded, and stderr comes on stdout (a terminal has one output)."""
    env, _ = box
    done = run(
        env,
        "-t",
        "--shell",
        "--",
        "tty; stty size; read a; echo got:$a; echo e >&2",
        input=b"piped\n",
    )
    lines = done.stdout.decode().split("\r\n")
    assert done.returncode == 0, done.stderr
    # The terminal echoes the piped line whenever it arrives, which may be before
    # `tty` prints (ssh -tt does the same): take the echo out, then check order.
    assert "piped" in lines
    lines.remove("piped")
    assert lines[0].startswith("/dev/pts/")
    assert lines[1:4] == ["24 80", "got:piped", "e"]
    assert done.stderr == b""
