"""Scores -> classes: the one softmax and the one top-k, shared by /v1's predictions and v2's classification
extension (service/api/v2_response.py)."""

from __future__ import annotations

import numpy as np

from service.schemas import Prediction


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest scores of each row of a 2-D array, best first (ties: lower index first)."""
    k = min(k, scores.shape[-1])
    return np.argsort(-scores.astype(np.float64), axis=-1, kind="stable")[..., :k]


def top_k_predictions(logits: np.ndarray, top_k: int, labels: list[str]) -> list[list[Prediction]]:
    """Softmax, then the `top_k` classes of each row with their labels, best first."""
    probs = softmax(logits)
    # plain construction (validated in pydantic's core) costs less per model than `model_construct`
    return [
        [Prediction(label=labels[i], index=i, score=score)
         for i, score in zip(idx.tolist(), row[idx].tolist(), strict=True)]
        for row, idx in zip(probs, top_k_indices(probs, top_k), strict=True)
    ]
