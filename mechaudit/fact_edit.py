"""``mechaudit edit --rome``: locate each declared fact by causal tracing, write it with a rank-one edit (ROME),
and measure the edit as CounterFact does (Meng et al. 2022): efficacy on the edited prompt, generalisation to its
paraphrases, specificity on unrelated prompts, each before and after, from the probability and rank of the new
attribute against the one it replaces.

The modules are found on models never seen before (a token embedding, a list of identical blocks, a linear MLP
output projection in each block, ``nn.Linear`` or Hugging Face's ``Conv1D``) unless ``[edit]`` names them."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from . import linear_maps
from .errors import InputError
from .spec import EditSpec, FactSpec, subject_end
from .techniques.rome import causal_trace, key_second_moment, last_logits, rank_one_edit

MLP_NAMES = ("mlp", "ffn", "feed_forward", "feedforward", "fc")


@dataclass(frozen=True)
class FactModules:
    """Where facts are traced and edited: the embedding, the blocks and each block's MLP output projection."""

    embedding: tuple[str, nn.Module]
    blocks: list[tuple[str, nn.Module]]
    projections: list[tuple[str, nn.Module]]


def find_modules(model: nn.Module, edit: EditSpec) -> FactModules:
    """The modules ``edit`` names, else found by shape; InputError naming what is missing."""
    named = dict(model.named_modules())

    def get(path: str, key: str) -> nn.Module:
        if path not in named:
            raise InputError(f"[edit].{key}", f"the model has no module '{path}'")
        return named[path]

    if edit.embedding is not None:
        embedding = (edit.embedding, get(edit.embedding, "embedding"))
        if not isinstance(getattr(embedding[1], "num_embeddings", None), int):
            raise InputError("[edit].embedding", f"'{edit.embedding}' is a {type(embedding[1]).__name__}, not a "
                                                 "token embedding (nn.Embedding)")
    else:
        embeddings = [(n, m) for n, m in named.items() if isinstance(m, nn.Embedding)]
        if not embeddings:
            raise InputError("edit --rome", "the model has no nn.Embedding to trace from; name it in [edit].embedding")
        embedding = max(embeddings, key=lambda item: item[1].num_embeddings)
    if edit.blocks is not None:
        blocks_module = get(edit.blocks, "blocks")
        blocks = [(f"{edit.blocks}.{n}", m) for n, m in blocks_module.named_children()]
    else:
        lists = [(n, m) for n, m in named.items() if isinstance(m, nn.ModuleList) and len(m) > 1
                 and len({type(c) for c in m}) == 1]
        if not lists:
            raise InputError("edit --rome", "the model has no list of identical blocks; name it in [edit].blocks")
        name, blocks_module = max(lists, key=lambda item: len(item[1]))
        blocks = [(f"{name}.{n}", m) for n, m in blocks_module.named_children()]
    projections = []
    for name, block in blocks:
        path = _projection_path(block, edit.projection, name)
        projections.append((f"{name}.{path}", block.get_submodule(path)))
    return FactModules(embedding, blocks, projections)


def _projection_path(block: nn.Module, declared: str | None, block_name: str) -> str:
    """The MLP output projection inside ``block``: ``declared``, else its MLP's last linear map."""
    inside = dict(block.named_modules())
    if declared is not None:
        if not linear_maps.is_linear(inside.get(declared)):
            raise InputError("[edit].projection", f"'{block_name}.{declared}' is not a linear layer")
        return declared
    candidates = [n for n, m in inside.items() if linear_maps.is_linear(m)
                  and any(part in MLP_NAMES or part.startswith(MLP_NAMES) for part in n.lower().split("."))]
    if not candidates:
        raise InputError("edit --rome", f"no MLP linear layer in {block_name}; name it in [edit].projection")
    return candidates[-1]


@dataclass
class FactEdit:
    """One fact's edit: where it was written, its causal traces and its measures before and after."""

    fact: FactSpec
    target_true: int
    layer: str
    traces: dict
    before: dict
    after: dict | None = None

    def to_dict(self) -> dict:
        return {"prompt": list(self.fact.prompt), "subject": list(self.fact.subject),
                "target_new": self.fact.target_new, "target_true": self.target_true, "layer": self.layer,
                "trace": self.traces, "before": self.before, "after": self.after}


