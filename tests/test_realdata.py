"""Real data from ../shared/data (skipped when absent)."""

import numpy as np

from tracker import PointTracker, Queries, create_featurizer, default_match_config, open_video
from tracker.eval.evaluation import badja_queries, load_badja, pck


def badja_pck(shared_data, name: str) -> float:
    seq = load_badja(shared_data / "badja" / f"{name}.json", shared_data / "davis2016")
    xy, query_frame, ids = badja_queries(seq)
    video = open_video(seq.frames_dir)
    featurizer = create_featurizer("sift", (video.info.height, video.info.width))
    tracker = PointTracker(featurizer, default_match_config("sift"))
    annotated = set(seq.frame_index[1:].tolist())
    predicted = {}
    for result in tracker.track(video, Queries.create(xy, query_frame)):
        if result.frame_index in annotated:
            predicted[result.frame_index] = result.xy.numpy()
    pred = np.stack([predicted[i] for i in seq.frame_index[1:]])
    return pck(pred, seq.joints[1:, ids], seq.visible[1:, ids], seq.mask_area[1:])


def test_badja_dog_with_sift(shared_data):
    score = badja_pck(shared_data, "dog")
    print(f"BADJA dog, sift, PCK@0.2 = {score:.3f}")
    assert score > 0.35  # measured 0.451 (static baseline: 0.056)


def test_davis_folder_and_mp4_read_the_same_size(shared_data):
    folder = open_video(shared_data / "davis2016" / "JPEGImages" / "480p" / "dog")
    assert (folder.info.width, folder.info.height, folder.info.num_frames) == (854, 480, 60)
    clip = open_video(shared_data / "videos" / "01_dog.mp4")
    assert (clip.info.width, clip.info.height) == (1280, 720) and clip.info.num_frames > 200
    first = next(iter(clip))
    assert first.shape == (720, 1280, 3) and first.dtype == np.uint8
