"""``leapcore remote call`` and ``leapcore remote worker services`` as real processes, through
a real hub to a real ``leapcore-worker`` (classic mode) serving extra methods
(``--services call_services:install``): JSON in and out, stdin, ``--raw`` with bytes that
are not UTF-8, error answers and their exit status, usage errors that send nothing, the
listing of what the worker serves."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator

import pytest
from support.call_services import BINARY, METHODS, TEXT
from support.procs import TIMEOUT, Env, script

from leapcore_cli.call import render_answer, service_rows, services_of

#: The stock worker's methods: name -> (kind, public).
BUILTIN = {
    "exec": ("byte_stream", False),
    "exec.resize": ("rpc", False),
    "exec.signal": ("rpc", False),
    "exec.stderr": ("byte_stream", False),
    "exec.wait": ("rpc", False),
    "info": ("rpc", False),
    "ping": ("rpc", True),
    **{f"pty.{m}": ("rpc", False) for m in ("capture", "kill", "list", "resize", "send")},
    **{f"pty.{m}": ("rpc", False) for m in ("spawn", "wait")},
    "pty.attach": ("byte_stream", False),
    "tcp": ("byte_stream", False),
    **{f"workspace.{m}": ("rpc", False) for m in ("list", "open", "remove")},
}
#: What the test worker serves, at least.
SERVED = {**BUILTIN, **METHODS}


@pytest.fixture(name="box", scope="module")
def box_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One hub, logged in, and one classic worker ``box`` with ``call_services`` loaded."""
    env = Env(tmp_path_factory.mktemp("call"))
    try:
        env.start_hub()
        env.login()
        flags = ["--encryption-mode", "classic", "--services", "call_services:install"]
        worker = env.start_worker("box", env.reg_key(), flags=flags, PYTHONPATH=env.tests_on_path())
        env.wait_online("box")
        worker.logged(f"services: call_services:install added {', '.join(sorted(METHODS))}")
        yield env
    finally:
        env.cleanup()


