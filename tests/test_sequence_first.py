"""Layers whose output does not hold the samples first (torch's default ``batch_first=False`` encoder, rows folded
as in OPT's MLP) are audited, and measure the same as their samples-first twins; a layout that cannot be verified
stays skipped with its reason."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mechaudit
from mechaudit.layouts import Layout, verified_layout
from mechaudit.loading import AuditData
from mechaudit.model_view import ModelView, installed
from mechaudit.techniques.ablation_scan import AblationScanner

VOCAB, WIDTH, SAMPLES = 40, 16, 24


class Encoder(nn.Module):
    """Embedding, one ``nn.TransformerEncoderLayer`` (ReLU MLP 16 -> 24 -> 16), mean over tokens, a classifier;
    sequence-first (torch's default) or batch-first, with the same parameter names."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        layer = nn.TransformerEncoderLayer(WIDTH, 2, 24, dropout=0.0, batch_first=batch_first)
        self.embed, self.head = nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, 3)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids.long())
        if self.batch_first:
            return self.head(self.encoder(x).mean(1))
        return self.head(self.encoder(x.transpose(0, 1)).mean(0))


class Folded(nn.Module):
    """A token MLP applied to rows: ``fold`` "samples" folds them as OPT does (``x.reshape(-1, width)``), "tokens"
    as a sequence-first model's ``x.transpose(0, 1).reshape(-1, width)``, "mixed" scrambles them across samples
    (a fixed permutation of all rows: no sample's rows can be located), None keeps (samples, tokens, width)."""

    def __init__(self, fold: str | None) -> None:
        super().__init__()
        self.fold = fold
        self.embed, self.fc1, self.fc2, self.head = (nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, 24),
                                                     nn.Linear(24, WIDTH), nn.Linear(WIDTH, 3))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids.long())
        samples, tokens, width = x.shape
        if self.fold is None:
            return self.head(self.fc2(torch.relu(self.fc1(x))).mean(1))
        rows = x.reshape(-1, width) if self.fold == "samples" else x.transpose(0, 1).reshape(-1, width)
        if self.fold == "mixed":
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
            return self.head(self.fc2(torch.relu(self.fc1(rows[order])))[order.argsort()].reshape(
                samples, tokens, width).mean(1))
        hidden = self.fc2(torch.relu(self.fc1(rows)))
        if self.fold == "tokens":
            return self.head(hidden.reshape(tokens, samples, width).mean(0))
        return self.head(hidden.reshape(samples, tokens, width).mean(1))


def _twins(kind: str, fold: str = "samples") -> tuple[nn.Module, nn.Module]:
    """(the model to test, its samples-first twin with the same weights)."""
    torch.manual_seed(0)
    tested = Encoder(False) if kind == "encoder" else Folded(fold)
    twin = Encoder(True) if kind == "encoder" else Folded(None)
    twin.load_state_dict(tested.state_dict())
    return tested.eval(), twin.eval()


def _ids(tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (SAMPLES, tokens), generator=torch.Generator().manual_seed(seed))


def _data(model: nn.Module, tokens: int) -> AuditData:
    ids = _ids(tokens)
    with torch.no_grad():
        labels = model(ids).argmax(-1)
    concept = (torch.arange(SAMPLES) % 2).float()
    return AuditData(inputs=ids, labels=labels, pairs=(ids, _ids(tokens, 1)), cues=(ids, _ids(tokens, 1)),
                     concepts={"even": concept})


def _differences(a, b, path: str = "") -> list[str]:
    """Where two evidence trees differ (numbers beyond a relative 1e-3), but for how the scan ran (hooks for a layer
    not samples first, perhaps a traced cut for its twin)."""
    a, b = (x.tolist() if hasattr(x, "tolist") and not isinstance(x, (int, float)) else x for x in (a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for key in a if key != "scan" for d in _differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)):
        same = math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-5) or (math.isnan(a) and math.isnan(b))
        return [] if same else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _same_findings(tested: nn.Module, twin: nn.Module, data: AuditData, select: list[str]) -> list:
    results = [mechaudit.audit(model, data, select=select, behaviour={"kind": "predicted_logit"})
               for model in (tested, twin)]
    ours, theirs = (result.findings for result in results)
    assert [(f.rule_id, f.status, f.message) for f in ours] == [(f.rule_id, f.status, f.message) for f in theirs]
    for mine, other in zip(ours, theirs):
        assert not _differences(mine.evidence, other.evidence), (mine.rule_id, _differences(mine.evidence,
                                                                                            other.evidence)[:5])
    assert all(f.status != "error" for f in ours)
    return results


