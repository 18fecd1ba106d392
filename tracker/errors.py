"""The one exception type the command line turns into a one-line message and exit code 2."""


class TrackerError(Exception):
    """A problem with the user's input or environment (not a bug), reported as one line."""


class WeightsUnavailable(TrackerError):
    """Model weights are neither cached nor downloadable; the message says how to get them."""