def remote(
    env: Env, *args: str, stdin: bytes | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """``leapcore remote ARGS`` (bytes in and out; the hub from ``LEAPCORE_HUB``)."""
    return subprocess.run(
        [script("leapcore"), "remote", *args, *env.client_flags()],
        env={**env.env, "LEAPCORE_HUB": env.url},
        input=b"" if stdin is None else stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def call(env: Env, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return remote(env, "call", "--worker", "box", *args, stdin=stdin)


def calls_so_far(env: Env) -> int:
    proc = call(env, "demo.calls", "--json")
    assert proc.returncode == 0, proc.stderr
    count: int = json.loads(proc.stdout)["calls"]
    return count


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    return proc.stdout.decode()


# -- remote call -----------------------------------------------------------------------------


def test_json_in_json_out(box: Env) -> None:
    out = ok(call(box, "demo.add", '{"a": 2, "b": 40}'))
    assert out == '{\n  "sum": 42\n}\n'  # indented for reading
    assert ok(call(box, "demo.add", '{"a": 2, "b": 40}', "--json")) == '{"sum":42}\n'
    # The payload goes as typed: key order, spaces and all.
    typed = '{"z": 1,   "a": [1, 2.5, "\\u00e9"]}'
    assert ok(call(box, "demo.echo", typed, "--json")) == '{"z":1,"a":[1,2.5,"\\u00e9"]}\n'
    assert ok(call(box, "demo.echo", typed, "--raw")) == typed
    # No payload: {}.
    assert ok(call(box, "demo.echo", "--json")) == "{}\n"
    # Any JSON value, not only objects.
    assert ok(call(box, "demo.echo", "[1, null, true]", "--json")) == "[1,null,true]\n"
    assert ok(call(box, "demo.echo", '"x"')) == '"x"\n'


def test_payload_from_stdin(box: Env) -> None:
    proc = call(box, "demo.add", "-", "--json", stdin=b'{"a": 1,\n "b": 2}\n')
    assert ok(proc) == '{"sum":3}\n'
    big = {"items": list(range(50_000))}  # 300 KB: several channel frames each way
    out = ok(call(box, "demo.echo", "-", "--json", stdin=json.dumps(big).encode()))
    assert json.loads(out) == big


def test_raw_bytes_both_ways(box: Env) -> None:
    data = bytes(range(256)) * 64 + b"\xff\xfe"
    proc = call(box, "demo.echo", "--raw", "-", stdin=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data  # unchanged, no newline added
    proc = call(box, "demo.binary", "--raw")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == BINARY
    proc = call(box, "demo.echo", "--raw")  # no payload: an empty one
    assert proc.returncode == 0 and proc.stdout == b"", proc.stderr


def test_a_reader_that_goes_away(box: Env) -> None:
    """stdout closed before the answer comes (`| head -c 0`): exit 141, as SIGPIPE would."""
    proc = subprocess.Popen(
        [script("leapcore"), "remote", "call", "--worker", "box", "--raw", "demo.binary",
         *box.client_flags()],
        env={**box.env, "LEAPCORE_HUB": box.url},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the only reader: the answer's write fails with EPIPE
    assert proc.wait(TIMEOUT) == 128 + signal.SIGPIPE
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_an_answer_that_is_not_json(box: Env) -> None:
    # Text: printed, its control characters (not newline, tab) escaped; --json: a string.
    assert ok(call(box, "demo.text")) == "plain text\tand a tab\n\\x1b[31mred\n"
    assert json.loads(ok(call(box, "demo.text", "--json"))) == TEXT
    # Not UTF-8: an error (exit 1) that points to --raw; nothing on stdout.
    proc = call(box, "demo.binary")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert proc.stderr.decode() == (
        "error: the answer is 12 bytes that are not UTF-8 text; use --raw to write them as "
        "they are\n"
    )
    proc = call(box, "demo.binary", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["code"] == "local_error"


def test_error_answers_exit_8(box: Env) -> None:
    proc = call(box, "demo.fail")
    assert proc.returncode == 8
    assert proc.stdout == b""
    assert proc.stderr.decode() == "error: bad_thing: it went wrong\n"
    proc = call(box, "demo.fail", "--json")
    assert proc.returncode == 8
    assert json.loads(proc.stdout) == {
        "error": {
            "code": "remote_error",
            "message": "bad_thing: it went wrong",
            "remote_code": "bad_thing",
            "remote_message": "it went wrong",
        }
    }
    proc = call(box, "demo.add", '{"a": 1}')
    assert proc.returncode == 8
    assert proc.stderr.decode() == 'error: invalid_argument: demo.add takes {"a": N, "b": N}\n'
    # A method the worker does not serve, or not as an RPC: its `unimplemented`.
    for method in ("demo.nope", "demo.ticks"):
        proc = call(box, method)
        assert proc.returncode == 8
        assert proc.stderr.decode() == f"error: unimplemented: no method '{method}'\n"


def test_timeout_exits_7(box: Env) -> None:
    proc = call(box, "demo.hang", "--timeout", "1")
    assert proc.returncode == 7
    assert proc.stderr.decode() == "error: demo.hang: no answer from worker " + _box_id(box) + (
        " within 1s\n"
    )


def _box_id(env: Env) -> str:
    worker_id: str = env.workers()["box"]["id"]
    return worker_id


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["demo.add", '{"a": 1,'], None, "the JSON payload is not valid JSON: Expecting "
         "property name enclosed in double quotes at line 1 column 9"),
        (["demo.add", "{'a': 1}"], None, "the JSON payload is not valid JSON: Expecting "
         "property name enclosed in double quotes at line 1 column 2"),
        (["demo.add", "NaN"], None, "the JSON payload is not valid JSON: NaN is not JSON"),
        (["demo.add", "-"], b"", "the JSON payload on stdin is not valid JSON: Expecting "
         "value at line 1 column 1"),
        (["demo.add", "-"], b'"\xff"', "the JSON payload on stdin is not UTF-8 (byte 1)"),
        (["Demo.add"], None, "METHOD: method 'Demo.add' does not match"),
    ],
)  # fmt: skip
def test_usage_errors_send_nothing(
    box: Env, args: list[str], stdin: bytes | None, message: str
) -> None:
    before = calls_so_far(box)
    proc = call(box, *args, stdin=stdin)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert f"leapcore remote call: error: {message}" in proc.stderr.decode()
    assert calls_so_far(box) == before
    # The same call with a good payload is counted (so the count above could have moved).
    assert call(box, "demo.add", '{"a": 1, "b": 1}').returncode == 0
    assert calls_so_far(box) == before + 1


def test_usage_error_with_json_is_a_document(box: Env) -> None:
    proc = call(box, "demo.add", "{", "--json")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "usage"
    assert error["message"].startswith("the JSON payload is not valid JSON: ")
    proc = call(box, "demo.add", "--raw", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == {
        "code": "usage",
        "message": "--raw and --json do not go together",
    }


# -- worker services -----------------------------------------------------------------------


def test_worker_services_json_and_table(box: Env) -> None:
    worker_id = _box_id(box)
    info = json.loads(ok(remote(box, "worker", "info", "--worker", "box", "--json")))["info"]
    capabilities = info["capabilities"]  # unchanged: the sorted names
    assert capabilities == sorted(capabilities)
    assert set(SERVED) <= set(capabilities)

    proc = remote(box, "worker", "services", "--worker", "box", "--json")
    document = json.loads(ok(proc))
    assert document["worker_id"] == worker_id
    listed = document["services"]
    assert [s["name"] for s in listed] == capabilities  # the same methods, in the same order
    assert set(listed[0]) == {"name", "kind", "public"}
    by_name = {s["name"]: (s["kind"], s["public"]) for s in listed}
    # The stock methods this test knows (the stock worker may serve more) and every added one.
    assert {name: by_name[name] for name in SERVED} == SERVED
    added = {name for name in by_name if name.startswith("demo.")}
    assert added == set(METHODS)
    assert info["services"] == listed  # the list is the info document's

    table = ok(remote(box, "worker", "services", "--worker", "box")).splitlines()
    assert table[0].split() == ["NAME", "KIND", "ACCESS"]
    rows = [line.split() for line in table[1:]]
    assert rows == [[s["name"], s["kind"], "public" if s["public"] else "owner"] for s in listed]
    assert ["demo.calls", "rpc", "public"] in rows and ["ping", "rpc", "public"] in rows
    assert ["demo.pipe", "byte_stream", "owner"] in rows
    kind_at, access_at = table[0].index("KIND"), table[0].index("ACCESS")
    for line in table:  # aligned columns, two spaces apart
        assert line[kind_at - 2 : kind_at] == "  " and line[kind_at] != " "
        assert line[access_at - 2 : access_at] == "  " and line[access_at] != " "

    # `worker info`'s human form does not dump the list, and its capabilities line is as
    # it was.
    human = ok(remote(box, "worker", "info", "--worker", "box"))
    assert "services" not in human
    assert f"capabilities:    {', '.join(capabilities)}" in human


# -- the output rules, without processes -----------------------------------------------------


def test_an_older_workers_info_lists_its_capabilities() -> None:
    old = {"name": "old", "capabilities": ["info", "ping"]}
    assert services_of(old) == [
        {"name": "info", "kind": None, "public": None},
        {"name": "ping", "kind": None, "public": None},
    ]
    assert service_rows(services_of(old)) == [("info", "-", "-"), ("ping", "-", "-")]
    bad = {"services": [{"name": "x\x1b[2J", "kind": "rpc", "public": True}, "junk"]}
    assert service_rows(services_of(bad)) == [("x\\x1b[2J", "rpc", "public")]


def test_answers_render() -> None:
    assert render_answer(b'{"b": 1, "a": [true]}', compact=False) == (
        '{\n  "b": 1,\n  "a": [\n    true\n  ]\n}\n'
    )
    assert render_answer(b'{"b": 1, "a": [true]}', compact=True) == '{"b":1,"a":[true]}\n'
    assert render_answer(b'"\xc3\xa9\\u001b"', compact=True) == '"\\u00e9\\u001b"\n'
    assert render_answer(b"", compact=False) == ""
    assert render_answer(b"", compact=True) == '""\n'
    assert render_answer(b"no newline", compact=False) == "no newline\n"
    assert render_answer(b"bell\x07\r\n", compact=False) == "bell\\x07\\r\n"
    assert render_answer(b"NaN", compact=True) == '"NaN"\n'  # not JSON: text
