import pytest

from condense.core.config import config_from_dict
from condense.errors import ConfigError, CondenseError
from condense.searching import KNOBS, SearchConfig, pareto_front, parse_budget
from condense.searching.knobs import select_knobs
from condense.searching.storage import masked, storage_url


def test_parse_budget():
    assert parse_budget("1%") == pytest.approx(0.01)
    assert parse_budget(" 2.5 %") == pytest.approx(0.025)
    assert parse_budget("0.03") == pytest.approx(0.03)
    assert parse_budget(0) == 0.0
    for bad in ("1x", "150%", -0.1, "abc%"):
        with pytest.raises(ConfigError, match="budget"):
            parse_budget(bad)


def test_search_config_round_trip_and_validation():
    cfg = SearchConfig(budget="1%", trials=7, knobs=["prune", "quantize"], finetune={"steps": 5})
    assert cfg.budget == pytest.approx(0.01) and cfg.knobs == ("prune", "quantize")
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="trials"):
        SearchConfig(trials=0)
    with pytest.raises(ConfigError, match="knobs"):
        SearchConfig(knobs=())
    assert config_from_dict(SearchConfig(distill_layers=[3, 4]).to_dict()).distill_layers == (3, 4)
    for bad in ((), (0,), (True,), ("3",)):
        with pytest.raises(ConfigError, match="distill_layers"):
            SearchConfig(distill_layers=bad)


def test_knob_selection_orders_steps_and_names_unknown_knobs():
    knobs, skipped = select_knobs(("quantize", "prune"))
    assert [k.name for k in knobs] == ["prune", "quantize"]  # pipeline order, not the order asked for
    assert skipped == {}
    with pytest.raises(CondenseError, match="unknown search knob 'sparsify'.*prune"):
        select_knobs(("sparsify",))
    auto, skipped = select_knobs(("auto",))
    assert {k.name for k in auto} | set(skipped) == set(KNOBS)  # every knob either searched or said why not
    assert {"prune", "quantize"} <= {k.name for k in auto}


def test_pareto_front_exact():
    rows = [{"number": 0, "latency_s": 1.0, "size_bytes": 10, "metric": 0.90},
            {"number": 1, "latency_s": 2.0, "size_bytes": 5, "metric": 0.90},  # smaller: stays
            {"number": 2, "latency_s": 2.0, "size_bytes": 10, "metric": 0.85},  # beaten by 0 on all three
            {"number": 3, "latency_s": 3.0, "size_bytes": 20, "metric": 0.95},  # best quality: stays
            {"number": 4, "latency_s": 1.0, "size_bytes": 10, "metric": 0.90}]  # ties 0: both stay
    assert pareto_front(rows) == [0, 1, 3, 4]
    assert pareto_front(rows, higher_is_better=False) == [0, 1, 2, 4]


def test_storage_urls_and_masking(tmp_path):
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/search.db"
    assert storage_url(None, None) is None
    assert storage_url("postgres://u:pw@h/db", None).startswith("postgresql+psycopg")
    assert masked("postgresql+psycopg2://u:secret@h:5432/db") == "postgresql+psycopg2://u:***@h:5432/db"


def test_probe_groups_by_name_prefix():
    from condense.searching.sensitivity import group_by_prefix

    names = [f"bert.layers.{i}.{n}" for i in range(6) for n in ("attn.query", "attn.key", "ffn_in", "ffn_out")]
    groups = group_by_prefix(names, 12)
    assert list(groups) == [f"bert.layers.{i}" for i in range(6)]  # one block at a time; deeper gives 24 groups
    assert all(len(v) == 4 for v in groups.values())
    assert group_by_prefix(names, 100) == {n: [n] for n in names}


def test_import_condense_does_not_import_optuna():
    import subprocess
    import sys

    code = "import condense, sys; condense.SearchConfig; print('optuna' in sys.modules, 'sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_knobs_that_cannot_apply_to_the_model_are_skipped_with_the_reason():
    from condense.tasks import get_task
    from condense.tasks.gpt import GPT, GPTConfig

    from condense.tasks.digits import DigitsCNN

    digits = get_task("digits")  # its architecture decides, not its weights: an untrained DigitsCNN (no training)
    knobs, skipped = select_knobs(("auto",), model=DigitsCNN(), task=digits, cfg=SearchConfig())
    assert [k.name for k in knobs] == ["prune", "factorize", "early_exit", "quantize"]
    assert list(skipped) == ["distill"] and "DigitsCNN has no block list" in skipped["distill"]
    with pytest.raises(CondenseError, match="knob 'distill' does not apply to task 'digits'.*drop it"):
        select_knobs(("distill", "quantize"), model=DigitsCNN(), task=digits, cfg=SearchConfig())
    # a 2-block GPT: no distill_layers choice (2, 3, 4) is a smaller student; 4 blocks: only 2 and 3 are
    two = GPT(GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=8))
    _, skipped = select_knobs(("auto",), model=two, task=digits, cfg=SearchConfig())
    assert "distill_layers=[1]" in skipped["distill"] and "early_exit" not in skipped
    four = GPT(GPTConfig(block_size=8, n_layer=4, n_head=2, n_embd=8))
    knobs, skipped = select_knobs(("auto",), model=four, task=digits, cfg=SearchConfig())
    assert skipped == {} and "distill" in [k.name for k in knobs]
    from condense.searching.knobs import distill_choices

    assert distill_choices(four, SearchConfig()) == [2, 3]


def test_empty_or_unknown_knobs_are_refused_before_any_work(tmp_path, capsys):
    from condense.cli import main

    with pytest.raises(ConfigError, match="unknown knob.*'sparsify'.*choose from: auto, distill, early_exit"):
        SearchConfig(knobs=("prune", "sparsify"))
    for arg, says in (("", "knobs is empty; name at least one of: auto, distill, early_exit, factorize, prune, "
                           "quantize"),
                      (" , ", "knobs is empty"), ("prune,bogus", "unknown knob(s) 'bogus'; choose from: auto")):
        rc = main(["search", "--task", "condense.testing:tiny_task", "--budget", "1%", "--knobs", arg,
                   "--out", str(tmp_path / "s")])
        err = capsys.readouterr().err
        assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()  # refused before the study (or anything) was created