@pytest.mark.parametrize("tokens", [6, 2])  # 2 tokens for 2 discovery samples: the shape alone cannot tell
def test_a_sequence_first_encoder_is_audited_and_measures_as_its_batch_first_twin(tokens: int) -> None:
    tested, twin = _twins("encoder")
    result, _ = _same_findings(tested, twin, _data(twin, tokens), ["D101", "L202", "L207"])
    layouts = {c["layer"]: c.get("layout") for c in result.metadata["components"]}
    assert layouts["encoder.layers.0.linear1"] == layouts["encoder.layers.0.linear2"] == (
        "samples on axis 1 (sequence-first)")
    assert layouts["head"] is None and not result.metadata.get("skipped_layers")
    l202 = {f.location.layer for f in result.findings if f.rule_id == "L202"}
    assert {"encoder.layers.0.linear1", "encoder.layers.0.linear2"} <= l202


def test_every_units_ablation_effect_matches_the_twin_through_hooks_and_the_traced_cut() -> None:
    tested, twin = _twins("folded")
    ids = _ids(6)
    outputs, methods = [], []
    for model in (tested, twin):
        view = ModelView.discover(model, ids[:2])
        layers = [view.layer("fc1"), view.layer("fc2")]
        scanner = AblationScanner(view, layers, torch.device("cpu"), ids[:4])
        values = {layer.name: torch.zeros(layer.size, 6) for layer in layers}
        outputs.append(scanner.scan(ids, {"zero": (values, None)})["zero"])
        methods.append(" ".join(scanner.method(layer) for layer in layers))
    assert methods[0].startswith("batched forward hooks (its output holds 6 rows per sample folded into axis 0")
    assert "hooks" not in methods[1]  # the unfolded twin's scan is the traced cut: an independent path
    for name, size in (("fc1", 24), ("fc2", WIDTH)):
        assert outputs[0][name].shape == (size, SAMPLES, 3)
        assert torch.allclose(outputs[0][name], outputs[1][name], atol=1e-5)


def test_dead_units_planted_in_a_sequence_first_layer_are_found_as_in_the_twin() -> None:
    tested, twin = _twins("encoder")
    for model in (tested, twin):
        with torch.no_grad():
            model.encoder.layers[0].linear1.weight[:6] = 0.0
            model.encoder.layers[0].linear1.bias[:6] = -1.0  # 6 of 24 units never activate after the ReLU
    result, _ = _same_findings(tested, twin, _data(twin, 6), ["D101"])
    dead = [f for f in result.findings if f.location and f.location.layer == "encoder.layers.0.linear1"]
    assert any("6 of 24 units of encoder.layers.0.linear1 never activate" in f.message for f in dead)


def test_circuit_rules_on_a_sequence_first_encoder_match_the_twin() -> None:
    tested, twin = _twins("encoder")
    _same_findings(tested, twin, _data(twin, 6), ["L208", "R301", "R302", "R304"])


@pytest.mark.parametrize("fold, described", [
    ("samples", "6 rows per sample folded into axis 0 (each sample's rows together)"),
    ("tokens", "6 rows per sample folded into axis 0 (row by row, the samples inside each)")])
def test_folded_rows_are_audited_and_measure_as_the_unfolded_twin(fold: str, described: str) -> None:
    tested, twin = _twins("folded", fold)
    result, _ = _same_findings(tested, twin, _data(twin, 6), ["D101", "L202", "L207"])
    layouts = {c["layer"]: c.get("layout") for c in result.metadata["components"]}
    assert layouts == {"fc1": described, "fc2": described, "head": None}


def test_rows_mixed_across_samples_stay_skipped_with_the_reason() -> None:
    tested, _ = _twins("folded", "mixed")
    result = mechaudit.audit(tested, _data(tested, 6), select=["D101"])
    skipped = result.metadata["skipped_layers"]
    assert set(skipped) == {"fc1", "fc2"}
    assert skipped["fc1"].startswith("its output (12, 24) has 12 rows for the 2 samples (2 x 6), but they do not "
                                     "follow the samples when these are reordered")
    assert [c["layer"] for c in result.metadata["components"]] == ["head"]


