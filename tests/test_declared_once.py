"""Concepts declared once and derived elsewhere: the generator's parameters (engines/automatic.Options) are the
CLI's flags, the proto's AutomaticOptions with the defaults its comments state, and the table in docs/python.md."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from typer.testing import CliRunner

from maskserve.cli import app
from maskserve.engines import families
from maskserve.engines.automatic import Options
from maskserve.service.proto import pb

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_table_is_the_options():
    assert Options.table() in (ROOT / "docs" / "python.md").read_text(), \
        "docs/python.md's generator table is stale: paste Options.table()"


def test_the_proto_carries_every_option_with_its_default():
    proto = (ROOT / "proto" / "maskserve" / "v1" / "maskserve.proto").read_text()
    on_wire = set(pb.AutomaticOptions.DESCRIPTOR.fields_by_name)
    options = {f.name: f for f in dataclasses.fields(Options)}
    assert on_wire == set(options) - {"output_mode"}  # the output mode is the client's: records are made there
    for name, f in options.items():
        if name in ("output_mode", "point_grids"):
            continue
        comment = re.search(rf"\b{name} = \d+;\s*//\s*(.*)", proto).group(1)
        reference = f.metadata["reference"]
        if reference is None:  # the family's: each family's default is named
            for family in (f for f in map(families.get, families.names()) if not f.no_generator):
                assert str(family.generator_defaults[name]) in comment, (name, comment)
            continue
        stated = re.split(r"[;:]", comment)[0].strip()
        value = {"true": True, "false": False}.get(stated)
        if value is None:
            value = eval(stated, {"__builtins__": {}})  # numbers and "512 / 1500"
        assert value == reference, (name, stated, reference)


def test_the_cli_has_a_flag_per_option():
    text = CliRunner().invoke(app, ["segment-everything", "--help"], env={"COLUMNS": "400"}).output
    for f in dataclasses.fields(Options):
        flag = "--" + f.name.replace("_", "-")
        assert (flag in text) == f.metadata["cli"], (flag, f.metadata["cli"])
    assert "--single-mask-output" in text
