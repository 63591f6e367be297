"""`condense TECHNIQUE --help` lists every field of the technique's configs, with its type and default."""
import dataclasses
import importlib

import pytest

from condense import cli


def _cls(path):
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


@pytest.mark.parametrize("command, configs", [("quantize", cli.QUANT_SCHEMES), ("prune", cli.PRUNE_METHODS),
                                              *[(n, {n: p}) for n, p in cli.TECHNIQUES.items()]])
def test_help_lists_every_config_field(command, configs, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for path in configs.values():
        cls = _cls(path)
        section = out.split(f"{cls.__name__} fields (--set FIELD=VALUE)\n", 1)[1].split("\n\n", 1)[0]
        names = [line.split(":", 1)[0].strip() for line in section.splitlines()]
        assert names == [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def test_each_set_example_names_a_field_of_the_default_config(capsys):
    for command, default in (("quantize", cli.QUANT_SCHEMES["weight-only"]),
                             ("prune", cli.PRUNE_METHODS["unstructured"])):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        example = out.split("e.g. --set ", 1)[1].split("=", 1)[0]
        assert example in {f.name for f in dataclasses.fields(_cls(default))}, (command, example)
