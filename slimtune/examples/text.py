"""A transformer example that runs offline: scikit-learn's digits read as sentences, classified by a tiny BERT.

Every 8×8 image becomes a 65-token sentence: a ``[CLS]`` token, then one token per pixel whose id says
where the pixel is and how much ink it holds (64 positions × 5 ink levels). A Hugging Face
``BertForSequenceClassification`` built from a tiny config (hidden width 32, 2 layers of 4 heads,
random initialisation: nothing is downloaded) learns it to about 92 % validation accuracy in ten epochs,
a few seconds on a CPU. :func:`make_text_task` wraps it as a slimtune :class:`~slimtune.Task`, so its
heads, MLP widths and hidden width are searched like a convnet's channels.

Example:
    .. code-block:: python

        from slimtune import search
        from slimtune.examples.text import make_text_task

        task = make_text_task()                       # trains the model (about 6 s)
        study = search(task, strategy="nsga2", n_trials=16, objectives=("accuracy", "flops"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from slimtune import devices
from slimtune.compressors._outputs import logits

if TYPE_CHECKING:
    from slimtune.trials.task import Task

LEVELS = 5
"""Ink levels per pixel token."""
VOCAB = 1 + 64 * LEVELS
"""``[CLS]`` plus one token per (pixel, ink level)."""


def load_token_data(val_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits as ``(token ids [N, 65], labels [N])``, split into train and validation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.tensor(digits.data, dtype=torch.long)  # 0..16
    ids = torch.cat(
        [torch.zeros(len(pixels), 1, dtype=torch.long), 1 + torch.arange(64) * LEVELS + pixels * LEVELS // 17], 1
    )
    labels = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(labels)))
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(ids[train], labels[train]), TensorDataset(ids[val], labels[val])


def tiny_bert(hidden: int = 32, layers: int = 2, heads: int = 4, intermediate: int = 64) -> nn.Module:
    """A ``BertForSequenceClassification`` from a tiny config (random weights)."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=65,
        num_labels=10,
        initializer_range=0.1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


def train_batches(dataset: TensorDataset, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ids, labels = dataset.tensors
    return [(ids[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


def evaluate_accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    """Validation accuracy, on the model's device."""
    device = devices.model_device(model)
    ids, labels = (t.to(device) for t in dataset.tensors)
    model.eval()
    with torch.no_grad():
        return float((logits(model(ids)).argmax(-1) == labels).float().mean())


def train_text_model(
    model: nn.Module, train_set: TensorDataset, epochs: int = 10, lr: float = 3e-3, seed: int = 0
) -> nn.Module:
    """AdamW, batch 64, shuffled with ``seed``; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    batches = train_batches(train_set)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for _ in range(epochs):
        for k in torch.randperm(len(batches), generator=gen).tolist():
            ids, labels = batches[k]
            loss = F.cross_entropy(logits(model(ids)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def make_text_task(
    epochs: int = 10, finetune_epochs: int = 3, finetune_lr: float = 3e-3, seed: int = 0, device: str = "auto"
) -> Task:
    """The text example as a :class:`~slimtune.Task`: a tiny BERT trained on digit sentences.

    Args:
        epochs: Training epochs of the model (10: about 92 % validation accuracy).
        finetune_epochs: Epochs of the built-in fine-tune loop for every compressed model (0: none).
        finetune_lr: Its learning rate.
        seed: Seed of the initialisation, the split and the training order.
        device: Where the trials run (``auto``: a CUDA GPU when there is one).

    Returns:
        A Task whose metric is validation accuracy (the default loss reads the model's ``logits``).
    """
    from slimtune.compressors.training import FinetuneConfig
    from slimtune.trials.task import Task

    torch.manual_seed(seed)
    train_set, val_set = load_token_data(seed=seed)
    model = train_text_model(tiny_bert(), train_set, epochs=epochs, seed=seed)
    ids, labels = train_set.tensors
    return Task(
        model=model,
        example_inputs=ids[:2],
        evaluate=lambda m: evaluate_accuracy(m, val_set),
        calibration=[(ids[i : i + 64], labels[i : i + 64]) for i in range(0, 256, 64)],
        name="digits-text-bert",
        train_data=train_batches(train_set),
        finetune_config=FinetuneConfig(epochs=finetune_epochs, optimizer="adamw", lr=finetune_lr, weight_decay=0.01),
        device=device,
    )
