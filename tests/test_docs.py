"""The documentation states what the code does: tables that must not drift."""

from __future__ import annotations

import re
from pathlib import Path

import leapcore.errors as errors
from leapcore_cli import common

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_error_class_is_in_the_api_table_with_its_code() -> None:
    text = (DOCS / "api.md").read_text()
    for name in errors.__all__:
        cls = getattr(errors, name)
        parent = cls.__mro__[1].__name__
        row = f"| `{name}` | `{parent}` | `{cls.code}` |"
        assert row in text, f"docs/api.md lacks the row for {name}: {row}"


def test_error_codes_are_unique() -> None:
    codes = [getattr(errors, name).code for name in errors.__all__]
    assert len(codes) == len(set(codes))


def test_exit_codes_in_cli_docs_match_the_code() -> None:
    text = (DOCS / "cli.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (\d) \|", text, re.MULTILINE)}
    actual = {
        value
        for name, value in vars(common).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert documented == actual


def test_getting_started_example_runs() -> None:
    text = (DOCS / "getting-started.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks, "docs/getting-started.md has no python example"
    for block in blocks:
        exec(compile(block, "getting-started.md", "exec"), {})


def test_protocol_state_diagrams_are_generated_from_the_tables() -> None:
    from leapcore.proto.diagrams import DIAGRAMS, update_text

    text = (DOCS / "protocol.md").read_text()
    assert update_text(text) == text, "run: python -m leapcore.proto.diagrams docs/protocol.md"
    for name in DIAGRAMS:
        assert f"<!-- diagram:{name} -->" in text, f"docs/protocol.md lacks diagram {name}"
