"""One conversion of image files to RGB, for training and serving alike.

The SavedModel's `encoded_images` signature decodes in TensorFlow (`decode_jpeg`/`decode_png` with
3 channels, so that TF Serving needs nothing else); `decode_rgb` gives the same pixels with Pillow,
without TensorFlow, for the training pipelines: grayscale repeated into R, G and B, alpha dropped
(not composited), palettes expanded, CMYK JPEGs converted as libjpeg does, 16-bit channels cut to
their high byte.

    >>> from PIL import Image
    >>> decode_rgb(Image.new("LA", (2, 1), (7, 100))).tolist()
    [[[7, 7, 7], [7, 7, 7]]]
"""

import numpy as np

SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I")  # Pillow's modes for a 16-bit grayscale PNG


def decode_rgb(image):
    """uint8 pixels [height, width, 3] of an opened Pillow image."""
    if image.mode in SIXTEEN_BIT_GRAY:
        # Pillow's own conversion clips 16-bit values at 255; TensorFlow keeps the high byte.
        gray = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))
