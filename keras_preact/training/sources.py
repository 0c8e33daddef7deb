"""Where a run's images come from, without TensorFlow: in-memory splits and image folders.

Both input pipelines read their data through this module (`data` for tf.data, `device_data` for
on-device batches), so an image folder gives the same pixels, labels and errors on either. Image
files are decoded with Pillow (libjpeg's accurate integer IDCT: the pixels of
`tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")`).
"""

import dataclasses
import os

import numpy as np

from keras_preact import choices
from keras_preact.training import folders

IMAGE_SIZE = 32
PADDING = 4  # the paper's augmentation, in both pipelines: 4-pixel zero padding, then a 32x32 crop
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class Split:
    """One split in memory: uint8 images [N, 32, 32, 3] and int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple = None  # an image folder's class folders, in label order

    def __len__(self):
        return len(self.labels)

    def shard(self, index, count):
        """Every `count`-th example from `index` on: one process's share of an evaluation."""
        return Split(self.images[index::count], self.labels[index::count], self.class_names)

    def subset(self, count):
        """`count` examples, taken class by class in turn (the first of each class, then the
        second, ...): class-balanced even where the source is sorted by class, as image folders
        are, and the same examples every time."""
        if count is None:
            return self
        chosen = folders.balanced_indices(self.labels, count)
        return Split(self.images[chosen], self.labels[chosen], self.class_names)


def from_arrays(images, labels):
    """A Split from in-memory arrays: uint8 images [N, 32, 32, 3] and integer labels [N].

    >>> split = from_arrays(np.zeros((2, 32, 32, 3), np.uint8), [[0], [1]])
    >>> len(split), split.labels.tolist()
    (2, [0, 1])
    """
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels (0-255), got dtype {images.dtype}.")
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"images must have shape [N, 32, 32, 3], got {list(images.shape)}.")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    return Split(images, labels.astype(np.int32))


def load(name, data_dir, other_source, reading=None):
    """Loads `name` ("cifar10", "cifar100" or "folder") as checked (train, test) Splits.

    `data_dir` holding `train/<class>/*` and `test/<class>/*` is read as an image folder, as
    `reading` (`folders.Reading`) says; any other `data_dir` (or None) goes to
    `other_source(name, data_dir)`: TensorFlow Datasets for the tf.data pipeline, an error that
    says what to pass for the on-device one. `dataset="folder"` needs an image folder.
    """
    info = choices.TRAINING_DATASETS[name]
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
        if not os.path.exists(data_dir):
            raise FileNotFoundError(
                f"data_dir {data_dir!r} does not exist. Pass an image folder (train/<class>/*, "
                "test/<class>/*) or a TFDS data directory (create it first to download into it)."
            )
        if not os.path.isdir(data_dir):
            raise NotADirectoryError(f"data_dir {data_dir!r} is a file; pass the folder that holds train/ and test/.")
    halves = [split for split in ("train", "test") if data_dir is not None and os.path.isdir(os.path.join(data_dir, split))]
    if len(halves) == 1:  # half an image folder is no TFDS directory either
        missing = {"train": "test", "test": "train"}[halves[0]]
        raise FileNotFoundError(
            f"{data_dir} has {halves[0]}/ but no {missing}/: an image folder holds both "
            f"(train/<class>/*, test/<class>/*)."
        )
    if data_dir is not None and is_image_folder(data_dir):
        train, test = read_image_folder(data_dir, reading)
    elif name == "folder":
        raise ValueError(
            f"dataset='folder' trains an image folder and got data_dir={data_dir!r}: pass a folder with "
            "train/<class>/* and test/<class>/*."
        )
    else:
        train, test = other_source(name, data_dir)
    for split_name, split in (("train", train), ("test", test)):
        check_split(split, info, f"{name} {split_name} split")
    return train, test


def check_split(split, info, description):
    if len(split) == 0:
        raise ValueError(f"The {description} is empty.")
    low, high = int(split.labels.min()), int(split.labels.max())
    if info.classes is not None and (low < 0 or high >= info.classes):
        raise ValueError(
            f"The {description} has labels {low}..{high}, outside 0..{info.classes - 1}: is this "
            "the right dataset? (dataset='folder' trains any image folder)"
        )


# --- image folders --------------------------------------------------------------------------------


def is_image_folder(data_dir):
    return all(os.path.isdir(os.path.join(data_dir, split)) for split in ("train", "test"))


