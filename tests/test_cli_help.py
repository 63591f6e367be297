"""`condense TECHNIQUE --help` lists every field of the technique's configs, with its type and default, and shows
examples of its own that build a valid config."""
import dataclasses
import shlex

import pytest

from condense import cli
from condense.cli import compress, names
from condense.cli.common import config_class

QUANT_SCHEMES, PRUNE_METHODS = names.methods("quantize"), names.methods("prune")
TECHNIQUES = {n: names.technique(n) for n in names.TECHNIQUE_COMMANDS}
DEFAULT_CONFIG = {"quantize": QUANT_SCHEMES["int8"], "prune": PRUNE_METHODS["unstructured"], **TECHNIQUES}


def _help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command, configs", [("quantize", QUANT_SCHEMES), ("prune", PRUNE_METHODS),
                                              *[(n, {n: p}) for n, p in TECHNIQUES.items()]])
def test_help_lists_every_config_field(command, configs, capsys):
    out = _help(command, capsys)
    for path in configs.values():
        cls = config_class(path)
        section = out.split(f": {cls.__name__} fields (--set FIELD=VALUE)\n", 1)[1].split("\n\n", 1)[0]
        names_ = [line.split(":", 1)[0].strip() for line in section.splitlines()]
        assert names_ == [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


@pytest.mark.parametrize("command", sorted(DEFAULT_CONFIG))
def test_the_set_example_names_a_field_of_the_default_config(command, capsys):
    out = _help(command, capsys)
    example = out.split("e.g. --set ", 1)[1].split("=", 1)[0]
    assert example in {f.name for f in dataclasses.fields(config_class(DEFAULT_CONFIG[command]))}, example


@pytest.mark.parametrize("command", sorted(DEFAULT_CONFIG))
def test_each_help_example_is_of_its_own_command_and_builds_its_config(command, capsys):
    """Every example line under `examples:` runs this command, parses, and its flags build a valid config of the
    technique it picks (so `prune --help` can not show a quantize example again)."""
    lines = _help(command, capsys).split("\nexamples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(lines) >= 2
    parser = cli.build_parser()
    for line in lines:
        argv = shlex.split(line, comments=True)
        assert argv[:2] == ["condense", command], line
        args = parser.parse_args(argv[1:])
        cfg, label = compress.CONFIG_OF[command](args)
        picked = {"quantize": lambda: QUANT_SCHEMES[args.scheme],
                  "prune": lambda: PRUNE_METHODS[args.method]}.get(command, lambda: TECHNIQUES[command])()
        assert type(cfg) is config_class(picked) and label in (command, getattr(args, "scheme", None),
                                                               getattr(args, "method", None)), line
        for pair in args.set:  # each --set landed in the config
            key = pair.split("=", 1)[0]
            assert key in {f.name for f in dataclasses.fields(cfg)}, line


def test_a_bad_set_names_an_example_of_the_same_command(tmp_path, capsys):
    assert cli.main(["prune", "--task", "digits", "--set", "scope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == "condense: error: --set 'scope' must be KEY=VALUE, e.g. --set scope=global\n"


def test_cli_choices_are_the_registered_transforms():
    """The CLI reads its --scheme / --method choices from the transform registry (no table of its own)."""
    from condense.core.transforms import TRANSFORMS

    parser = cli.build_parser()
    for command, flag in (("quantize", "--scheme"), ("prune", "--method")):
        sub = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001
        action = next(a for a in sub._actions if flag in a.option_strings)  # noqa: SLF001
        assert sorted(action.choices) == sorted(TRANSFORMS.names(command)), command
