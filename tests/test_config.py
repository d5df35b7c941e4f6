"""One typed settings source: values parsed and checked with the variable named; docs/configuration.md's table is it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from maskserve.service.config import Settings, table

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_the_docs_table_is_the_settings_declaration():
    assert table() in DOC.read_text(), "docs/configuration.md's settings table is stale: paste `maskserve settings`"


def test_every_setting_has_help_and_a_checked_type():
    for f in dataclasses.fields(Settings):
        assert f.metadata["help"], f.name
        assert f.type in ("str", "int", "float", "bool"), (f.name, f.type)


@pytest.mark.parametrize("name,raw,message", [
    ("REFLECTION", "maybe", "MASKSERVE_REFLECTION='maybe': expected true or false"),
    ("GRPC_PORT", "70000", "MASKSERVE_GRPC_PORT=70000: must be at most 65535"),
    ("GRPC_PORT", "fifty", "MASKSERVE_GRPC_PORT='fifty': expected an integer"),
    ("TENANT_RATE", "-1", "MASKSERVE_TENANT_RATE=-1.0: must be at least 0"),
    ("EMBEDDING_DTYPE", "bfloat16", "MASKSERVE_EMBEDDING_DTYPE='bfloat16': expected one of float32, float16"),
    ("LRU_ENTRIES", "0", "MASKSERVE_LRU_ENTRIES=0: must be at least 1"),
])
def test_bad_values_stop_with_the_variable_named(monkeypatch, name, raw, message):
    monkeypatch.setenv(f"MASKSERVE_{name}", raw)
    with pytest.raises(ValueError) as info:
        Settings.from_env()
    assert str(info.value) == message


@pytest.mark.parametrize("raw,value", [("true", True), ("0", False), ("Off", False), ("yes", True)])
def test_booleans_are_parsed_as_booleans(monkeypatch, raw, value):
    monkeypatch.setenv("MASKSERVE_REFLECTION", raw)
    assert Settings.from_env().reflection is value
