"""SeedStack: S models of one ModelConfig (the seeds of one grid point) run as one batch.

Rows are grouped by seed: in x [T, S*B, D], logits [S*B, T, K] and every state [S*B, H], rows
s*B .. (s+1)*B-1 belong to model s. Row s*B+b of every output equals model s's own output on its
rows alone, and gradients reach each model's own parameters as if it were trained alone (the
stack holds the models themselves, not copies of their weights).

This first version is the reference: it runs each model on its own rows, one after the other.
"""

from __future__ import annotations

import torch
from torch import nn

from .acoustic import AcousticModel


class SeedStack(nn.Module):
    """The models side by side; cheap to build (a new stack of a subset when a seed stops)."""

    def __init__(self, models: list[AcousticModel]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("SeedStack needs at least one model")
        config = models[0].config
        for s, m in enumerate(models):
            if not isinstance(m, AcousticModel):
                raise TypeError(f"SeedStack: model {s} is a {type(m).__name__}, not an AcousticModel")
            if m.config != config:
                raise ValueError(f"SeedStack: model {s} has config {m.config}, model 0 has {config}")
        self.models = nn.ModuleList(models)
        self.config = config

    def __len__(self) -> int:
        return len(self.models)

    def _rows(self, n: int) -> int:
        S = len(self.models)
        if n % S:
            raise ValueError(f"SeedStack of {S} seeds: {n} rows is not a multiple of {S}")
        return n // S

    def _check_state(self, state):
        if state is not None and len(state) != len(self.models[0].layers):
            raise ValueError(f"{len(state)} initial states for {len(self.models[0].layers)} layers")

    def forward_spliced(self, x: torch.Tensor, state=None, lengths=None):
        """x [T, S*B, input_dim] (seed s in rows s*B..(s+1)*B-1), state None or one tuple of [S*B, H]
        per layer, lengths [S*B] or None -> (logits [S*B, T, K], one state tuple per layer)."""
        if x.dim() != 3 or x.shape[2] != self.config.input_dim:
            raise ValueError(f"spliced input must be [T, S*B, {self.config.input_dim}], got {tuple(x.shape)}")
        self._check_state(state)
        B = self._rows(x.shape[1])
        logits, states = [], []
        for s, model in enumerate(self.models):
            rows = slice(s * B, (s + 1) * B)
            st = None if state is None else [tuple(t[rows] for t in layer) for layer in state]
            out, st = model.forward_spliced(x[:, rows], st, None if lengths is None else lengths[rows])
            logits.append(out)
            states.append(st)
        merged = [tuple(torch.cat(parts) for parts in zip(*per_seed)) for per_seed in zip(*states)]
        return torch.cat(logits), merged

    def splice(self, feats: torch.Tensor, lengths=None) -> torch.Tensor:
        """feats [S*B, T, F] -> x [T, S*B, input_dim], each seed's rows by its own model's CMVN and splice."""
        B = self._rows(feats.shape[0])
        return torch.cat([m.splice(feats[s * B:(s + 1) * B], None if lengths is None else lengths[s * B:(s + 1) * B])
                          for s, m in enumerate(self.models)], dim=1)

    def forward(self, feats: torch.Tensor, lengths=None) -> torch.Tensor:
        """feats [S*B, T, F] raw features (padded, with lengths) -> logits [S*B, T, K]."""
        if feats.dim() != 3 or feats.shape[2] != self.config.feat_dim:
            raise ValueError(f"feats must be [S*B, T, {self.config.feat_dim}], got {tuple(feats.shape)}")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=feats.device).long().reshape(-1)
        return self.forward_spliced(self.splice(feats, lengths), None, lengths)[0]
