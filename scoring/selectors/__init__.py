"""Selector registry: built-ins plus third-party selectors from the ``alc.selectors`` entry-point group.

An ML engineer ships ``[project.entry-points."alc.selectors"] mine = "pkg.module:MySelector"``
and picks it by name in config; nothing here changes.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

from scoring.selectors.base import Selector
from scoring.selectors.baselines import OracleSelector, PosteriorsSelector, RandomSelector

# Targets are imported only when chosen, so torch loads only for learned selectors.
BUILTIN_SELECTORS: dict[str, str] = {
    "random": "scoring.selectors.baselines:RandomSelector",
    "oracle": "scoring.selectors.baselines:OracleSelector",
    "posteriors": "scoring.selectors.baselines:PosteriorsSelector",
}


def available_selectors() -> dict[str, str]:
    """name -> 'module:Class' for every known selector (third-party entry points override nothing built in)."""
    found = {ep.name: ep.value for ep in entry_points(group="alc.selectors")}
    found.update(BUILTIN_SELECTORS)
    return found


def selector_class(name: str) -> type[Selector]:
    known = available_selectors()
    if name not in known:
        raise ValueError(f"unknown selector {name!r}; known: {', '.join(sorted(known))}")
    module_name, _, attr = known[name].partition(":")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def make_selector(name: str, **context: Any) -> Selector:
    """Instantiate a selector by name, passing only the context its ``__init__`` accepts.

    Context is what the caller knows (true_distribution in a simulation, posteriors path, seed,
    device, cache_dir, ...), so each selector takes what it needs and ignores the rest.
    """
    cls = selector_class(name)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return cls(**context)
    accepted = {k: v for k, v in context.items() if k in params}
    return cls(**accepted)


__all__ = [
    "Selector",
    "RandomSelector",
    "OracleSelector",
    "PosteriorsSelector",
    "available_selectors",
    "make_selector",
    "selector_class",
]
