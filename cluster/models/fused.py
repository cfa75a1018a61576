"""`lstm_fused`: torch.nn.LSTM, the speed and accuracy reference (not a model of the paper).

No peepholes, two bias vectors per gate (PyTorch's parametrisation), the fused oneDNN /
cuDNN kernel. Its only per-frame value is the output m (nn.LSTM calls it h); c and the
gates stay inside the kernel, so capture offers "m" only (the model raises for the rest).
In bf16 mode it runs under torch.autocast: weights, inputs, outputs and the returned (h, c)
are bf16 (the custom cells keep c and the gates in fp32), so it is a speed reference for
bf16, not an accuracy-matched one.

CPUs without native bf16 (AVX2 machines: oneDNN has no bf16 LSTM primitive there, and nn.LSTM
under autocast raises "could not create a primitive descriptor") get the same arithmetic
emulated: weights and inputs rounded to bf16, the kernel run in fp32, outputs rounded to bf16.
Such a CPU gains no speed from bf16 anyway; emulating keeps bf16 models loadable and comparable
everywhere.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .common import PRECISIONS


@lru_cache(maxsize=None)
def native_bf16_lstm(device_type: str) -> bool:
    """Whether nn.LSTM runs under bf16 autocast on this device (probed once with a 1-unit LSTM)."""
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            nn.LSTM(1, 1).to(device_type)(torch.zeros(1, 1, 1, device=device_type))
        return True
    except RuntimeError:
        return False


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

    def forward(self, x, state=None, lengths=None, capture=False, intervention=None):
        if intervention is not None:
            raise ValueError("lstm_fused runs torch.nn.LSTM, which cannot be intervened in: use cell lstm")
        hx = None if state is None else tuple(s.unsqueeze(0).contiguous() for s in state)
        bf16 = self.precision == "bf16" and x.dtype == torch.float32
        native = bf16 and native_bf16_lstm(x.device.type)
        emulate = bf16 and not native
        if emulate:
            x = x.to(torch.bfloat16).to(x.dtype)
            hx = None if hx is None else tuple(s.to(torch.bfloat16).to(s.dtype) for s in hx)
        weights = {n: p.to(torch.bfloat16).to(p.dtype) for n, p in self.lstm.named_parameters()} if emulate else None

        def lstm(inp):
            return functional_call(self.lstm, weights, (inp, hx)) if emulate else self.lstm(inp, hx)

        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=native):
            if lengths is None:
                y, (h, c) = lstm(x)
            else:  # packed, so that (h, c) are taken at each sequence's own last frame
                packed = pack_padded_sequence(x, torch.as_tensor(lengths).cpu(), enforce_sorted=False)
                y, (h, c) = lstm(packed)
                y = pad_packed_sequence(y, total_length=x.shape[0])[0]
        if emulate:
            y, h, c = (t.to(torch.bfloat16) for t in (y, h, c))
        y = y.to(x.dtype)
        state = (h[0].to(x.dtype), c[0].to(x.dtype))
        return y, state, ({"m": y} if capture else None)
