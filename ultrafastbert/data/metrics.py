"""Task metrics: predictions (class ids, logits or regression scores) against labels, as fractions.

Every task names its metrics (main metric first) from ``METRICS``; scikit-learn and SciPy compute them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as sk_metrics


def _numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.float() if values.is_floating_point() else values).numpy()  # bfloat16 has no numpy dtype
    return np.asarray(values)


def _classes(predictions: np.ndarray) -> np.ndarray:
    return predictions.argmax(-1) if predictions.ndim == 2 else predictions.astype(np.int64)


METRICS = {
    "accuracy": lambda p, y: sk_metrics.accuracy_score(y, _classes(p)),
    "f1": lambda p, y: sk_metrics.f1_score(y, _classes(p)),  # binary, positive class 1 (GLUE's convention)
    "macro_f1": lambda p, y: sk_metrics.f1_score(y, _classes(p), average="macro"),
    "mcc": lambda p, y: sk_metrics.matthews_corrcoef(y, _classes(p)),
    "pearson": lambda p, y: stats.pearsonr(p.reshape(-1), y)[0],
    "spearman": lambda p, y: stats.spearmanr(p.reshape(-1), y)[0],
    "mse": lambda p, y: sk_metrics.mean_squared_error(y, p.reshape(-1)),  # lower is better: never a main metric
}


def compute_metrics(
    metric_names: Sequence[str], predictions: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """Score predictions; ``predictions`` are class ids, logits ``(N, C)`` (argmax taken) or regression scores.

    Values are fractions (accuracy 0.91, not 91). Example: ``compute_metrics(task.metric_names, logits, labels)``.
    """
    predictions, labels = _numpy(predictions), _numpy(labels)
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    unknown = [name for name in metric_names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
    return {name: float(METRICS[name](predictions, labels)) for name in metric_names}
