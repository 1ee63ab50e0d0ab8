"""Suite-wide settings: one thread (tiny models on 2 busy cores are far faster so) and
a headless matplotlib backend."""

from __future__ import annotations

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
