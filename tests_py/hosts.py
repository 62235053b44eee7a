"""One host of each kind and layout, and every (template, host) pair that fits: shared by the
Karn and Urza tests."""

from __future__ import annotations

from esper import karn

HOSTS = {
    "linear": {"kind": "linear", "in": 16, "out": 8},
    "block": {"kind": "block", "in": 12, "out": 6},
    "conv1d": {"kind": "conv1d", "in": 4, "out": 6, "kernel": 3, "stride": 1, "padding": 1},
    "conv2d": {"kind": "conv2d", "in": 4, "out": 6, "kernel": 3, "stride": 2, "padding": 1},
    "residual": {"kind": "residual", "dim": 8},
    "residual_2d": {"kind": "residual", "dim": 8, "spatial": [6, 6]},
    "conv2d_pair": {"kind": "conv2d_pair", "in": 3, "mid": 4, "out": 6, "kernel": 3, "stride": 1, "padding": 1,
                    "consumer_kernel": 3, "consumer_stride": 2, "consumer_padding": 1, "activation": "relu"},
    "conv1d_pair": {"kind": "conv1d_pair", "in": 2, "mid": 5, "out": 4, "kernel": 5, "stride": 2, "padding": 0,
                    "consumer_kernel": 3, "consumer_stride": 1, "consumer_padding": 0, "activation": "identity"},
}
LAYOUT = {"linear": "linear", "block": "linear", "conv1d": "conv1d", "conv2d": "conv2d", "residual": "residual",
          "residual_2d": "residual_2d", "conv2d_pair": "conv2d_pair", "conv1d_pair": "conv1d_pair"}
TEMPLATES = karn.templates()
PAIRS = [(t["name"], h) for t in TEMPLATES for h in HOSTS if LAYOUT[h] in t["layouts"]]
