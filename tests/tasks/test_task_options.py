import pytest

from condense.errors import CondenseError
from condense.tasks import check_options, get_task


def test_unknown_options_are_refused_before_the_factory_runs():
    with pytest.raises(CondenseError, match="unknown option 'bogus' for task 'digits'; valid options: channels, "
                                            "epochs"):
        get_task("digits", bogus=1)  # would train for a minute if the factory ran
    with pytest.raises(CondenseError, match="unknown option 'seedd' .* valid options: seed"):
        get_task("condense.testing:tiny_task", seedd=1)
    assert get_task("condense.testing:tiny_task", seed=1).spec == {"factory": "condense.testing:tiny_task",
                                                                    "options": {"seed": 1}}


def test_factories_taking_any_keyword_and_required_options():
    check_options(lambda **kw: None, {"anything": 1}, what="task 'x'")
    with pytest.raises(CondenseError, match="task 'x' needs the option 'size'; pass --task-option size=VALUE"):
        check_options(lambda size, depth=2: None, {"depth": 3}, what="task 'x'")
