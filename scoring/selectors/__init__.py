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
from scoring.selectors.linear import LinearSelector

# The selector for images when none is named (the service, `alc rank`): two EfficientNet-Lite heads at 128 px
# with mirror-image embeddings, the ensemble's ``small`` preset (measured in docs/benchmarks/low-noise.md).
DEFAULT_IMAGE_SELECTOR = "ensemble"
# The selector for a team's own embeddings: one calibrated linear head (encoders cannot read features).
DEFAULT_FEATURE_SELECTOR = "pretrained-linear"

# Targets are imported only when chosen, so torch loads only for learned selectors.
BUILTIN_SELECTORS: dict[str, str] = {
    "random": "scoring.selectors.baselines:RandomSelector",
    "oracle": "scoring.selectors.baselines:OracleSelector",
    "truth": "scoring.selectors.truth:TruthSelector",
    "posteriors": "scoring.selectors.baselines:PosteriorsSelector",
    "linear": "scoring.selectors.linear:LinearSelector",
    "vanilla": "scoring.selectors.vanilla:VanillaSelector",
    "coteaching": "scoring.selectors.coteaching:CoTeachingSelector",
    "ssl-linear": "scoring.selectors.ssl_linear:SSLLinearSelector",
    "bald": "scoring.selectors.bald:BaldSelector",
    "pretrained-linear": "scoring.selectors.pretrained_linear:PretrainedLinearSelector",
    "ensemble": "scoring.selectors.ensemble:EnsembleSelector",
    "text": "scoring.selectors.text:TextSelector",
    "finetune": "scoring.selectors.finetune:FineTuneSelector",
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


def check_options(name: str, options: dict[str, Any] | None) -> tuple[dict[str, inspect.Parameter], bool]:
    """ValueError when ``options`` name a parameter the selector's ``__init__`` does not take (checked when
    settings load, before any training); returns its parameters and whether it takes any keyword."""
    cls = selector_class(name)
    params = {} if cls.__init__ is object.__init__ else dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options or {}) - set(params)) if not takes_all else []
    if unknown:
        raise ValueError(f"selector {name!r} has no option(s) {', '.join(unknown)}; it accepts: {', '.join(params) or 'none'}")
    return params, takes_all


def make_selector(name: str, options: dict[str, Any] | None = None, **context: Any) -> Selector:
    """Instantiate a selector by name.

    ``context`` is what the caller knows (true_distribution in a simulation, posteriors path, seed,
    device, cache_dir, ...): each selector takes what its ``__init__`` accepts and ignores the rest.
    ``options`` are the user's explicit parameters for this selector: an unknown one is an error.
    """
    cls = selector_class(name)
    params, takes_all = check_options(name, options)
    accepted = context if takes_all else {k: v for k, v in context.items() if k in params}
    return cls(**(accepted | (options or {})))


__all__ = [
    "Selector",
    "RandomSelector",
    "OracleSelector",
    "PosteriorsSelector",
    "LinearSelector",
    "available_selectors",
    "check_options",
    "make_selector",
    "selector_class",
]