class _Frames(nn.Module):  # a video idiom: one convolution applied to every frame, frames folded into the batch
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        samples, frames = video.shape[:2]
        maps = self.conv(video.flatten(0, 1))
        return self.head(maps.mean((2, 3)).reshape(samples, frames, -1).mean(1))


def test_a_convolution_on_folded_frames_stays_skipped_naming_its_layout() -> None:
    video = torch.randn(4, 3, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    view = ModelView.discover(_Frames().eval(), video[:2])
    assert view.skipped["conv"] == ("its output (6, 4, 6, 6) holds 3 rows per sample folded into axis 0 (each "
                                    "sample's rows together): a convolution on folded frames or windows is not "
                                    "audited (mechaudit audits convolutions with one row per sample)")


def test_hooks_see_the_samples_first_their_edits_in_place_and_inputs_on_the_graph() -> None:
    tested, twin = _twins("encoder")
    ids = _ids(6)[:3]
    seen = {}
    for name, model in (("tested", tested), ("twin", twin)):
        view = ModelView.discover(model, ids[:2])
        layer = view.layer("encoder.layers.0.linear2")

        def keep(output, args, name=name):
            seen[name] = (output.detach().clone(), args[0])
            output[:, :, 3] = 0.0  # in place, returning nothing: reaches the model all the same

        with installed([view.hook(layer, keep)]):
            out = model(ids)
            (grad,) = torch.autograd.grad(out.sum(), seen[name][1])  # the input given to the hook is on the graph
        seen[name] = (*seen[name], grad, out.detach())
    assert seen["tested"][0].shape == (3, 6, WIDTH)
    for mine, other in zip(seen["tested"], seen["twin"]):
        assert torch.allclose(mine, other, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(seen["tested"][3], twin(ids), atol=1e-4)  # the edit changed the output


@pytest.mark.parametrize("layout, shape", [(Layout(1), (5, 3, 4)), (Layout(0, 5), (15, 4)), (Layout(0, 5), (15, 2, 4)),
                                           (Layout(1, 5), (15, 4)), (Layout(1, 5), (15, 2, 4))])
def test_a_layout_round_trips_and_puts_each_samples_rows_together(layout: Layout, shape: tuple) -> None:
    value = torch.randn(shape)
    first = layout.samples_first(value)
    assert first.shape[0] == 3 and torch.equal(layout.restored(first, value), value)
    rows = value.reshape(3, 5, -1) if layout.axis == 0 else value.reshape(5, 3, -1).transpose(0, 1)
    assert torch.equal(first.reshape(3, -1), rows.reshape(3, -1)) if layout.rows > 1 else torch.equal(
        first, value.transpose(0, 1))


# -- review fixes: the output layer in any layout, rows per sample checked per forward, the input pre-hook by
# identity, identical discovery samples, activation maximisation and pictures on folded windows, ROME's guard ------

class _LastLayer(nn.Module):
    """The logits written sequence-first ((tokens, samples, vocab), turned back) or folded (samples x tokens, vocab)."""

    def __init__(self, fold: str) -> None:
        super().__init__()
        self.fold = fold
        self.embed, self.fc, self.head = nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(self.embed(ids.long())))
        if self.fold == "sequence":
            return self.head(x.transpose(0, 1)).transpose(0, 1)
        return self.head(x.reshape(-1, WIDTH)).reshape(*ids.shape, 5)


@pytest.mark.parametrize("fold", ["sequence", "rows"])
def test_a_last_layer_not_samples_first_is_still_the_output_layer(fold: str) -> None:
    torch.manual_seed(0)
    view = ModelView.discover(_LastLayer(fold).eval(), _ids(6)[:2])
    assert not view.layer("head").layout.is_samples_first
    assert view.layer("head").is_output and [layer.name for layer in view.hidden_layers] == ["fc"]


def test_another_number_of_rows_per_sample_than_at_discovery_raises_naming_the_layer() -> None:
    tested, _ = _twins("folded")
    view = ModelView.discover(tested, _ids(6)[:2])  # 6 rows per sample
    with installed([view.hook(view.layer("fc1"), lambda output, _args: None)]), torch.no_grad():
        assert tested(_ids(6)[:3]).shape == (3, 3)
        with pytest.raises(ValueError, match="layer fc1: .*6 rows for each of the 3 samples"):
            tested(_ids(4)[:3])  # 12 rows: a multiple of 6, which would read as 2 samples of 6 rows


def test_a_later_pre_hook_replacing_the_input_is_what_the_hook_sees() -> None:
    tested, twin = _twins("folded")
    ids, seen = _ids(6)[:3], {}
    for name, model in (("tested", tested), ("twin", twin)):
        view = ModelView.discover(model, ids[:2])
        with installed([view.hook(view.layer("fc2"), lambda _output, args, name=name: seen.__setitem__(name, args[0])),
                        model.fc2.register_forward_pre_hook(lambda _m, args: (args[0] * 2.0,))]), torch.no_grad():
            model(ids)
    assert seen["tested"].shape == (3, 6, 24) and torch.allclose(seen["tested"], seen["twin"], atol=1e-6)


def test_identical_discovery_samples_do_not_pass_for_a_layout() -> None:
    rows = torch.randn(3, 4).repeat(2, 1)  # 2 identical samples' 3 rows, row by row: reordering changes nothing
    assert verified_layout(rows, rows.clone(), 2, torch.tensor([1, 0])) is None
    tested, _ = _twins("folded", "tokens")
    view = ModelView.discover(tested, _ids(6)[:1].repeat(2, 1))
    assert view.skipped["fc1"] == ("its output (12, 24) is not samples first for the 2 discovery samples, and where "
                                   "they are cannot be checked: the discovery samples are all the same (give distinct "
                                   "inputs)")


def test_a_samples_first_model_gets_no_second_discovery_forward() -> None:
    for model, forwards in ((_twins("folded")[1], 1), (_twins("folded")[0], 2)):
        calls: list[int] = []
        with installed([model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))]):
            ModelView.discover(model, _ids(6)[:2])
        assert len(calls) == forwards


