"""Model cards: a delimited section and model-index metadata, idempotent, leaving the rest byte-identical."""

import re
from pathlib import Path

import pytest
import yaml
from fixtures.compliance import failing_project

from mechaudit.card import BEGIN, END, TASK_TYPE

CARD = """---
# Hand-written metadata: keep my comments and formatting.
license: apache-2.0
tags: [vision,   digits]   # odd spacing on purpose
model-index:
- name: my-org/digits-cnn
  results:
  - task: {type: image-classification}
    dataset: {name: digits, type: sklearn-digits}
    metrics:
    - {type: accuracy, value: 0.97}
language:
- en
---

# Digits CNN

Some text the author wrote.   Trailing spaces stay.  

## Limitations
Don't use it for anything real.
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from mechaudit.cli import main

    project = failing_project(tmp_path_factory.mktemp("card") / "p", local_model=False)
    out = project.dir / "audit-out"
    assert main(["audit", str(project.spec), "--out", str(out), "--format", "json,sarif", "-q"]) == 1
    return out


def _strip(text: str) -> str:
    """The card without our section and without the model-index key: what must stay byte-identical."""
    text = re.sub(r"(\r?\n)?" + re.escape(BEGIN) + r".*?" + re.escape(END) + r"(\r?\n)?", "", text, flags=re.DOTALL)
    return re.sub(r"^model-index:\r?\n(?:[ -].*\r?\n)*", "", text, flags=re.MULTILINE)


def _front(text: str) -> dict:
    return yaml.safe_load(text.split("---", 2)[1])


def test_card_is_written_idempotently_and_the_rest_stays_untouched(cli, bundle, tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    card.write_bytes(CARD.encode())
    first = cli("card", bundle, "--model-card", card)
    assert first.code == 0 and "updated" in first.out
    written = card.read_bytes().decode()
    second = cli("card", bundle, "--model-card", card)
    assert second.code == 0 and "already up to date" in second.out
    assert card.read_bytes().decode() == written  # idempotent
    assert _strip(written) == _strip(CARD)  # everything else byte-identical
    assert written.startswith(CARD.split("model-index:")[0])  # front matter before the key, untouched
    front = _front(written)
    assert front["license"] == "apache-2.0" and front["tags"] == ["vision", "digits"] and front["language"] == ["en"]
    results = front["model-index"][0]["results"]
    assert front["model-index"][0]["name"] == "my-org/digits-cnn"
    assert results[0]["metrics"] == [{"type": "accuracy", "value": 0.97}]  # the author's own result is kept
    ours = results[1]
    assert ours["task"]["type"] == TASK_TYPE and ours["dataset"]["type"] == "mechaudit-audit-data"
    metrics = {(m["name"].split()[0], m["type"]): m for m in ours["metrics"]}
    assert metrics[("L202", "accuracy_drop")]["value"] == 0.28
    assert metrics[("L202", "accuracy_drop")]["config"] == "fc1:u0"
    assert metrics[("L201", "flip_rate")]["args"] == {"threshold": 0.05, "status": "fail"}
    assert all(m["verified"] is False for m in ours["metrics"])


def test_section_content(cli, bundle, tmp_path: Path) -> None:
    card = tmp_path / "card.md"
    card.write_text(CARD)
    cli("card", bundle, "--model-card", card)
    text = card.read_text()
    section = text[text.index(BEGIN):text.index(END)]
    assert "## Mechanistic audit" in section and "**Verdict: FAIL**" in section
    assert "- **L201** forbidden-input-reliance FAIL [error] at `input:watermark`" in section
    assert "(flip_rate 0.28 > 0.05)" in section
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    findings = json.loads((bundle / "findings.json").read_text())
    assert manifest["files"]["findings.json"] in section
    assert findings["metadata"]["rulebook"]["sha256"] in section
    for digest in findings["metadata"]["data"]["sha256"].values():
        assert f"| data `data.npz` | `{digest}` |" in section
    assert "Full report: [p/audit-out/findings.json](p/audit-out/findings.json)" not in section
    assert "audit-out/findings.json" in section  # no report.html in this bundle: point at the findings
    assert text.endswith(END + "\n")


def test_new_card_crlf_card_and_moved_section(cli, bundle, tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "README.md"
    assert cli("card", bundle, "--model-card", fresh, "--report-url", "https://example.org/audit/").code == 0
    text = fresh.read_text()
    assert text.startswith("---\nmodel-index:\n- name: toy\n") and BEGIN in text
    assert _front(text)["model-index"][0]["results"][0]["source"]["url"] == "https://example.org/audit/"
    before = fresh.read_bytes()
    cli("card", bundle, "--model-card", fresh, "--report-url", "https://example.org/audit/")
    assert fresh.read_bytes() == before
    # Windows line endings are kept, and so are the bytes around the section
    crlf = tmp_path / "crlf.md"
    crlf.write_bytes(CARD.replace("\n", "\r\n").encode())
    cli("card", bundle, "--model-card", crlf)
    written = crlf.read_bytes().decode()
    assert "\n" not in written.replace("\r\n", "") and _strip(written) == _strip(CARD.replace("\n", "\r\n"))
    # a section the author moved up stays where it is, and text after it is kept
    moved = tmp_path / "moved.md"
    moved.write_text(CARD)
    cli("card", bundle, "--model-card", moved)
    text = moved.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    reordered = text[:text.index("# Digits CNN")] + text[start:end] + "\n" + text[text.index("# Digits CNN"):start]
    moved.write_text(reordered)
    assert "already up to date" in cli("card", bundle, "--model-card", moved).out
    assert moved.read_text() == reordered


def test_a_stale_section_is_replaced(cli, bundle, tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    card.write_text(f"# Card\n\n{BEGIN}\nold audit text\n{END}\n\nAfter.\n")
    cli("card", bundle, "--model-card", card)
    text = card.read_text()
    assert "old audit text" not in text and text.startswith("---\nmodel-index:")
    assert text.endswith(f"{END}\n\nAfter.\n") and text.count(BEGIN) == 1


@pytest.mark.parametrize("content, fragment", [
    (f"# Card\n{BEGIN}\nno end\n", "must appear once each"),
    (f"# Card\n{END}\n{BEGIN}\n", "must appear once each"),
    ("---\nlicense: [unclosed\n---\n", "not valid YAML"),
    ("---\nlicense: mit\n", "never closes"),
    ("---\n- a list\n---\n", "not a YAML mapping"),
    ("---\nmodel-index: 3\n---\n", "not a list of models"),
])
def test_bad_cards_are_refused_and_left_alone(cli, bundle, tmp_path: Path, content: str, fragment: str) -> None:
    card = tmp_path / "README.md"
    card.write_text(content)
    result = cli("card", bundle, "--model-card", card)
    assert result.code == 2 and fragment in result.err and len(result.error_lines) == 1
    assert card.read_text() == content


def test_missing_bundle(cli, tmp_path: Path) -> None:
    result = cli("card", tmp_path / "nope", "--model-card", tmp_path / "README.md")
    assert result.code == 2 and "bundle directory" in result.err and not (tmp_path / "README.md").exists()


@pytest.mark.parametrize("report_url", [None, "https://example.org/audit/"])
def test_huggingface_hub_reads_the_card_back(cli, bundle, tmp_path: Path, report_url: str | None) -> None:
    hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (pip install -e .[test])")
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = tmp_path / "README.md"
    card.write_text(CARD, encoding="utf-8")
    assert cli("card", bundle, "--model-card", card, *(["--report-url", report_url] if report_url else [])).code == 0
    loaded = hub.ModelCard.load(card)  # raises on a model-index Hugging Face cannot read
    name, results = model_index_to_eval_results(_front(card.read_text(encoding="utf-8"))["model-index"])
    ours = [r for r in results if r.task_type == "mechanistic-audit"]
    assert ours and name == loaded.data.model_name
    assert {r.source_url for r in ours} == {report_url}
    assert all(r.source_name is None for r in ours) if report_url is None else all(r.source_name for r in ours)
    assert {r.metric_type for r in ours} >= {"flip_rate", "accuracy_drop"}
    assert [r.metric_value for r in ours] == [r.metric_value for r in loaded.data.eval_results
                                             if r.task_type == "mechanistic-audit"]
