"""``leapcore remote session ...`` as real processes, through a real hub to a real
``leapcore-worker`` process (classic mode): a session spawned by one command is typed into,
captured, resized and killed by the next ones (it outlives each command's channel), with
``--json`` for scripts; clear failures for an unknown id, a bad size, a missing command."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.procs import TIMEOUT, Env, Proc, script, wait_for, worker_box
from support.termkit import finish, on_terminal, screen_read, set_size


@pytest.fixture(name="box", scope="module")
def box_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Proc]]:
    """One hub and one worker ``box`` for the module (each test's processes are its own)."""
    with worker_box(tmp_path_factory.mktemp("session")) as box:
        yield box


def session(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    verb, rest = args[0], args[1:]
    argv = [script("leapcore"), "remote", "session", verb, "--worker", "box"]
    return subprocess.run(
        [*argv, *env.client_flags(), *rest],
        env={**env.env, "LEAPCORE_HUB": env.url},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ok_json(env: Env, verb: str, *args: str) -> Any:
    proc = session(env, verb, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_spawn_type_capture_resize_kill(box: tuple[Env, Proc]) -> None:
    env, _ = box
    spawned = ok_json(env, "spawn", "--cols", "70", "--rows", "12", "--", "sh")
    sid = spawned["id"]
    assert (spawned["cols"], spawned["rows"], spawned["running"]) == (70, 12, True)
    assert session(env, "send-keys", sid, "echo hel''lo", "Enter").returncode == 0

    def hello() -> Any:
        doc = ok_json(env, "capture", sid)
        return doc if any("hello" in line for line in doc["lines"]) else None

    doc = wait_for(hello, "hello on the screen")
    assert len(doc["lines"]) == 12 and doc["session"]["id"] == sid
    assert "hello" in session(env, "capture", sid).stdout  # the human form: the text

    assert session(env, "resize", sid, "100", "30").returncode == 0
    session(env, "send-keys", sid, "stty size", "Enter")
    wait_for(lambda: "30 100" in session(env, "capture", sid).stdout, "stty size 30 100")

    listed = ok_json(env, "list")["sessions"]
    assert [(s["id"], s["cols"], s["rows"], s["running"]) for s in listed] == [(sid, 100, 30, True)]
    table = session(env, "list").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "SIZE", "STATE"]
    assert f"{sid}   100x30  running" in table

    killed = ok_json(env, "kill", sid)
    assert (killed["id"], killed["running"]) == (sid, False)
    assert ok_json(env, "list") == {"sessions": []}


def test_key_names_reach_a_full_screen_program(box: tuple[Env, Proc]) -> None:
    env, _ = box
    sid = ok_json(env, "spawn", "--shell", "--", "cat -vT")["id"]
    session(env, "send-keys", sid, "a", "Tab", "C-a", "Up", "Enter")
    # cat -vT echoes the keys as typed, then prints them made visible.
    wait_for(lambda: "a^I^A^[[A" in session(env, "capture", sid).stdout, "the keys, made visible")
    session(env, "send-keys", sid, "C-d")
    wait_for(lambda: not ok_json(env, "list")["sessions"][0]["running"], "cat to exit")
    assert ok_json(env, "kill", sid)["exit_status"] == 0


def test_clear_failures(box: tuple[Env, Proc]) -> None:
    env, _ = box
    before = ok_json(env, "list")
    proc = session(env, "capture", "424242")
    assert proc.returncode == 3  # not found
    assert "no terminal session '424242'" in proc.stderr
    proc = session(env, "capture", "424242", "--json")
    assert json.loads(proc.stdout)["error"]["code"] == "terminal_not_found"
    proc = session(env, "spawn", "--cols", "100000")
    assert proc.returncode != 0 and "cols must be 1..1000" in proc.stderr
    proc = session(env, "spawn", "--", "no-such-command-here")
    assert proc.returncode == 8 and "no-such-command-here: command not found" in proc.stderr
    proc = session(env, "spawn", "--env", "NOVALUE")
    assert proc.returncode == 2 and "--env takes NAME=VALUE" in proc.stderr
    assert ok_json(env, "list") == before  # nothing was left behind


# -- interactive: the person's terminal is a PTY of this test --------------------------------


def test_shell_interactive_resize_and_exit_status(box: tuple[Env, Proc]) -> None:
    env, _ = box
    proc, master = on_terminal(env, ["shell"], "--", "sh")
    try:
        screen_read(master, b"\x1b[2J")  # attached: the snapshot
        os.write(master, b"stty size; echo hi''there\r")
        assert b"30 100" in screen_read(master, b"hithere")  # stty ran first
        set_size(master, 120, 40)  # the kernel sends the client SIGWINCH
        wait_for(  # the resize is a call of its own: wait for it before typing
            lambda: any(
                (x["cols"], x["rows"], x["running"]) == (120, 40, True)
                for x in ok_json(env, "list")["sessions"]
            ),
            "the session resized to 120x40",
        )
        os.write(master, b"stty size\r")
        screen_read(master, b"40 120")
        os.write(master, b"exit 7\r")
        assert finish(proc, master) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
    # The shell's session was forgotten with its end.
    assert not [s for s in ok_json(env, "list")["sessions"] if s["running"]]


def test_detach_and_attach_again(box: tuple[Env, Proc]) -> None:
    env, _ = box
    proc, master = on_terminal(env, ["shell"], "--", "sh")
    try:
        os.write(master, b"echo one''two\r")
        screen_read(master, b"onetwo")
        os.write(master, b"\r~.")
        shown = screen_read(master, b"keeps running")
        assert finish(proc, master) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    sid = re.search(rb"detached; session (\S+) keeps running", shown)
    assert sid is not None
    session_id = sid.group(1).decode()
    [listed] = [s for s in ok_json(env, "list")["sessions"] if s["id"] == session_id]
    assert listed["running"]

    proc, master = on_terminal(env, ["session", "attach"], session_id)
    try:
        screen_read(master, b"onetwo")  # the snapshot redraws the screen first
        os.write(master, b"exit 3\r")
        assert finish(proc, master) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ok_json(env, "kill", session_id)["exit_status"] == 3


def test_vi_through_the_persons_terminal(box: tuple[Env, Proc], tmp_path: Path) -> None:
    """``remote shell -- vi FILE`` driven from a PTY of this test: keys typed there edit
    the file; a window change resizes the session, and ``capture`` (another client) shows
    vi's screen redrawn at the new size; ``:wq`` ends it with vi's status."""
    env, _ = box
    target = tmp_path / "notes.txt"
    proc, master = on_terminal(env, ["shell"], "--", "vi", str(target), cols=90, rows=20)
    try:
        os.write(master, b"ihello from the test\x1b")
        screen_read(master, b"hello from the test")

        def session_of_size(cols: int, rows: int) -> Any:
            running = [s for s in ok_json(env, "list")["sessions"] if s["running"]]
            return running[0] if running and (running[0]["cols"], running[0]["rows"]) == (
                cols, rows) else None  # fmt: skip

        sid = wait_for(lambda: session_of_size(90, 20), "the vi session at 90x20")["id"]
        set_size(master, 60, 15)
        wait_for(lambda: session_of_size(60, 15), "the session resized to 60x15")

        def redrawn() -> Any:
            doc = ok_json(env, "capture", sid)
            lines = doc["lines"]
            top = lines[0].rstrip()
            return doc if len(lines) == 15 and top == "hello from the test" else None

        doc = wait_for(redrawn, "vi's screen at 60x15")
        assert all(len(line) <= 60 for line in doc["lines"])
        assert sum(line.startswith("~") for line in doc["lines"]) >= 10  # vi's empty lines
        os.write(master, b":wq\r")
        assert finish(proc, master) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert target.read_text() == "hello from the test\n"
