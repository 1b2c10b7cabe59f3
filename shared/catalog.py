"""The zoo's model names, torch-free, so the gateway can check a deploy request without the zoo.

`shared.zoo` imports torch; the gateway process must not. A unit test keeps the two lists equal.
"""

from __future__ import annotations

ZOO_NAMES: tuple[str, ...] = ("mlp", "resnet18", "resnet50", "resnet152", "bert-base")
