"""Model cards: write the audit's evidence into a Hugging Face style ``README.md``, idempotently.

``mechaudit card BUNDLE --model-card README.md`` writes or updates two things and nothing else:

- a delimited section between ``<!-- mechaudit:begin -->`` and ``<!-- mechaudit:end -->`` (appended at the end
  the first time): the verdict, counts, key findings, the SHA-256 of the model, data, rulebook and report files,
  and where the full report lives;
- the ``model-index`` key of the YAML front matter (created if missing): one result whose task type is
  ``mechanistic-audit``, with one metric per rule and metric (the worst value over the components), and a
  ``source`` only with an http(s) ``--report-url`` (Hugging Face rejects a source without a url). Results
  of other tasks already under ``model-index`` are kept; only the key's own text is rewritten, and only when
  its content changes.

Every other byte of the file (other front-matter keys, comments, the rest of the card, line endings) is kept.
Running it twice changes nothing: the text depends only on the bundle.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .diff import load_result
from .errors import InputError
from .text_safety import markdown_code, markdown_safe

BEGIN = "<!-- mechaudit:begin -->"
END = "<!-- mechaudit:end -->"
TASK_TYPE = "mechanistic-audit"
KEY_FINDINGS = 10
_MODEL_INDEX = re.compile(r"^model-index\s*:")


def update_model_card(bundle: Path, card: Path, report_url: str | None = None) -> bool:
    """Write the audit of ``bundle`` into ``card``; True when the file changed."""
    data = load_result(bundle)
    _check_complete(data, str(bundle))
    findings_file = bundle / "findings.json" if bundle.is_dir() else bundle
    if card.exists() and not card.is_file():
        raise InputError(str(card), "is not a file")
    try:
        original = card.read_bytes().decode("utf-8") if card.exists() else ""
    except UnicodeDecodeError:
        raise InputError(str(card), "is not UTF-8 text") from None
    location = report_url or _relative_report(findings_file.parent, card)
    updated = render_card(original, data, _bundle_hashes(findings_file), location)
    if updated == original:
        return False
    _write_atomically(card, updated)
    return True


_REQUIRED = {"verdict": str, "fail_on": str, "complete": bool, "counts": dict, "rules": list, "metadata": dict}
_REQUIRED_META = (("tool", "version"), ("rulebook", "name"), ("rulebook", "sha256"), ("model", "name"),
                  ("model", "sha256"), ("data", "sha256"), ("data", "samples"))


def _check_complete(data: dict[str, Any], where: str) -> None:
    """The fields a model card shows: refuse a findings.json without them rather than fail half-way."""
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise InputError(where, f"findings.json lacks '{key}': not a complete mechaudit result")
    for section, key in _REQUIRED_META:
        if not isinstance(data["metadata"].get(section), dict) or key not in data["metadata"][section]:
            raise InputError(where, f"findings.json lacks 'metadata.{section}.{key}': not a complete mechaudit result")
    for finding in data["findings"]:
        if not isinstance(finding.get("message"), str) or not isinstance(finding.get("waiver") or {}, dict):
            raise InputError(where, "findings.json has a finding without a message or with a malformed waiver")


def render_card(text: str, data: dict[str, Any], hashes: dict[str, str], report: str) -> str:
    """``text`` (a model card, possibly empty) with the audit section and ``model-index`` written in."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    text = text[len(bom):]
    eol = "\r\n" if text.count("\r\n") * 2 > text.count("\n") else "\n"
    front, body = _split_front_matter(text)
    front = _with_model_index(front, model_index_results(data, report), eol)
    section = eol.join(section_lines(data, hashes, report))
    return bom + front + _with_section(body, section, eol)


