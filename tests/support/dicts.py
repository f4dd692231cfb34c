"""A Hydra/OmegaConf config as one flat mapping, to compare configs key by key."""

from __future__ import annotations

from omegaconf import OmegaConf


def flat(config, *, empty_mappings: bool = True) -> dict:
    """Dotted key -> leaf value, interpolations left as written. An empty mapping is a leaf (its value ``{}``),
    unless ``empty_mappings=False`` leaves it out (where a recipe may fill one in, it is no key of its own)."""

    def walk(node, prefix):
        if isinstance(node, dict) and (node or not empty_mappings):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node

    return dict(walk(OmegaConf.to_container(config, resolve=False), ""))
