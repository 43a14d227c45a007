"""A deadline that passes is a documented exit: 7 (unavailable, retry later), one clear line."""

from __future__ import annotations

import argparse
import json

import pytest

from leapcore.errors import DeadlineExceeded
from leapcore_cli.common import EXIT_UNAVAILABLE, make_parser, run


def _failing(exc: Exception) -> object:
    def handler(args: argparse.Namespace) -> int:
        raise exc

    return handler


@pytest.mark.parametrize("as_json", [False, True])
def test_a_deadline_exits_7_with_one_line(
    as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = make_parser("leapcore", "test")
    parser.add_argument("--json", action="store_true")
    error = DeadlineExceeded("ping: no answer from worker w-1 within 30s")
    argv = ["--json"] if as_json else []
    assert run(parser, _failing(error), argv) == EXIT_UNAVAILABLE == 7  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    if as_json:
        assert json.loads(out) == {
            "error": {
                "code": "deadline_exceeded",
                "message": "ping: no answer from worker w-1 within 30s",
            }
        }
    else:
        assert err == "error: ping: no answer from worker w-1 within 30s\n"
        assert out == ""
