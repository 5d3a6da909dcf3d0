"""Shared helpers: small versions of every registered architecture, and weight perturbation."""
from __future__ import annotations

import os

import pytest
import torch

# the tests run on 2 cores; keep intra-op threads there and make CPU results deterministic
torch.set_num_threads(min(2, os.cpu_count() or 1))


def small_overrides(name: str) -> dict:
    """Shrink width and depth of a registered variant, keeping every architectural flag it has."""
    from focalnet import get_spec

    spec = get_spec(name)
    if spec.family == "isotropic":
        return dict(embed_dim=32, depth=2)
    return dict(embed_dim=16, depths=(1, 1, 2, 1))


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Move every 1-D parameter (LayerNorm weights/biases, layer scales, biases) off its init, so that a
    wrong mapping of any of them changes the output (LayerNorm 1/0 and equal layer scales would hide it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