class _Windows(nn.Module):
    """Swin's idiom: 2x2 patches of an 8x8 image, 4 windows of 4 patches each, a Linear on (samples x windows,
    patches, width) when ``fold``, else on (samples, patches, width)."""

    def __init__(self, fold: bool) -> None:
        super().__init__()
        self.fold = fold
        self.patch, self.fc, self.head = nn.Conv2d(3, 8, 2, stride=2), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(image).flatten(2).transpose(1, 2)  # (samples, 16, 8)
        if self.fold:
            return self.head(torch.relu(self.fc(tokens.reshape(-1, 4, 8))).reshape(len(image), 16, 6).mean(1))
        return self.head(torch.relu(self.fc(tokens)).mean(1))


def _windows() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    tested, twin = _Windows(True).eval(), _Windows(False).eval()
    twin.load_state_dict(tested.state_dict())
    return tested, twin, torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_activation_maximisation_reads_every_window_of_a_folded_layer() -> None:
    from mechaudit.techniques.activation_max import maximize_activation

    tested, twin, images = _windows()
    layout = ModelView.discover(tested, images[:2]).layer("fc").layout
    assert layout == Layout(0, 4)
    results = [maximize_activation(model, model.fc, 2, (3, 8, 8), steps=8, layout=given)
               for model, given in ((tested, layout), (twin, Layout()))]
    assert results[0]["objective"] == pytest.approx(results[1]["objective"], abs=1e-3)
    assert torch.allclose(torch.tensor(results[0]["image"]), torch.tensor(results[1]["image"]), atol=1e-3)


def test_unit_pictures_of_a_folded_layer_maximise_the_unit_over_every_window() -> None:
    from mechaudit.checks.decomposition_evidence import unit_pictures
    from mechaudit.context import AuditContext

    tested, twin, images = _windows()
    rows = []
    for model in (tested, twin):
        context = AuditContext(ModelView.discover(model, images[:2]), AuditData(images, torch.zeros(8).long()),
                               "classification", (), torch.device("cpu"), 64, 8, 0)
        rows.append(unit_pictures(context, ["fc:u2"])["activation_maximization"][0])
    assert rows[0]["objective"] == pytest.approx(rows[1]["objective"], abs=1e-3)  # each patch reaches the same peak
    assert torch.allclose(torch.tensor(rows[0]["image"]), torch.tensor(rows[1]["image"]), atol=1e-3)  # every one


