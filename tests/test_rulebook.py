from pathlib import Path

import pytest

from mechaudit.errors import InputError
from mechaudit.rulebook import load_rulebook

GOOD_RULE = '''
[rules.D101]
name = "dead-units"
check = "dead_units"
severity = "warning"
[rules.D101.params]
max_dead_fraction = 0.5
[rules.D101.docs]
summary = "s"
what = "w"
why = "y"
how = "h"
fix = "f"
references = ["r"]
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "book.toml"
    path.write_text(text)
    return path


def test_default_rulebook_is_valid_and_documented() -> None:
    book = load_rulebook("default")
    assert {"D101", "L201", "L202"} <= set(book.rules)
    for rule in book.rules.values():
        assert rule.docs.what and rule.docs.why and rule.docs.how and rule.docs.fix and rule.docs.references
    assert len(book.sha256) == 64


def test_custom_rulebook_loads_and_casts_ints_to_floats(tmp_path: Path) -> None:
    book = load_rulebook(str(write(tmp_path, GOOD_RULE.replace("0.5", "1"))))
    assert book.rules["D101"].params.max_dead_fraction == 1.0


@pytest.mark.parametrize("old, new, message", [
    ('check = "dead_units"', 'check = "nonsense"', "unknown check 'nonsense'"),
    ('severity = "warning"', 'severity = "fatal"', "not one of"),
    ("max_dead_fraction = 0.5", 'max_dead_fraction = "high"', "must be float"),
    ("max_dead_fraction = 0.5", "max_dead_fraction = 3.0", "outside"),
    ("max_dead_fraction = 0.5", "colour = 1", "unknown key 'colour'"),
    ('name = "dead-units"', 'name = "dead-units"\nextra = 1', "unknown key 'extra'"),
    ("[rules.D101]", "[rules.X1]", "must be D, L or R"),
    ('fix = "f"\n', "", "missing documentation section 'fix'"),
])
def test_rulebook_validation_rejects(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = GOOD_RULE.replace(old, new)
    text = text.replace("[rules.D101.", "[rules.X1.") if "X1" in new else text
    with pytest.raises(InputError, match=message):
        load_rulebook(str(write(tmp_path, text)))


def test_unknown_builtin_rulebook() -> None:
    with pytest.raises(InputError, match="no such built-in rulebook"):
        load_rulebook("strictest")


def test_select_and_ignore_by_id_and_prefix() -> None:
    book = load_rulebook("default")
    ids = lambda rules: [r.id for r in rules]  # noqa: E731
    default = [rule.id for rule in book.rules.values() if not rule.opt_in]
    assert ids(book.select(("L",))) == [r for r in book.rules if r.startswith("L")]
    assert ids(book.select((), ("L2",))) == [r for r in default if not r.startswith("L2")]
    assert ids(book.select(("D101",), (), ("L202",))) == ["D101", "L202"]
    assert ids(book.select(("ALL",), ("L201",))) == [r for r in book.rules if r != "L201"]
    with pytest.raises(InputError, match="matches no rule"):
        book.select(("X999",))


def test_opt_in_rules_run_only_when_a_selector_covers_them() -> None:
    book = load_rulebook("default")
    ids = [r.id for r in book.select()]
    assert "D101" in ids and not {"D102", "D103", "D104", "D105", "D106"} & set(ids)
    every_d = ["D101", "D102", "D103", "D104", "D105", "D106"]
    for selector in ("D", "D1", "D10"):  # as in ruff, a prefix selects every rule under it, opt-in included
        assert [r.id for r in book.select((selector,))] == every_d
        assert [r.id for r in book.select((), (), (selector,))] == ids[:1] + every_d[1:] + ids[1:]
    assert [r.id for r in book.select(("D103",))] == ["D103"]
    assert "D103" in [r.id for r in book.select((), (), ("D103",))]
    assert "D102" not in [r.id for r in book.select(("D",), ("D102",))]
