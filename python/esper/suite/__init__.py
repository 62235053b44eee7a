"""The task suite: families of generated tasks, split into training and held-out families, and
`esper suite`, which runs the demo's protocol on them (paired seeds, training FLOPs, the fixed-size
sweep, the grown run and its shape from scratch, the bars of DESIGN §9). See docs/suite.md."""

from .families import FAMILIES, HELD_OUT, TRAIN, Family, HeldOutError, families, load

__all__ = ["FAMILIES", "TRAIN", "HELD_OUT", "Family", "HeldOutError", "families", "load"]
