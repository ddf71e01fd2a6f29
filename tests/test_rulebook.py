import dataclasses
from pathlib import Path

import pytest

from mechaudit.checks import rule_definitions
from mechaudit.errors import InputError
from mechaudit.rulebook import RULE_ID, load_rulebook, markdown_table

GOOD_RULE = '''
select = ["D101", "D9"]
[rules.D101]
severity = "warning"
[rules.D101.params]
max_dead_fraction = 0.5
[rules.D901]
name = "dead-units-strict"
check = "dead_units"
severity = "error"
[rules.D901.docs]
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
    assert list(book.rules) == ["D101", "D901"]
    assert book.rules["D101"].params.max_dead_fraction == 1.0
    assert book.rules["D901"].check is book.rules["D101"].check and book.rules["D901"].docs.how == "h"


def test_a_rulebook_only_selects_and_overrides_rules_defined_by_their_checks(tmp_path: Path) -> None:
    """Defaults, docs and names come from the check; a rulebook that omits a parameter gets the code's default."""
    default = load_rulebook("default")
    bare = load_rulebook(str(write(tmp_path, 'select = ["D101", "R303"]\n[rules.R303]\nnote = "n"\n')))
    assert list(bare.rules) == ["D101", "R303"]
    for rule_id in bare.rules:
        assert bare.rules[rule_id].params == default.rules[rule_id].params
    assert bare.rules["D101"].params.max_dead_fraction == 0.5 and bare.rules["R303"].params.max_effect == 0.06
    assert bare.rules["R303"].docs.how == default.rules["R303"].docs.how + "\nn"
    for key in ("docs", "check", "name"):
        with pytest.raises(InputError, match=f"unknown key '{key}'.*defined by check"):
            load_rulebook(str(write(tmp_path, f'[rules.D101]\n{key} = "x"\n')))
    with pytest.raises(InputError, match="leaves out"):
        load_rulebook(str(write(tmp_path, 'select = ["L"]\n[rules.D101]\nseverity = "error"\n')))


@pytest.mark.parametrize("old, new, message", [
    ('check = "dead_units"', 'check = "nonsense"', "unknown check 'nonsense'"),
    ('check = "dead_units"', '', "missing key 'check'"),
    ('severity = "warning"', 'severity = "fatal"', "not one of"),
    ("max_dead_fraction = 0.5", 'max_dead_fraction = "high"', "must be float"),
    ("max_dead_fraction = 0.5", "max_dead_fraction = 3.0", "outside"),
    ("max_dead_fraction = 0.5", "colour = 1", "unknown key 'colour'"),
    ('name = "dead-units-strict"', 'name = "dead-units-strict"\nextra = 1', "unknown key 'extra'"),
    ("[rules.D901]", "[rules.X1]", "must be D, L or R"),
    ('fix = "f"\n', "", "missing documentation section 'fix'"),
    ('select = ["D101", "D9"]', 'select = ["Q"]', "'Q' matches no rule"),
])
def test_rulebook_validation_rejects(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = GOOD_RULE.replace(old, new)
    text = text.replace("[rules.D901.", "[rules.X1.") if "X1" in new else text
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
    assert "D101" in ids and not {"D102", "D103", "D104", "D105", "D106", "D107"} & set(ids)
    every_d = ["D101", "D102", "D103", "D104", "D105", "D106", "D107"]
    for selector in ("D", "D1", "D10"):  # as in ruff, a prefix selects every rule under it, opt-in included
        assert [r.id for r in book.select((selector,))] == every_d
        assert [r.id for r in book.select((), (), (selector,))] == ids[:1] + every_d[1:] + ids[1:]
    assert [r.id for r in book.select(("D103",))] == ["D103"]
    assert "D103" in [r.id for r in book.select((), (), ("D103",))]
    assert "D102" not in [r.id for r in book.select(("D",), ("D102",))]


def test_the_readme_rule_table_is_the_one_the_code_generates() -> None:
    """The README's table comes from the rules' definitions (`mechaudit rules --format markdown`): regenerate it
    when a rule changes."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    begin = readme.index("<!-- rule table:")
    shown = readme[readme.index("\n", begin) + 1:readme.index("<!-- end of rule table -->")].strip()
    assert shown == markdown_table(list(load_rulebook("default").rules.values())), \
        "README rule table is stale: paste `mechaudit rules --format markdown` between its markers"


def test_every_rule_is_defined_once_beside_its_check_with_documented_parameters() -> None:
    definitions = rule_definitions()
    assert set(definitions) == set(load_rulebook("default").rules)
    for rule_id, (check, definition) in definitions.items():
        assert definition.id == rule_id and RULE_ID.match(rule_id)
        docs = definition.docs
        assert docs.summary and docs.what and docs.why and docs.how and docs.fix and docs.references, rule_id
        for field in dataclasses.fields(check.params):
            assert field.metadata.get("doc"), f"{rule_id}: parameter {field.name} has no doc"


@dataclasses.dataclass(frozen=True)
class _NoParams:
    pass


def test_a_rule_over_a_check_without_a_definition_takes_its_severity_from_the_table(tmp_path: Path) -> None:
    from mechaudit.checks.registry import CHECKS, register

    register("test_bare_check", _NoParams)(lambda context, rule: [])
    try:
        docs = '[rules.D990.docs]\nsummary = "s"\nwhat = "w"\nwhy = "y"\nhow = "h"\nfix = "f"\nreferences = ["r"]\n'
        head = 'select = ["D990"]\n[rules.D990]\nname = "bare"\ncheck = "test_bare_check"\n'
        with pytest.raises(InputError, match="missing key 'severity'"):
            load_rulebook(str(write(tmp_path, head + docs)))
        rule = load_rulebook(str(write(tmp_path, head + 'severity = "error"\n' + docs))).rules["D990"]
        assert rule.severity == "error" and rule.opt_in is False
    finally:
        CHECKS.pop("test_bare_check")
