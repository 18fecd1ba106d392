"""The model names, in a module that imports nothing: the command line builds its help from them without torch.

:mod:`tracker.featurizers` re-exports both tuples; :mod:`tracker.weights` holds each ViT model's sources.
"""

VIT_MODELS = ("distilldift", "distilldift-ws", "distilldift-s", "dinov2-b", "dinov2-s")
MODEL_NAMES = ("auto", *VIT_MODELS, "sift")  # what ``--model`` takes
