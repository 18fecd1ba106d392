"""Real-time semantic point tracking with the DistillDIFT student.

Public API::

    from tracker import PointTracker, Queries, create_featurizer, open_video

The names are loaded on first use (PEP 562), so that importing a light module of the package, such as
``tracker.errors`` for the command line's ``--help``, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module that defines it
_SOURCES = {
    "BackendOptions": "tracker.backends",
    "available_backends": "tracker.backends",
    "build_featurizer": "tracker.backends",
    "TrackerError": "tracker.errors",
    "WeightsUnavailable": "tracker.errors",
    "Featurizer": "tracker.featurizers",
    "SiftFeaturizer": "tracker.featurizers",
    "ViTFeaturizer": "tracker.featurizers",
    "create_featurizer": "tracker.featurizers",
    "default_match_config": "tracker.featurizers",
    "resolve_model": "tracker.featurizers",
    "GridGeometry": "tracker.geometry",
    "SizeSpec": "tracker.geometry",
    "VideoInfo": "tracker.io.video",
    "open_video": "tracker.io.video",
    "MatchConfig": "tracker.matching",
    "PointTracker": "tracker.tracking",
    "Queries": "tracker.track_types",
    "TrackResult": "tracker.track_types",
    "TrackState": "tracker.track_types",
}

__all__ = [
    "BackendOptions",
    "available_backends",
    "build_featurizer",
    "Featurizer",
    "GridGeometry",
    "MatchConfig",
    "PointTracker",
    "Queries",
    "SiftFeaturizer",
    "SizeSpec",
    "TrackResult",
    "TrackState",
    "TrackerError",
    "VideoInfo",
    "ViTFeaturizer",
    "WeightsUnavailable",
    "create_featurizer",
    "default_match_config",
    "open_video",
    "resolve_model",
]


def __getattr__(name: str):
    """Import a public name's module on first use and cache the name here (PEP 562)."""
    source = _SOURCES.get(name)
    if source is None:  # also lets ``from tracker import weights`` fall back to importing the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static type checkers and IDEs see the eager imports
    from tracker.backends import BackendOptions, available_backends, build_featurizer
    from tracker.errors import TrackerError, WeightsUnavailable
    from tracker.featurizers import (
        Featurizer,
        SiftFeaturizer,
        ViTFeaturizer,
        create_featurizer,
        default_match_config,
        resolve_model,
    )
    from tracker.geometry import GridGeometry, SizeSpec
    from tracker.io.video import VideoInfo, open_video
    from tracker.matching import MatchConfig
    from tracker.track_types import Queries, TrackResult, TrackState
    from tracker.tracking import PointTracker
