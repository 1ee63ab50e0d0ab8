"""Write odtkit/datasets/data/digits.npz: the 1797 handwritten digits odtkit ships.

The images are the test part of the UCI "Optical Recognition of Handwritten Digits"
data set (E. Alpaydin and C. Kaynak, 1998; CC BY 4.0): 8x8 blocks of counts 0..16. This
script takes them from the copy bundled with scikit-learn (a development dependency), so
that loading the task needs neither scikit-learn nor a network. It prints the SHA-256 of
the arrays, which odtkit checks on every load (DIGITS_SHA256 in odtkit/datasets/__init__.py).

    python data/build_digits.py
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "odtkit" / "datasets" / "data" / "digits.npz"


def main() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # counts 0..16, exact
    if not np.array_equal(images, bunch.images):
        raise SystemExit("scikit-learn's digits are not whole counts 0..16; not writing")
    labels = bunch.target.astype(np.uint8)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, images=images, labels=labels)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    print(f"wrote {OUT.name}: {images.shape[0]} images, sha256 {digest}")


if __name__ == "__main__":
    main()
