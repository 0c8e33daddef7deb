"""What a run leaves for people to read: per-epoch history, and charts saved as PNG files."""

import contextlib
import csv
import os


@contextlib.contextmanager
def chart(path, columns=1, size=(10, 4)):
    """A matplotlib figure of `columns` axes, saved to `path` (PNG) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=size)
    try:
        yield figure, axes
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)


def read_history(path):
    """Per-epoch rows of history.csv, the last row kept where a resumed run repeated an epoch."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return [rows[epoch] for epoch in sorted(rows)]


def plot_curves(history, path, title=""):
    """Loss and error (%) per epoch, training and test, as a PNG."""
    if not history:
        return
    epochs = [row["epoch"] + 1 for row in history]
    with chart(path, columns=2) as (figure, (loss_axis, error_axis)):
        for key, label in (("loss", "train"), ("val_loss", "test")):
            if key in history[0]:
                loss_axis.plot(epochs, [row[key] for row in history], marker=".", label=label)
        for key, label in (("accuracy", "train"), ("val_accuracy", "test")):
            if key in history[0]:
                error_axis.plot(epochs, [100 * (1 - row[key]) for row in history], marker=".", label=label)
        loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
        error_axis.set(xlabel="epoch", ylabel="error (%)", title="error")
        for axis in (loss_axis, error_axis):
            axis.grid(alpha=0.3)
            axis.legend()
        figure.suptitle(title)
