"""`lstm_fused`: torch.nn.LSTM, the speed and accuracy reference (not a model of the paper).

No peepholes, two bias vectors per gate (PyTorch's parametrisation), the fused oneDNN /
cuDNN kernel. Its only per-frame value is the output m (nn.LSTM calls it h); c and the
gates stay inside the kernel, so capture offers "m" only (the model raises for the rest).
In bf16 mode it runs under torch.autocast: weights, inputs, outputs and the returned (h, c)
are bf16 (the custom cells keep c and the gates in fp32), so it is a speed reference for
bf16, not an accuracy-matched one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .common import PRECISIONS


class FusedLSTM(nn.Module):
    """One nn.LSTM layer behind the common layer interface (see common.py)."""

    state_names = ("m", "c")
    value_names = ("m",)

    def __init__(self, input_size: int, hidden_size: int, precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.input_size, self.hidden_size, self.precision = input_size, hidden_size, precision
        self.lstm = nn.LSTM(input_size, hidden_size)  # PyTorch's own init, U(-1/sqrt(H), 1/sqrt(H))

    def extra_repr(self) -> str:
        return f"precision={self.precision!r}"

    def forward(self, x, state=None, lengths=None, capture=False):
        hx = None if state is None else tuple(s.unsqueeze(0).contiguous() for s in state)
        bf16 = self.precision == "bf16" and x.dtype == torch.float32
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            if lengths is None:
                y, (h, c) = self.lstm(x, hx)
            else:  # packed, so that (h, c) are taken at each sequence's own last frame
                packed = pack_padded_sequence(x, torch.as_tensor(lengths).cpu(), enforce_sorted=False)
                y, (h, c) = self.lstm(packed, hx)
                y = pad_packed_sequence(y, total_length=x.shape[0])[0]
        y = y.to(x.dtype)
        state = (h[0].to(x.dtype), c[0].to(x.dtype))
        return y, state, ({"m": y} if capture else None)
