"""Live demo: track what you click in a webcam's picture (the same as ``track live``).

Usage::

    python demos/webcam.py                        # camera 0, model auto (DistillDIFT if cached, else sift)
    python demos/webcam.py --camera 1 --model sift
    python demos/webcam.py --camera clip.mp4      # a video file standing in for the camera

Click: add a point on the frame shown. Drag: paint a mask. Keys: c clear, p or space pause, s save the
tracks, q or Esc quit. The window needs an OpenCV with GUI support (``opencv-python``, not the headless
wheel); without one, add ``--headless --script events.json``. ``track live --help`` lists every option.
"""

import sys

from tracker.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["live", *sys.argv[1:]]))