def test_rome_refuses_a_projection_on_folded_rows() -> None:
    transformers = pytest.importorskip("transformers")
    from mechaudit.errors import InputError
    from mechaudit.techniques.rome import causal_trace, rank_one_edit

    torch.manual_seed(0)
    config = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                    num_attention_heads=2, max_position_embeddings=16, word_embed_proj_dim=16)
    model = transformers.OPTForCausalLM(config).eval()
    fc2, prompts = model.model.decoder.layers[0].fc2, _ids(5)[:1]
    with pytest.raises(InputError, match=r"reads or writes \(20, 32\) for prompts \(4, 5\)"):
        rank_one_edit(model, fc2, prompts, 2, 3, key_data=_ids(5)[:4], steps=1)
    with pytest.raises(InputError, match=r"reads or writes \(5, 16\) for prompts \(1, 5\)"):
        causal_trace(model, model.model.decoder.embed_tokens, [fc2], prompts, [1, 2], 3, runs=1)


def test_path_estimates_at_a_folded_readers_input_match_the_twin() -> None:
    """fc1's units moved where fc2 (folded rows) reads them: the read site turns fc2's input samples first."""
    from mechaudit.techniques.circuits import target_logit
    from mechaudit.techniques.node_ablation import read_sites
    from mechaudit.techniques.path_attribution import mean_toward, path_estimates

    tested, twin = _twins("folded")
    ids, estimates = _ids(6)[:8], []
    with torch.no_grad():
        read = torch.relu(twin.fc1(twin.embed(ids))).mean(0)  # fc2's mean input per sample, (tokens, 24)
        targets = twin(ids).argmax(-1)
    for model in (tested, twin):
        view = ModelView.discover(model, ids[:2])
        sites = read_sites(view, {"fc1": "fc2"}, {"fc2": read})
        estimates.append(path_estimates(view, [view.layer("fc1")], ids, targets, target_logit, steps=2,
                                        toward=mean_toward({}, sites), sites=sites)["fc1"])
    assert estimates[0].shape == (24, 8) and estimates[0].abs().sum() > 0
    assert torch.allclose(estimates[0], estimates[1], atol=1e-5)


def test_input_covariances_of_rows_folded_row_by_row_keep_each_samples_rows_in_its_group() -> None:
    """With a bootstrap, sample i's vectors go to group i mod groups: a Linear input folded row by row is turned
    samples first before it is split, so each group holds the same vectors as the twin's."""
    from mechaudit.techniques.read_vectors import read_and_input_covariances

    tested, twin = _twins("folded", "tokens")
    ids, groups = _ids(6), []
    for model in (tested, twin):
        view = ModelView.discover(model, ids[:2])
        recorded = read_and_input_covariances(view, [view.layer("fc2")], ids, 8, torch.device("cpu"), bootstrap=4)
        groups.append([part.gram for part in recorded["fc2"].given.parts])
    assert len(groups[0]) > 1
    for mine, other in zip(*groups):
        assert torch.allclose(mine, other, atol=1e-4)


def test_a_bfloat16_output_reordered_within_rounding_still_verifies() -> None:
    before = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)  # 2 samples x 3 rows
    order = torch.tensor([1, 0])
    after = before.reshape(2, 3, 8)[order].reshape(6, 8) * (1 + 2 ** -7)  # one bfloat16 ulp off, as batching may
    assert verified_layout(before, after, 2, order) == Layout(0, 3)
    assert verified_layout(before.float(), after.float() * (1 + 1e-2), 2, order) is None  # float32: not rounding


def test_discoverys_second_forward_leaves_the_random_state_as_one_forward_does() -> None:
    class Drawing(Folded):  # draws from the global RNG in its forward pass, as dropout in training mode does
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            torch.rand(3)
            return super().forward(ids)

    torch.manual_seed(0)
    model = Drawing("samples").eval()
    ids = _ids(6)[:2]
    torch.manual_seed(1)
    assert not ModelView.discover(model, ids).layer("fc1").layout.is_samples_first  # two forward passes
    drawn = torch.rand(4)
    torch.manual_seed(1)
    model(ids)
    assert torch.equal(drawn, torch.rand(4))
