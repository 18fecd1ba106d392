"""Accuracy evaluation: metrics equal to the official toolkits, benchmark data readers, OpenCV baselines."""