def edit_facts(model: nn.Module, edit: EditSpec, key_data: torch.Tensor, audit_prompts: torch.Tensor,
               device: torch.device, layer: str | None = None, seed: int = 0,
               locate_by: str = "hidden") -> tuple[nn.Module, list[FactEdit]]:
    """A copy of ``model`` with every fact of ``edit`` written (one after another), and each fact's record.
    ``key_data`` (token ids) estimates each projection's key second moment; ``audit_prompts`` are the default
    unrelated prompts. Without ``layer``, the edit goes to the block whose restored state (``locate_by``:
    ``hidden``, the block's output, or ``mlp``, its MLP's output) at the subject's last token brings back the most
    of the true attribute (on the `facts` example, ``hidden`` locates better: see ``benchmarks/rome_facts.py``)."""
    if not edit.facts:
        raise InputError("edit --rome", "no facts to edit: declare [[edit.facts]] in the spec or give --prompt, "
                                        "--subject and --target-new")
    edited = copy.deepcopy(model).eval()
    modules = find_modules(edited, edit)
    vocabulary = modules.embedding[1].num_embeddings
    chosen = layer or edit.layer
    names = [name for name, _ in modules.projections]
    if chosen is not None and chosen not in names:
        raise InputError(f"{'--layer' if layer else '[edit].layer'} {chosen}",
                         f"is not a block's MLP output projection (one of: {', '.join(names)})")
    records, moments = [], {}
    for fact in edit.facts:
        _check_tokens(fact, vocabulary)
        _check_runs(model, fact, device)
        true = fact.target_true if fact.target_true is not None else int(_predict(model, [fact.prompt], device)[0])
        if true == fact.target_new:
            raise InputError(f"fact {list(fact.prompt)}", f"the model already predicts {true}: nothing to edit")
        traces = trace_fact(edited, modules, fact, true, device, seed)
        index = names.index(chosen) if chosen is not None else traces["located"][locate_by]
        name, projection = modules.projections[index]
        if name not in moments:
            moments[name] = key_second_moment(edited, projection, key_data.to(device))
        rank_one_edit(edited, projection, _tensor([fact.prompt], device), subject_end(fact.prompt, fact.subject),
                      fact.target_new, moment=moments[name]).apply(projection)
        records.append(FactEdit(fact, true, name, traces, {}))
    for record in records:
        unrelated = list(record.fact.unrelated) or _without_subject(audit_prompts, [f.subject for f in edit.facts])
        answers = _predict(model, unrelated, device) if unrelated else None
        record.before = measure_fact(model, record.fact, record.target_true, unrelated, device, answers)
        record.after = measure_fact(edited, record.fact, record.target_true, unrelated, device, answers)
    return edited, records


def trace_fact(model: nn.Module, modules: FactModules, fact: FactSpec, true: int, device: torch.device,
               seed: int) -> dict:
    """Causal traces of ``fact``'s prompt (hidden states and MLP outputs, layer x position) and, for each, the
    layer whose state restored at the subject's last token brings back the most of the true attribute."""
    tokens = _tensor([fact.prompt], device)
    last = subject_end(fact.prompt, fact.subject)
    subject = list(range(last - len(fact.subject) + 1, last + 1))
    embedding = modules.embedding[1]
    hidden = causal_trace(model, embedding, [m for _, m in modules.blocks], tokens, subject, true, seed)
    mlp = causal_trace(model, embedding, [m for _, m in modules.projections], tokens, subject, true, seed)
    return {"clean": hidden["clean"], "corrupted": hidden["corrupted"],
            "hidden": _rounded(hidden["restored"]), "mlp": _rounded(mlp["restored"]),
            "blocks": [n for n, _ in modules.blocks], "projections": [n for n, _ in modules.projections],
            "subject_positions": subject, "tokens": list(fact.prompt),
            "located": {"hidden": int(hidden["restored"][:, last].argmax()),
                        "mlp": int(mlp["restored"][:, last].argmax())}}


def measure_fact(model: nn.Module, fact: FactSpec, true: int, unrelated: Iterable[tuple[int, ...]],
                 device: torch.device, reference: torch.Tensor | None = None) -> dict:
    """CounterFact's measures of ``fact`` on ``model``: per group of prompts, the mean probability of the new and
    the true attribute, the share ranking the new one above the true one (efficacy, generalisation; for unrelated
    prompts, the share keeping their own answer, ``reference`` or the model's, above the new one), the share
    predicting it, and the mean rank of the new attribute (1 = top). Unrelated prompts whose answer is the new
    attribute count only in ``unchanged``."""
    measures = {"efficacy": _scores(model, [fact.prompt], fact.target_new, true, device)}
    if fact.paraphrases:
        measures["generalisation"] = _scores(model, list(fact.paraphrases), fact.target_new, true, device)
    unrelated = list(unrelated)
    if unrelated:
        answers = reference if reference is not None else _predict(model, unrelated, device)
        probabilities = _probabilities(model, unrelated, device)
        own = probabilities.gather(1, answers[:, None]).squeeze(1)
        new = probabilities[:, fact.target_new]
        other = answers != fact.target_new  # a prompt whose answer is the new attribute cannot rank it lower
        measures["specificity"] = {"prompts": len(unrelated), "p_new": _mean(new[other]) if other.any() else 0.0,
                                   "kept_above_new": _mean((own > new)[other].float()) if other.any() else 1.0,
                                   "unchanged": _mean((probabilities.argmax(-1) == answers).float())}
    return measures


