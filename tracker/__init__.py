"""Real-time semantic point tracking with the DistillDIFT student.

Public API::

    from tracker import PointTracker, Queries, create_featurizer, open_video
"""

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
from tracker.tracking import PointTracker, Queries, TrackResult, TrackState

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
