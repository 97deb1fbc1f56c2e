"""How easy is the phantom? Test AUROC of a logistic regression on raw pixels, per pathology.

DESIGN.md: a phantom that a linear model on raw pixels can solve is a toy. This trains one L2-regularised
logistic regression (scikit-learn, C=0.01) per pathology on the profile's training split, images averaged
down to 64 x 64, U-Ignore labels, and prints its test AUROC beside nothing else; compare with notebook 02's
CNN. Run notebook 01 first. Run: ``python benchmarks/bench_linear_probe.py [--profile default]``.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from helpers import data, labels
from helpers.run import Run


def pixels(images: np.ndarray, side: int = 64) -> np.ndarray:
    """Images area-averaged down to ``side`` x ``side`` (PIL's box filter on float pixels: the block mean for an
    integer factor, as at 128 px, and the overlap-weighted mean otherwise, as at the 96-px default) and flattened,
    in [0, 1]."""
    small = [
        np.asarray(Image.fromarray(image.astype(np.float32) / 255.0, mode="F").resize((side, side), Image.BOX))
        for image in np.asarray(images)
    ]
    return np.stack(small).reshape(len(small), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="default")
    args = parser.parse_args()
    prepared = Run(args.profile, device="cpu").data()
    train_x, test_x = pixels(prepared.images["train"]), pixels(prepared.images["test"])
    train_t, train_m = data.apply_policy(prepared.split("train"), "u-ignore")
    test_t, test_m = data.apply_policy(prepared.split("test"), "u-ignore")
    print("| pathology | linear-probe test AUROC |\n|---|---|")
    scores = []
    for j, name in enumerate(labels.PATHOLOGIES):
        keep, kept = train_m[:, j] > 0, test_m[:, j] > 0
        probe = LogisticRegression(C=0.01, max_iter=300).fit(train_x[keep], train_t[keep, j])
        scores.append(roc_auc_score(test_t[kept, j], probe.predict_proba(test_x[kept])[:, 1]))
        print(f"| {name} | {scores[-1]:.3f} |")
    print(f"| macro (14) | {np.mean(scores):.3f} |")


if __name__ == "__main__":
    main()
