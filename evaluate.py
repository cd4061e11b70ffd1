"""Judge a checkpoint: validation likelihood.
"""
import torch

import dataset
from model import sequence_nll


# ----------------------------------------------------------------------------- likelihood

@torch.no_grad()
def dataset_nll(model, data, batch_size, device="cpu"):
    """NLL of whole lines, in eval mode: (nats per line, nats per point). In fp32 unless the
    caller opens an autocast context (training evaluates outside its own)."""
    was_training = model.training
    model.eval()
    total, points = 0.0, 0.0
    for indices in dataset.make_batches([len(x) for x in data.offsets], batch_size):
        offsets, mask, text, text_mask = dataset.collate(data, indices, device=device)
        nll, count = sequence_nll(model, offsets, mask, text, text_mask)
        total, points = total + nll.item(), points + count.item()
    model.train(was_training)
    return total / len(data), total / points
