"""The one exception the data layer raises for bad input data."""

from __future__ import annotations


class DatasetError(ValueError):
    """Bad or unusable dataset input, found before training starts.

    The message is a single line that names the offending file (relative to the dataset folder
    where possible) and says how to fix it, e.g.
    ``masks/img_007.png: label value 9 >= num_classes 3; set num_classes or fix the mask``.
    """

    def __init__(self, message: str) -> None:
        # Keep the message on one line so it reads well in logs and CLI output.
        super().__init__(" ".join(str(message).split()))