def _split_front_matter(text: str) -> tuple[str, str]:
    """(front matter including both ``---`` lines, the rest); ("", text) without front matter."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != "---":
        return "", text
    for index in range(1, len(lines)):
        if lines[index].rstrip("\r\n") == "---":
            return "".join(lines[:index + 1]), "".join(lines[index + 1:])
    raise InputError("model card", "its YAML front matter opens with '---' but never closes")


def _with_model_index(front: str, result: dict[str, Any], eol: str) -> str:
    if not front:
        block = _dump_model_index([{"name": result["_model"], "results": [_public(result)]}], eol)
        return f"---{eol}{block}---{eol}"
    lines = front.splitlines(keepends=True)
    inner = lines[1:-1]
    parsed = _load_yaml("".join(inner))
    current = parsed.get("model-index")
    if current is not None and not (isinstance(current, list) and all(isinstance(e, dict) for e in current)):
        raise InputError("model card front matter", "'model-index' is not a list of models")
    wanted = _merged(current, result)
    start = next((i for i, line in enumerate(inner) if _MODEL_INDEX.match(line)), None)
    if start is not None and current == wanted:
        return front  # already up to date: leave its text exactly as it is
    block = _dump_model_index(wanted, eol)
    if start is None:
        if inner and not inner[-1].endswith(("\n", "\r")):
            inner[-1] += eol
        inner.append(block)
    else:
        end = start + 1
        while end < len(inner) and (not inner[end].strip() or inner[end][0] in " \t-"):
            end += 1
        while end > start + 1 and not inner[end - 1].strip():  # trailing blank lines stay outside the key
            end -= 1
        inner[start:end] = [block]
    updated = lines[0] + "".join(inner) + lines[-1]
    after = _load_yaml("".join(inner))
    if {k: v for k, v in after.items() if k != "model-index"} != {k: v for k, v in parsed.items()
                                                                  if k != "model-index"} \
            or after.get("model-index") != wanted:
        raise InputError("model card front matter", "cannot update 'model-index' without touching other keys; "
                                                    "write it as a top-level block key")
    return updated


def _load_yaml(text: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise InputError("model card front matter", f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError("model card front matter", "is not a YAML mapping")
    return loaded


def _dump_model_index(models: list[dict[str, Any]], eol: str) -> str:
    text = yaml.safe_dump({"model-index": models}, sort_keys=False, allow_unicode=True, default_flow_style=False,
                          width=1000)
    return text.replace("\n", eol)


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _merged(current: list[dict[str, Any]] | None, result: dict[str, Any]) -> list[dict[str, Any]]:
    """``model-index`` with our result replacing any earlier mechaudit result of the first model entry."""
    ours = _public(result)
    if not current:
        return [{"name": result["_model"], "results": [ours]}]
    models = [dict(entry) for entry in current]
    first = models[0]
    kept = [r for r in first.get("results") or []
            if not (isinstance(r, dict) and (r.get("task") or {}).get("type") == TASK_TYPE)]
    first["results"] = [*kept, ours]
    return models


def model_index_results(data: dict[str, Any], report: str) -> dict[str, Any]:
    """The Hugging Face ``model-index`` result of an audit: per (rule, metric), the worst value measured."""
    meta = data["metadata"]
    declared = meta.get("rulebook", {}).get("rules") or {}
    worst: dict[tuple[str, str], dict[str, Any]] = {}
    for finding in data["findings"]:
        if finding.get("metric") is None or finding.get("value") is None or finding["status"] == "skipped":
            continue
        key = (finding["rule_id"], finding["metric"])
        if key not in worst or finding["value"] > worst[key]["value"]:
            worst[key] = finding
    metrics = []
    for (rule_id, metric), finding in sorted(worst.items()):
        name = (declared.get(rule_id) or {}).get("name", "")
        component = (finding.get("location") or {}).get("component") or "model"
        entry = {"type": metric, "value": finding["value"],
                 "name": f"{rule_id} {name} {metric} (worst: {component})".replace("  ", " "),
                 "config": component, "verified": False}
        if finding.get("threshold") is not None:
            entry["args"] = {"threshold": finding["threshold"], "status": finding["status"]}
        metrics.append(entry)
    result: dict[str, Any] = {
        "_model": meta["model"]["name"],
        "task": {"type": TASK_TYPE, "name": "Mechanistic audit (mechaudit)"},
        "dataset": {"type": "mechaudit-audit-data", "name": f"{meta['model']['name']} audit data"},
        "metrics": metrics,
    }
    if re.match(r"^https?://", report):  # Hugging Face requires a source's url with its name: none without one
        result["source"] = {"name": f"mechaudit {meta['tool']['version']}, rulebook {meta['rulebook']['name']}",
                            "url": report}
    return result


def section_lines(data: dict[str, Any], hashes: dict[str, str], report: str) -> list[str]:
    """The delimited "Mechanistic audit" section, line by line."""
    meta = data["metadata"]
    declared = meta.get("rulebook", {}).get("rules") or {}
    counts = ", ".join(f"{n} {status}" for status, n in data["counts"].items())
    waivers = data.get("waivers")
    lines = [BEGIN, "## Mechanistic audit", "",
             (f"**Verdict: {data['verdict'].upper()}** (release gate: fails on `{data['fail_on']}`"
              f"{'' if data['complete'] else '; audit incomplete, a rule errored'}). "
              f"Audited with mechaudit {meta['tool']['version']}, rulebook `{meta['rulebook']['name']}`, "
              f"{len(data['rules'])} rules on {meta['data']['samples']} audit samples"
              f"{', started ' + meta['started_at'] if meta.get('started_at') else ''}."), "",
             f"Findings: {counts}" + (f"; {waivers['waived']} waived" if waivers else "") + ".", ""]
    key = sorted((f for f in data["findings"] if f["status"] in ("fail", "error")),
                 key=lambda f: (bool((f.get("waiver") or {}).get("state") == "active"),
                                {"error": 0, "warning": 1, "info": 2}[f["severity"]], f["rule_id"]))
    lines.append("### Key findings")
    lines.append("")
    if not key:
        lines.append("No finding failed.")
    for finding in key[:KEY_FINDINGS]:
        name = (declared.get(finding["rule_id"]) or {}).get("name", "")
        where = (finding.get("location") or {}).get("component") or "model"
        measured = ""
        if finding.get("value") is not None and finding.get("threshold") is not None:
            measured = f" ({finding['metric']} {finding['value']:.4g} > {finding['threshold']:.4g})"
        waiver = finding.get("waiver")
        note = ""
        if waiver:
            wid, approver, expires = (markdown_safe(waiver.get(k, "")) for k in ("id", "approver", "expires"))
            note = (f" Waived by {wid} ({approver}, until {expires})."
                    if waiver["state"] == "active" else f" Waiver {wid} expired on {expires}.")
        lines.append(f"- **{_one_line(finding['rule_id'])}** {_one_line(name)} {finding['status'].upper()} "
                     f"[{finding['severity']}] at `{markdown_code(where)}`: {_one_line(finding['message'])}{measured}."
                     f"{note}".replace("  ", " "))
    if len(key) > KEY_FINDINGS:
        lines.append(f"- ... and {len(key) - KEY_FINDINGS} more in the full report.")
    lines += ["", "### Hashes (SHA-256)", "", "| what | SHA-256 |", "| --- | --- |"]
    for path, digest in sorted(meta["model"]["sha256"].items()):
        lines.append(f"| model `{markdown_code(_basename(path), table=True)}` | `{digest}` |")
    for path, digest in sorted(meta["data"]["sha256"].items()):
        lines.append(f"| data `{markdown_code(_basename(path), table=True)}` | `{digest}` |")
    rulebook = meta["rulebook"]
    lines.append(f"| rulebook `{markdown_code(rulebook['name'], table=True)}` | `{rulebook['sha256']}` |")
    for name, digest in hashes.items():
        lines.append(f"| {name} | `{digest}` |")
    lines += ["", (f"Full report: [{report}]({report}). Written by `mechaudit card`; edits between the markers "
                   "are replaced on the next run."), END]
    return lines


def _one_line(text: str) -> str:
    return markdown_safe(str(text).rstrip(". \n"))


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path)[-1] or path


def _bundle_hashes(findings_file: Path) -> dict[str, str]:
    hashes = {"findings.json": hashlib.sha256(findings_file.read_bytes()).hexdigest()}
    manifest = findings_file.parent / "manifest.json"
    if manifest.is_file():
        hashes["manifest.json"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
    return hashes


def _relative_report(bundle_dir: Path, card: Path) -> str:
    target = bundle_dir / "report.html" if (bundle_dir / "report.html").is_file() else bundle_dir / "findings.json"
    return Path(os.path.relpath(target.resolve(), card.resolve().parent)).as_posix()


def _with_section(body: str, section: str, eol: str) -> str:
    lines = body.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) > 1 or len(ends) > 1 or len(begins) != len(ends) or (begins and ends[0] < begins[0]):
        raise InputError("model card", f"the markers {BEGIN} and {END} must appear once each, in that order")
    if begins:
        ending = lines[ends[0]][len(lines[ends[0]].rstrip("\r\n")):]  # keep what followed the end marker
        return "".join(lines[:begins[0]]) + section + ending + "".join(lines[ends[0] + 1:])
    if not body:
        return eol + section + eol
    separator = "" if body.endswith(("\n", "\r")) else eol
    return body + separator + eol + section + eol


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(text.encode("utf-8"))
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
