"""How contrastive methods (CAA, vector_prompt) turn activations into one direction.

Each aggregator takes positive and negative activations [N, hidden] (rows paired when
`paired`) and returns a direction [hidden]:

- mean_diff: mean(positive) - mean(negative) (CAA's rule);
- pca: the first principal component of the paired differences (centred, as repeng's
  `pca_diff` fits sklearn's PCA); for unpaired sets, of every activation minus the
  midpoint of the two class means. Its sign is aligned with the mean difference and it
  is scaled to the mean difference's norm, so multipliers mean the same across
  aggregators;
- logistic: the weight vector of a scikit-learn LogisticRegression separating positive
  from negative activations, scaled to the mean difference's norm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from steer.errors import ConfigError, DataError

Aggregator = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def mean_diff(positive: torch.Tensor, negative: torch.Tensor, paired: bool) -> torch.Tensor:
    if paired:
        return (positive - negative).mean(0)
    return positive.mean(0) - negative.mean(0)


def _scaled_like_mean_diff(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    unit = direction / direction.norm().clamp_min(1e-12)
    if torch.dot(unit, reference) < 0:  # a principal axis has no sign of its own
        unit = -unit
    return unit * reference.norm()


def pca(positive: torch.Tensor, negative: torch.Tensor, paired: bool) -> torch.Tensor:
    reference = mean_diff(positive, negative, paired)
    if paired:
        rows = positive - negative
        rows = rows - rows.mean(0)
    else:
        midpoint = (positive.mean(0) + negative.mean(0)) / 2
        rows = torch.cat([positive, negative]) - midpoint
    if rows.shape[0] < 2 or float(rows.norm()) == 0.0:
        raise DataError("aggregator=pca needs at least two items that differ; use mean_diff for fewer.")
    _, _, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    return _scaled_like_mean_diff(vh[0].to(positive.dtype), reference)


def logistic(positive: torch.Tensor, negative: torch.Tensor, paired: bool) -> torch.Tensor:
    from sklearn.linear_model import LogisticRegression  # local: only paid when chosen

    if positive.shape[0] < 1 or negative.shape[0] < 1:
        raise DataError("aggregator=logistic needs positive and negative examples.")
    features = torch.cat([positive, negative]).double().numpy()
    labels = [1] * positive.shape[0] + [0] * negative.shape[0]
    classifier = LogisticRegression(max_iter=2000).fit(features, labels)
    weights = torch.from_numpy(classifier.coef_[0]).to(positive.dtype)
    return _scaled_like_mean_diff(weights, mean_diff(positive, negative, paired))


AGGREGATORS: dict[str, Aggregator] = {"mean_diff": mean_diff, "pca": pca, "logistic": logistic}


def aggregate(name: str, positive: torch.Tensor, negative: torch.Tensor, *, paired: bool) -> torch.Tensor:
    if name not in AGGREGATORS:
        raise ConfigError(f"Unknown aggregator {name!r}; use one of {', '.join(AGGREGATORS)}.")
    return AGGREGATORS[name](positive, negative, paired)