def _scores(model: nn.Module, prompts: list[tuple[int, ...]], new: int, true: int, device: torch.device) -> dict:
    probabilities = _probabilities(model, prompts, device)
    rank = (probabilities > probabilities[:, new:new + 1]).sum(-1) + 1
    return {"prompts": len(prompts), "p_new": _mean(probabilities[:, new]), "p_true": _mean(probabilities[:, true]),
            "new_above_true": _mean((probabilities[:, new] > probabilities[:, true]).float()),
            "predicts_new": _mean((probabilities.argmax(-1) == new).float()), "rank_new": _mean(rank.float())}


def _probabilities(model: nn.Module, prompts: list[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    """Next-token probabilities after each prompt (prompts of one length run together), on CPU, in order."""
    rows: list[torch.Tensor | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    with torch.no_grad():
        for indices in by_length.values():
            for start in range(0, len(indices), 256):
                chunk = indices[start:start + 256]
                out = last_logits(model, _tensor([prompts[i] for i in chunk], device)).float().softmax(-1).cpu()
                for i, row in zip(chunk, out):
                    rows[i] = row
    return torch.stack(rows)


def _predict(model: nn.Module, prompts: list[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    return _probabilities(model, list(prompts), device).argmax(-1)


def _without_subject(prompts: torch.Tensor, subjects: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The audit prompts that contain none of ``subjects``: the default unrelated prompts."""
    rows = [tuple(int(t) for t in row) for row in prompts]
    return [row for row in rows if all(subject_end(row, s) is None for s in subjects)]


def _check_tokens(fact: FactSpec, vocabulary: int) -> None:
    tokens = [*fact.prompt, fact.target_new, *(t for p in fact.paraphrases for t in p),
              *(t for p in fact.unrelated for t in p), *([fact.target_true] if fact.target_true is not None else [])]
    bad = next((t for t in tokens if t >= vocabulary), None)
    if bad is not None:
        raise InputError(f"fact {list(fact.prompt)}", f"token id {bad} is outside the vocabulary (0-{vocabulary - 1})")


def _check_runs(model: nn.Module, fact: FactSpec, device: torch.device) -> None:
    """InputError naming the fact when the model cannot run on one of its prompts (e.g. one longer than its
    positions), rather than an internal error in tracing."""
    for prompt in (fact.prompt, *fact.paraphrases, *fact.unrelated):
        try:
            _predict(model, [prompt], device)
        except (RuntimeError, IndexError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"fact {list(fact.prompt)}", f"the model cannot run on the {len(prompt)}-token prompt "
                             f"{list(prompt)} (longer than its positions?): {reason}") from None


def _tensor(prompts: list[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    return torch.tensor([list(p) for p in prompts], dtype=torch.long, device=device)


def _rounded(values: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in values]


def _mean(values: torch.Tensor) -> float:
    return round(float(values.mean()), 4)


GROUPS = (("efficacy", "prompt"), ("generalisation", "paraphrases"), ("specificity", "unrelated prompts"))


def summary_lines(facts: list[dict]) -> list[str]:
    """Before -> after, per fact and measure, as ``mechaudit edit --rome`` prints them."""
    lines = []
    for fact in facts:
        trace = fact["trace"]
        lines.append(f"fact {fact['prompt']} (subject {fact['subject']}): {fact['target_true']} -> "
                     f"{fact['target_new']}, edited at {fact['layer']} (causal tracing: P(true) {trace['clean']:.3f} "
                     f"clean, {trace['corrupted']:.3f} with the subject corrupted)")
        before, after = fact["before"], fact["after"]
        for group, what in GROUPS:
            if group not in after:
                continue
            b, a = before[group], after[group]
            if group == "specificity":
                lines.append(f"  {group} ({a['prompts']} {what}): keep their own answer above the new one "
                             f"{b['kept_above_new']:.0%} -> {a['kept_above_new']:.0%}, unchanged prediction "
                             f"{b['unchanged']:.0%} -> {a['unchanged']:.0%}, P(new) {b['p_new']:.3f} -> "
                             f"{a['p_new']:.3f}")
            else:
                lines.append(f"  {group} ({a['prompts']} {what}): new above true {b['new_above_true']:.0%} -> "
                             f"{a['new_above_true']:.0%}, P(new) {b['p_new']:.3f} -> {a['p_new']:.3f}, P(true) "
                             f"{b['p_true']:.3f} -> {a['p_true']:.3f}, rank of new {b['rank_new']:.1f} -> "
                             f"{a['rank_new']:.1f}")
    return lines