def _visible(folder):
    """Entries of `folder` in name order, without hidden ones (".ipynb_checkpoints", macOS "._x")."""
    return sorted((entry for entry in os.scandir(folder) if not entry.name.startswith(".")), key=lambda e: e.name)


def read_image_folder(data_dir, reading=None):
    """Reads `data_dir/{train,test}/<class>/*.{jpg,png}`; labels follow sorted class folder names.

    `reading` (`folders.Reading`; default: every image, 32x32, silently): which training images
    are decoded (only those of `train_subset`), at what size, with a progress line or not. Hidden
    files and folders are skipped; anything else that is not an image is an error naming it.
    """
    reading = folders.Reading() if reading is None else reading
    for split in ("train", "test"):
        for entry in _visible(os.path.join(data_dir, split)):
            if entry.is_symlink() and not os.path.exists(entry.path):  # a class would vanish, shifting labels
                raise ValueError(f"{entry.path} is a broken link: fix or remove it.")
    classes = [entry.name for entry in _visible(os.path.join(data_dir, "train")) if entry.is_dir()]
    if not classes:
        raise ValueError(f"{os.path.join(data_dir, 'train')} has no class folders.")
    test_classes = [entry.name for entry in _visible(os.path.join(data_dir, "test")) if entry.is_dir()]
    if test_classes != classes:
        raise ValueError(
            f"{data_dir}: train and test have different class folders "
            f"({', '.join(sorted(set(classes) ^ set(test_classes)))} differ)."
        )
    return tuple(_read_folder_split(data_dir, split, classes, reading) for split in ("train", "test"))


def _image_files(folder):
    files = []
    for entry in _visible(folder):
        if entry.is_dir() and not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"{entry.path} is a folder inside a class folder: move its images up, or remove it.")
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(
                f"{entry.path} is not a .jpg or .png file (a class folder holds only images): convert it or remove it."
            )
        if entry.is_dir():
            raise ValueError(f"{entry.path} is a folder, not an image: rename or move it.")
        if not entry.is_file():
            raise ValueError(f"{entry.path} is a broken link or not a regular file: remove or fix it.")
        files.append(entry.path)
    if not files:
        raise ValueError(f"Class folder {folder} has no .jpg or .png images.")
    return files


def _read_folder_split(data_dir, split, classes, reading):
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _image_files(os.path.join(data_dir, split, name))
        paths += files
        labels += [label] * len(files)
    labels = np.asarray(labels, np.int32)
    if split == "train" and reading.train_subset is not None:  # decode only the images the run uses
        chosen = folders.balanced_indices(labels, reading.train_subset)
        paths, labels = [paths[i] for i in chosen], labels[chosen]
    side = reading.stored_side(split)
    size = (side, side) if reading.resize is None else None  # the ImageNet recipe takes any size
    try:
        images = np.empty((len(paths), side, side, 3), np.uint8)
    except MemoryError:  # an image_size far too large for this machine, refused before any decoding
        raise ValueError(
            f"Keeping the {len(paths):,} {split} images at {side}x{side} needs {len(paths) * side * side * 3 / 2**30:,.1f} GiB "
            "of memory, more than this machine can give: lower image_size (or train_subset)."
        ) from None
    progress = folders.Progress(f"Decoding {os.path.join(data_dir, split)}", len(paths), enabled=reading.progress)
    for index, path in enumerate(paths):
        images[index] = folders.stored_view(_decode_file(path, size), reading, split)
        progress.update(index + 1)
    progress.close()
    return Split(images, labels, tuple(classes))


def _decode_file(path, size=(IMAGE_SIZE, IMAGE_SIZE)):
    """One image file of `size` (width, height; None: any) as uint8 RGB [height, width, 3]
    (converted as serving converts it: `serving.decoding.decode_rgb`), or a ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError

    from keras_preact.serving.decoding import decode_rgb

    try:
        with Image.open(path) as image:
            if size is not None and image.size != size:  # from the header, before decoding it
                raise ValueError(
                    f"{path} is {image.size[0]}x{image.size[1]}; CIFAR images must be {size[0]}x{size[1]} RGB "
                    "(recipe='imagenet' takes any size)."
                )
            return decode_rgb(image)
    # Pillow raises SyntaxError for some bad headers, DecompressionBombError for giant images.
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"Cannot decode {path}: not a readable JPEG or PNG image ({error}).") from None
