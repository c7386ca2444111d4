"""A stage-one head for caches whose backbone was not trained by glag: a linear classifier fitted
on the train features with plain cross-entropy (full-batch L-BFGS, deterministic)."""

from __future__ import annotations

import numpy as np

HEAD_FIT = "linear, fitted on train features: CE + 5e-4 L2, full-batch L-BFGS (200 iterations)"


def fit_linear_head(
    features, labels, num_classes: int, weight_decay: float = 5e-4, max_iter: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """(weight [C, d], bias [C]) minimising mean CE + weight_decay/2 ||W||^2 on the given rows."""
    import torch

    x = torch.from_numpy(np.array(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    W = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ W.T + b, y) + 0.5 * weight_decay * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().numpy().copy(), b.detach().numpy().copy()
