"""One parser and one formatter for component addresses, shared by waivers, ``edit``, the API and findings."""

import pytest

from mechaudit.addresses import Address, format_address, input_address, parse_address
from mechaudit.errors import InputError
from mechaudit.waivers import parse_waivers


@pytest.mark.parametrize("text, parsed", [
    ("features.3", Address("features.3")),
    ("features.3:ch17", Address("features.3", "ch", 17)),
    ("fc1:u0", Address("fc1", "u", 0)),
    ("blocks.0.attn:h2", Address("blocks.0.attn", "h", 2)),
    ("blocks.1:d511", Address("blocks.1", "d", 511)),
    ("classifier.0:feat12", Address("classifier.0", "feat", 12)),
    ("input:watermark", Address("input", region="watermark")),
    ("input", Address("input")),
])
def test_every_address_form_parses_and_formats_back(text: str, parsed: Address) -> None:
    assert parse_address(text) == parsed
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["fc1:x3", "fc1:u", "fc1:ch-1", ":u3", "fc 1", "input:", "fc1:u3:u4"])
def test_a_malformed_address_is_rejected_with_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="not an address|names no input region"):
        parse_address(text)


def test_formatters_agree_with_the_parser() -> None:
    assert parse_address(format_address("features.3", "ch", 7)).unit == "ch7"
    assert parse_address(input_address("rest")).is_input


def test_a_waiver_names_a_well_formed_component() -> None:
    entry = '[[waiver]]\nrule = "L202"\ncomponent = "{}"\njustification = "j"\napprover = "a"\nexpires = 2099-01-01\n'
    assert parse_waivers(entry.format("fc1:u3"))[0].component == "fc1:u3"
    assert parse_waivers(entry.format("*"))[0].component == "*"
    with pytest.raises(InputError, match="component.*not an address"):
        parse_waivers(entry.format("fc1:x3"))
