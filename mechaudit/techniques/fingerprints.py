"""Representation fingerprints: a layer's centred Gram matrix on a fixed, seeded subset of the audit data, small
enough to keep in an audit bundle, from which debiased linear CKA (:mod:`.cka`) and RSA (Spearman correlation of
the representational dissimilarity matrices, Kriegeskorte, Mur, Bandettini 2008) against a later model's layer are
computed without the earlier model. Centring does not change Euclidean distances, so the dissimilarity matrix is
read from the Gram matrix: ``d_ij = K_ii + K_jj - 2 K_ij``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from .cka import gram_cka

FORMAT = "mechaudit-representation-fingerprint/1"


@dataclass(frozen=True)
class Fingerprints:
    """Centred Gram matrices (samples, samples) by layer, and the SHA-256 of the samples they were taken on."""

    grams: dict[str, torch.Tensor]
    inputs_sha256: str

    @property
    def samples(self) -> int:
        return next(iter(self.grams.values())).shape[0] if self.grams else 0


def centred_gram(activations: torch.Tensor) -> torch.Tensor:
    """``X_c X_c^T`` of ``activations`` (samples, units) with centred columns, stored as float32."""
    x = activations.double().flatten(1)
    x = x - x.mean(0, keepdim=True)
    return (x @ x.T).float()


def inputs_digest(inputs: torch.Tensor) -> str:
    """SHA-256 of the samples a fingerprint is taken on (shape, dtype and bytes), so that a comparison on other
    samples is refused rather than silently meaningless."""
    tensor = inputs.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def dissimilarities(gram: torch.Tensor) -> torch.Tensor:
    """The upper triangle (without the diagonal) of the squared-Euclidean dissimilarity matrix."""
    g = gram.double()
    diagonal = g.diagonal()
    distances = diagonal[:, None] + diagonal[None, :] - 2 * g
    rows, cols = torch.triu_indices(len(g), len(g), offset=1)
    return distances[rows, cols]


def gram_rsa(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    """RSA: Spearman correlation of the two dissimilarity matrices (scipy); 0 when either is constant."""
    from scipy.stats import spearmanr

    a, b = dissimilarities(k).numpy(), dissimilarities(l).numpy()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def serialise(fingerprints: Fingerprints) -> bytes:
    """The fingerprints as safetensors bytes (one tensor per layer, named by the layer; the metadata holds the
    format, the layer order and the samples' digest)."""
    from safetensors.torch import save

    tensors = {name: gram.contiguous() for name, gram in fingerprints.grams.items()}
    metadata = {"format": FORMAT, "layers": json.dumps(list(fingerprints.grams)),
                "inputs_sha256": fingerprints.inputs_sha256}
    return save(tensors, metadata=metadata)


def deserialise(raw: bytes, where: str) -> Fingerprints:
    """Fingerprints from :func:`serialise`'s bytes; ``ValueError`` naming ``where`` when they are not."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(raw)
        metadata = _metadata(raw)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where} is not a representation fingerprint file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{where} is not a representation fingerprint file (format {metadata.get('format')!r})")
    order = json.loads(metadata.get("layers", "[]"))
    grams = {name: tensors[name] for name in order if name in tensors}
    sizes = {tuple(g.shape) for g in grams.values()}
    if len(sizes) > 1 or any(len(s) != 2 or s[0] != s[1] for s in sizes):
        raise ValueError(f"{where} holds Gram matrices of different or non-square shapes")
    return Fingerprints(grams, str(metadata.get("inputs_sha256", "")))


def _metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its JSON header)."""
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise ValueError("truncated header")
    return json.loads(raw[8:8 + size].decode("utf-8")).get("__metadata__") or {}


def match_layers(current: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """For each current layer, its baseline counterpart and how it was found: ``"name"`` when the baseline has a
    layer of that name, else ``"best match"``: greedily, the unmatched baseline layer of highest CKA. Layers left
    without a counterpart (more current layers than baseline ones) are absent from the result."""
    matched = {name: (name, "name") for name in current if name in baseline}
    free = [name for name in baseline if name not in {m for m, _ in matched.values()}]
    pending = [name for name in current if name not in matched]
    scores = sorted(((gram_cka(current[c], baseline[b]), c, b) for c in pending for b in free), reverse=True)
    for _, name, counterpart in scores:
        if name not in matched and counterpart in free:
            matched[name] = (counterpart, "best match")
            free.remove(counterpart)
    return {name: matched[name] for name in current if name in matched}


def compare(current: Fingerprints, baseline: Fingerprints) -> list[dict]:
    """Per current layer with a counterpart in ``baseline`` (:func:`match_layers`): ``{layer, baseline_layer,
    matched_by, cka, rsa}``. ``ValueError`` when the two were taken on different samples."""
    if baseline.inputs_sha256 != current.inputs_sha256:
        raise ValueError("the fingerprints were taken on other samples (other audit data, seed or 'samples'): "
                         "representations of different samples do not compare")
    rows = []
    for name, (counterpart, how) in match_layers(current.grams, baseline.grams).items():
        old, new = baseline.grams[counterpart], current.grams[name]
        rows.append({"layer": name, "baseline_layer": counterpart, "matched_by": how,
                     "cka": round(gram_cka(new, old), 6), "rsa": round(gram_rsa(new, old), 6)})
    return rows
