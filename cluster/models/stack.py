"""SeedStack: S models of one ModelConfig (the seeds of one grid point) run as one batch.

Rows are grouped by seed: in x [T, S*B, D], logits [S*B, T, K] and every state [S*B, H], rows
s*B .. (s+1)*B-1 belong to model s. Row s*B+b of every output equals model s's own output on its
rows alone, and gradients reach each model's own parameters as if it were trained alone (the
stack holds the models themselves, not copies of their weights).

One stacked model, not S models one after the other (HFTA, tsl's MultiLSTMCell): per layer,
each model's layer gives its ``operands()`` (the cat'ed weights its forward passes to its autograd
Function), the stack ``torch.stack``s them along a leading seed axis on every call (so autograd
carries each seed's gradient back to that model's own leaves) and calls the same Function, which
does the input projection and the weight gradients as bmm over the seed axis, the per-frame
recurrent GEMM as one baddbmm over the seeds, and indexes V / db / dV by each row's seed in its
frame kernels (common.py, "stacked seeds"). There is one definition of each cell: the first
model's layer object runs the stacked call. The output layer is one baddbmm.

``lstm_fused`` (torch.nn.LSTM) has no stacked form: a stack of those runs each model on its own
rows in turn (``stacked`` is False), as does a stack of one model (that model's own forward).
Interventions and capture are for one model: use the model's own forward.

What it buys on CPU (bench/cells.py --stack, 2-core AVX2 EPYC, shared, load 14-20, H=128, 2
layers, fp32, 1 thread, frames per second of thread CPU time): 0.72-1.26x the S models stepped
one after the other (streams 16 x 40 per seed: lstm 1.04 / 1.26, gru 1.13 / 0.92 at S = 3 / 5;
whole utterances 16 x 260: lstm 0.98 / 0.72, gru 1.05 / 0.88). The per-frame dispatch it saves is
small beside the GEMMs, and it adds seed-major copies of the per-sequence buffers for the per-seed
GEMMs (seed_major / time_major in common.py); storing those buffers seed-major ([S, T, B, G],
the frame kernels indexing [s, t, b]) would remove the copies. Its sure gain is one Python time
loop and one set of kernel calls for all seeds, not per-core throughput.
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
        self.stacked = len(models) > 1 and config.cell != "lstm_fused"

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
        if self.stacked:
            return self._stacked(x, state, lengths)
        logits, states = [], []
        for s, model in enumerate(self.models):
            rows = slice(s * B, (s + 1) * B)
            st = None if state is None else [tuple(t[rows] for t in layer) for layer in state]
            out, st = model.forward_spliced(x[:, rows], st, None if lengths is None else lengths[rows])
            logits.append(out)
            states.append(st)
        merged = [tuple(torch.cat(parts) for parts in zip(*per_seed)) for per_seed in zip(*states)]
        return torch.cat(logits), merged

    def _stacked(self, x, state, lengths):
        """All seeds through each layer in one call of the layer's Function: the first model's layer
        loop (``AcousticModel._layers``) given the seeds' weights stacked."""
        def stacked(k: int) -> dict:
            return {"operands": tuple(torch.stack(parts) for parts in zip(*(m.layers[k - 1].operands()
                                                                             for m in self.models)))}

        x, states = self.models[0]._layers(x, state, lengths, extra=stacked)
        return self._output(x), states

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        """Each seed's linear output layer, one baddbmm: x [T, S*B, H] -> logits [S*B, T, K]."""
        T, R, H = x.shape
        S = len(self.models)
        W = torch.stack([m.output.weight for m in self.models]).transpose(1, 2)     # [S, H, K]
        b = torch.stack([m.output.bias for m in self.models]).unsqueeze(1)          # [S, 1, K]
        xb = x.view(T, S, R // S, H).permute(1, 2, 0, 3).reshape(S, (R // S) * T, H)  # batch-major per seed
        bf16 = self.config.precision == "bf16" and x.dtype == torch.float32        # as AcousticModel._output
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = torch.baddbmm(b, xb, W)
        return logits.view(R, T, -1).to(x.dtype)

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
        # as AcousticModel.forward: lengths shape the splice; the layers need them only for the states
        return self.forward_spliced(self.splice(feats, lengths))[0]
