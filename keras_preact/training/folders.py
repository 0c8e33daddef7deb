"""Image folders of any class count and image size: which training files a run decodes, how each
image is stored, the progress line while they decode, and the normalisation computed from them.

`sources.read_image_folder` reads a folder with these pieces; nothing here imports TensorFlow or
decodes by itself. A run with `dataset="folder"` takes its classes from the class folders and its
per-channel mean and std from its training images (`complete`), and records both in `config.json`.
"""

import dataclasses
import sys
import time

import numpy as np

from keras_preact import choices

# fb.resnet.torch evaluates on the 224 centre crop of the image resized to 256 (shorter side).
RESIZE_RATIO = 256 / 224
# RunConfig fields a run fills in from its data when they are None (dataset="folder").
FROM_DATA = ("classes", "normalization")


@dataclasses.dataclass(frozen=True)
class Reading:
    """How a run reads an image folder.

    Args:
        train_subset: decode only this many training images (class-balanced, `balanced_indices`);
            None: all of them.
        image_size: the side of the square images the model takes.
        resize: None: every image must be `image_size` x `image_size` (the CIFAR recipes). A side:
            each image's shorter side is resized to it (the ImageNet recipe); the training split
            keeps the centre `resize` x `resize` square, where random-sized crops are taken, and
            the test split the centre `image_size` crop, the evaluation view.
        progress: show a line with the count and rate of decoded images.
    """

    train_subset: int = None
    image_size: int = 32
    resize: int = None
    progress: bool = False

    def stored_side(self, split):
        """The side at which `split` ("train" or "test") is kept in memory."""
        return self.image_size if self.resize is None or split == "test" else self.resize


def reading(config, progress=False):
    """The `Reading` of a resolved `RunConfig`: its subset, image size and its recipe's storage.

    >>> from keras_preact.training.config import RunConfig
    >>> reading(RunConfig(dataset="folder", recipe="imagenet", image_size=56).resolved())
    Reading(train_subset=None, image_size=56, resize=64, progress=False)
    """
    return Reading(config.train_subset, config.image_size, evaluation_resize(config.recipe, config.image_size), bool(progress))


def evaluation_resize(recipe, image_size):
    """The shorter side the ImageNet recipe resizes images to before its centre `image_size` crop
    (256 for 224); None for the CIFAR recipes, which take images at their size.

    >>> evaluation_resize("imagenet", 224), evaluation_resize("paper", 32)
    (256, None)
    """
    return round(image_size * RESIZE_RATIO) if choices.RECIPES[recipe].augmentation == "imagenet" else None


def balanced_indices(labels, count):
    """Indices of `count` examples taken class by class in turn (the first of each class, then the
    second, ...), in the source's order: class-balanced even where the source is sorted by class,
    as image folders are, and the same examples every time.

    >>> balanced_indices(np.array([0, 0, 0, 1, 1, 2]), 4).tolist()
    [0, 1, 3, 5]
    """
    if choices.check_count("train_subset", count) > len(labels):
        raise ValueError(f"train_subset={count} must be between 1 and the split's {len(labels)} images.")
    rank_in_class = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = np.arange(len(members))
    chosen = np.lexsort((labels, rank_in_class))[:count]
    chosen.sort()  # keep the source's order among the chosen
    return chosen


def stored_view(pixels, how, split):
    """The part of a decoded image [H, W, 3] a run keeps for `split` (`how`: a `Reading`): the
    image itself, or its shorter side resized to `how.resize` (Pillow's antialiased bilinear) and
    its centre square of `how.stored_side(split)`."""
    if how.resize is None:
        return pixels
    from PIL import Image

    height, width = pixels.shape[:2]
    scale = how.resize / min(height, width)
    size = (max(how.resize, round(width * scale)), max(how.resize, round(height * scale)))
    if size != (width, height):
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR))
    side = how.stored_side(split)
    top, left = (size[1] - side) // 2, (size[0] - side) // 2
    return pixels[top : top + side, left : left + side]


