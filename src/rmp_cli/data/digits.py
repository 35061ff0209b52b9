"""scikit-learn's bundled 8x8 digits: always available offline, small enough for tests and demos."""

from __future__ import annotations

import numpy as np
import torch

# A split seed independent of the run seed: every run and every seed tests on the same 360 images.
SPLIT_SEED = 0
TEST_FRACTION = 0.2
MAX_VALUE = 16.0  # 17 gray levels, 0..16
# Statistics of the fixed training split scaled to [0, 1] (tests check them against the data).
MEAN = (0.3054,)
STD = (0.3761,)


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_images, train_labels, test_images, test_labels); images uint8 (N, 1, 8, 8) in 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=TEST_FRACTION,
        stratify=digits.target,
        random_state=SPLIT_SEED,
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
