"""Small synthetic handwriting in the processed-data format, and tiny trained checkpoints.

Lines are loops drawn by a fixed rhythm plus noise, each written as `text` characters of 8 points:
learnable in a few dozen steps, so a falling loss means the model really learns.
"""
import os

import numpy as np

import dataset

TINY_MODEL = ["--cell_size", "16", "--num_clusters", "3", "--K", "2", "--batch_size", "8"]


def make_handwriting_data(num_lines, seed=0, points_per_char=8):
    rng = np.random.default_rng(seed)
    offsets, codes, texts = [], [], []
    for _ in range(num_lines):
        text = "".join(rng.choice(list("abc "), size=rng.integers(3, 7)))
        n = len(text) * points_per_char
        t = np.arange(n)
        line = np.zeros((n, 3), np.float32)
        line[:, 1] = np.cos(t * 0.8) + 0.1 * rng.standard_normal(n)
        line[:, 2] = np.sin(t * 0.8) + 0.1 * rng.standard_normal(n)
        line[points_per_char - 1::points_per_char, 0] = 1  # a pen lift after every character
        offsets.append(line)
        codes.append(dataset.encode_text(text))
        texts.append(text)
    return dataset.HandwritingData(offsets, codes, texts, [f"line-{i}" for i in range(num_lines)],
                                 dataset.ALPHABET, np.array([0.5, -0.2], np.float32),
                                 np.array([2.0, 3.0], np.float32))


def write_data_dir(path, num_train=32, num_validation=8):
    os.makedirs(path, exist_ok=True)
    dataset.save_data(os.path.join(path, "train.npz"), make_handwriting_data(num_train, seed=1))
    dataset.save_data(os.path.join(path, "validation.npz"), make_handwriting_data(num_validation, seed=2))
    return str(path)


def train_tiny(tmp_path, task, *extra_args):
    """Train a tiny model for a couple of epochs; returns the path of its best checkpoint."""
    import train

    data_dir = write_data_dir(os.path.join(tmp_path, "data"))
    model_dir = os.path.join(tmp_path, "save")
    args = train.parse_args(["--task", task, "--data_dir", data_dir, "--model_dir", model_dir,
                             "--num_epochs", "2", "--precision", "fp32", *TINY_MODEL, *extra_args])
    train.train(args)
    return os.path.join(model_dir, f"{task}_best.pt")