class Progress:
    """A line counting decoded images and their rate, e.g. `Decoding train: 1,200/50,000 images,
    2,345 images/s`: redrawn in place on a terminal (4 times a second at most), a line every 10 s
    elsewhere (logs), and a last line with the total time.

    >>> import io
    >>> stream = io.StringIO()
    >>> progress = Progress("Decoding train", 2, stream)
    >>> progress.update(2); progress.close()
    >>> "Decoding train: 2/2 images" in stream.getvalue()
    True
    """

    def __init__(self, label, total, stream=None, enabled=True):
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = sys.stderr if stream is None else stream
        self.terminal = getattr(self.stream, "isatty", lambda: False)()
        self.started = self.shown = time.perf_counter()
        self.count = 0

    def _line(self, now):
        rate = self.count / max(now - self.started, 1e-9)
        return f"{self.label}: {self.count:,}/{self.total:,} images, {rate:,.0f} images/s"

    def update(self, count):
        self.count = count
        now = time.perf_counter()
        if self.enabled and now - self.shown >= (0.25 if self.terminal else 10.0):
            self.shown = now
            self.stream.write(("\r" if self.terminal else "") + self._line(now) + ("" if self.terminal else "\n"))
            self.stream.flush()

    def close(self):
        if self.enabled:
            now = time.perf_counter()
            done = f"{self._line(now)} ({now - self.started:.1f} s)"
            self.stream.write(("\r" if self.terminal else "") + done + "\n")
            self.stream.flush()


def channel_statistics(images, chunk=1024):
    """Per-channel (mean, std) of uint8 images [N, H, W, 3] on 0-255 pixels, over every pixel, in
    one pass (float64 sums of values and squares, `chunk` images at a time).

    >>> channel_statistics(np.array([[[[0, 10, 20]], [[2, 12, 40]]]], np.uint8))
    ([1.0, 11.0, 30.0], [1.0, 1.0, 10.0])
    """
    total, squares = np.zeros(3), np.zeros(3)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, 3).astype(np.float64)
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    count = max(images.size // 3, 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    if not (std > 0).all():
        raise ValueError(
            f"The training images have a colour channel without variation (std {std.round(3).tolist()}): "
            "pass normalization=[mean, std] yourself."
        )
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


def complete(config, train_split):
    """`config` (resolved) with what its data decides where it left them open (`FROM_DATA`): an
    image folder's class count and the per-channel mean and std of its training images."""
    if config.dataset != "folder":
        return config
    filled = {}
    if config.classes is None:
        names = train_split.class_names
        filled["classes"] = len(names) if names is not None else int(train_split.labels.max()) + 1
        if filled["classes"] < 2:  # checked here, before the run claims model_dir
            raise ValueError(
                f"The training images have one class ({names[0] if names else 0}); a classifier needs at least 2: "
                "add a class folder under train/ and test/ for each class."
            )
    if config.normalization is None:
        filled["normalization"] = list(channel_statistics(train_split.images))
    return config.completed(**filled)


def changes(recorded, now, recorded_names, names):
    """What differs between the images a run began on and those it reads now, as short phrases:
    the class folders (or their count, where either list of names is None: a run from before they
    were recorded, or images given as arrays) and the normalisation computed from them (`recorded`,
    `now`: resolved configurations as dicts).

    >>> changes({"classes": 3, "normalization": [[1, 2, 3], [4, 5, 6]]},
    ...         {"classes": 3, "normalization": [[1, 2, 3.5], [4, 5, 6]]}, ["ant", "bee", "cat"], ["ant", "bee", "dog"])
    ['class folders gone: cat, new: dog', 'normalisation mean 1/2/3, std 4/5/6 then, mean 1/2/3.5, std 4/5/6 now']
    """
    found = []
    if recorded_names is not None and names is not None and list(recorded_names) != list(names):
        gone, new = [n for n in recorded_names if n not in names], [n for n in names if n not in recorded_names]
        found.append("class folders " + ", ".join(f"{what}: {_few(listed)}" for what, listed in (("gone", gone), ("new", new))
                                                  if listed))
    elif recorded["classes"] != now["classes"]:
        found.append(f"{recorded['classes']} classes then, {now['classes']} now")
    if recorded["normalization"] != now["normalization"]:
        found.append(f"normalisation {_mean_std(recorded['normalization'])} then, {_mean_std(now['normalization'])} now")
    return found


def _few(names, at_most=5):
    return ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _mean_std(normalization):
    mean, std = normalization
    return f"mean {'/'.join(f'{v:g}' for v in mean)}, std {'/'.join(f'{v:g}' for v in std)}"
