"""The names the command line offers (models, point refinement modes), in a module that imports nothing:
``track --help`` lists them without importing torch.

:mod:`tracker.featurizers` re-exports the model names and :mod:`tracker.tracking` the refinement modes, where
their meaning is documented; :mod:`tracker.weights` holds each ViT model's sources.
"""

VIT_MODELS = ("distilldift", "distilldift-ws", "distilldift-s", "dinov2-b", "dinov2-s")
DINOV3_MODELS = ("dinov3-s", "dinov3-b")  # patch 16, through timm (tracker.dinov3)
# Stable Diffusion UNet features (tracker.diffusion_features)
DIFFUSION_MODELS = ("dift", "dhf", "dhf-one-step", "dhf-sd21")
POINT_ONLY_MODELS = ("hedlin",)  # no feature grid: `track --points` only (tracker.hedlin_tracker)
MODEL_NAMES = ("auto", *VIT_MODELS, *DINOV3_MODELS, *DIFFUSION_MODELS, "sift", *POINT_ONLY_MODELS)  # ``--model``
POINT_REFINE_MODES = ("lk", "none")  # ``track --refine``: tracker.tracking.REFINE_MODES; the first is the default
# ``track``'s settings by what reads them (argparse dests; :func:`option_flag` names each)
DENSE_OPTIONS = ("context", "topk", "radius", "prop_temperature", "pool")  # the masks' PropagationConfig
MATCH_OPTIONS = ("window_radius", "temperature", "min_score", "search_radius")  # points, colormaps, edits
POINT_MATCH_OPTIONS = ("fb_tolerance", "update")  # the point tracker's alone


def option_flag(dest: str) -> str:
    """The command-line flag of an argparse dest: ``min_score`` -> ``--min-score``."""
    return "--" + dest.replace("_", "-")


def check_model_name(name: str, where: str = "") -> None:
    """Refuse, in one line (:class:`tracker.errors.TrackerError`), a ``--model`` not in :data:`MODEL_NAMES`.

    Args:
        name: the ``--model`` value.
        where: a prefix naming the input at fault (``manifest.jsonl line 3: ``), or empty.
    """
    if name not in MODEL_NAMES:
        from tracker.errors import TrackerError  # imports nothing either

        raise TrackerError(f"{where}unknown model {name!r}; choose from: {', '.join(MODEL_NAMES)}")


def check_file_model(name: str, file: str, held: str) -> None:
    """Refuse a ``--model`` naming another model than the one an exported ``--onnx``/``--engine`` file holds.

    The file's model is the one that runs, so such a ``--model`` would be ignored without a word.

    Args:
        name: the ``--model`` value (``auto`` always passes).
        file: the exported file's path, as given.
        held: the model the file holds.
    """
    if name not in ("auto", held):
        from tracker.errors import TrackerError

        raise TrackerError(
            f"--model {name}, but {file} holds {held}: drop --model (the file brings its model and size)"
        )
