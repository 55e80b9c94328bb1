"""A zoo model with its classification head replaced, as a user fine-tuning on their own classes writes it:
the bundled CIFAR-10 MobileViT-XXS, its head swapped for a (dropout, linear) head that keeps the trained
weights, so its accuracy is the fixture's own and a check on labelled images means something."""

import torch
from torch import nn

from models_zoo import load_model


def mobilevit_cifar(dropout: float = 0.0) -> nn.Module:
    model = load_model("mobilevit_xxs.cifar10").model
    old = model.head.fc
    new = nn.Linear(old.in_features, old.out_features)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.copy_(old.bias)
    model.head.fc = nn.Sequential(nn.Dropout(dropout), new)
    return model.eval()
