"""The acoustic model of Sec. 3.2: spliced fbank -> L recurrent layers -> frame-target logits.

    feats [B, T, 40] --CMVN--> --splice +-context frames--> x [T, B, 40 (2 context + 1)]
      --> L layers of H units (lstm | gru | lstm_lazy | lstm_fused), residual from layer 2 up
      --> linear output layer --> logits [B, T, num_targets]

The softmax of the paper's output layer is left to the loss (frame cross-entropy, computed
by the trainer over valid frames only). CMVN statistics are given at construction and live
in the model as buffers, so a checkpoint carries them and raw features go in. Edge frames
are replicated for the splice, at each utterance's own last valid frame, so padding never
enters a valid frame's input; the layers are unidirectional, so padding (at the end) cannot
reach a valid frame through the recurrence either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .common import PRECISIONS
from .fused import FusedLSTM
from .gru import GRU
from .lstm import PeepholeLSTM
from .lstm_lazy import CANDIDATE_INPUTS, LazyLSTM

CELLS = ("lstm", "gru", "lstm_lazy", "lstm_fused")
LAZY_LAYERS = ("last", "all")
VALUE_NAMES = ("c", "m", "i", "f", "o", "g")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model (a checkpoint stores it as a dict).

    cell: "lstm" (peephole LSTM, Sec. 3.1), "gru" (Eq. 1), "lstm_lazy" (Sec. 5.1) or
      "lstm_fused" (torch.nn.LSTM reference).
    layers, hidden: L recurrent layers of H units (paper: 1-6 layers of 512).
    feat_dim, context: fbank dimension and splice half-width; input is feat_dim (2 context + 1).
    num_targets: size of the output layer (frame targets).
    residual: shortcut connections of Sec. 5.2 (layer output = recurrent output + its input,
      from the second layer up).
    lazy_layers: with cell="lstm_lazy", which layers update lazily: "last" (the paper: only
      the final layer; the others are "lstm") or "all". Ignored for other cells.
    lazy_candidate: reading of Sec. 5.1, "m_t" (ours) or "m_prev" (see lstm_lazy.py).
    precision: "fp32", or "bf16" for the matmuls (cell state and gates stay fp32).
    """

    cell: str = "lstm"
    layers: int = 2
    hidden: int = 128
    feat_dim: int = 40
    context: int = 2
    num_targets: int = 120
    residual: bool = False
    lazy_layers: str = "last"
    lazy_candidate: str = "m_t"
    precision: str = "fp32"

    def __post_init__(self):
        def check(ok, what):
            if not ok:
                raise ValueError(f"ModelConfig: {what}")
        check(self.cell in CELLS, f"cell must be one of {CELLS}, got {self.cell!r}")
        check(self.lazy_layers in LAZY_LAYERS, f"lazy_layers must be one of {LAZY_LAYERS}, got {self.lazy_layers!r}")
        check(self.lazy_candidate in CANDIDATE_INPUTS,
              f"lazy_candidate must be one of {CANDIDATE_INPUTS}, got {self.lazy_candidate!r}")
        check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("layers", "hidden", "feat_dim", "num_targets"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{name} must be an int >= 1")
        check(isinstance(self.context, int) and self.context >= 0, "context must be an int >= 0")

    @property
    def input_dim(self) -> int:
        return self.feat_dim * (2 * self.context + 1)

    def layer_cells(self) -> list[str]:
        """Cell of each layer, bottom first: lazy only where lazy_layers says."""
        if self.cell != "lstm_lazy":
            return [self.cell] * self.layers
        if self.lazy_layers == "all":
            return ["lstm_lazy"] * self.layers
        return ["lstm"] * (self.layers - 1) + ["lstm_lazy"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {sorted(unknown)} (written by a newer gatelens?)")
        return cls(**d)


def _make_layer(cell: str, input_size: int, config: ModelConfig) -> nn.Module:
    if cell == "lstm":
        return PeepholeLSTM(input_size, config.hidden, config.precision)
    if cell == "gru":
        return GRU(input_size, config.hidden, config.precision)
    if cell == "lstm_lazy":
        return LazyLSTM(input_size, config.hidden, config.precision, config.lazy_candidate)
    return FusedLSTM(input_size, config.hidden, config.precision)


class AcousticModel(nn.Module):
    """See the module docstring. Build with build_model(config, cmvn_mean, cmvn_std)."""

    def __init__(self, config: ModelConfig, cmvn_mean, cmvn_std):
        super().__init__()
        self.config = config
        mean = torch.as_tensor(cmvn_mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(cmvn_std, dtype=torch.float32).reshape(-1)
        if mean.numel() != config.feat_dim or std.numel() != config.feat_dim:
            raise ValueError(f"CMVN must have {config.feat_dim} values each, got {mean.numel()} and {std.numel()}")
        if not std.is_meta and not bool((std > 0).all()):  # meta: shapes only (checkpoint checks)
            raise ValueError("CMVN std must be > 0 in every dimension")
        self.register_buffer("cmvn_mean", mean)
        self.register_buffer("cmvn_std", std)
        sizes = [config.input_dim] + [config.hidden] * (config.layers - 1)
        self.layers = nn.ModuleList(_make_layer(cell, d, config) for cell, d in zip(config.layer_cells(), sizes))
        self.output = nn.Linear(config.hidden, config.num_targets)

    # -- input --------------------------------------------------------------------------
    def splice(self, feats: torch.Tensor, lengths=None) -> torch.Tensor:
        """CMVN, then +-context frame splice: [B, T, F] -> time-major [T, B, F (2 context + 1)].

        Frames outside [0, length-1] are replaced by the nearest edge frame of the same
        utterance (Kaldi's splice), so a padded batch splices exactly like its utterances.
        """
        B, T, F = feats.shape
        x = (feats.to(self.cmvn_mean.dtype) - self.cmvn_mean) / self.cmvn_std
        k, dev = self.config.context, feats.device
        last = (self._lengths(lengths, B, T, dev) - 1).clamp_min(0)
        idx = torch.arange(T, device=dev)[:, None, None] + torch.arange(-k, k + 1, device=dev)
        idx = torch.minimum(idx.clamp_min(0), last[None, :, None])            # [T, B, 2k+1]
        return x[torch.arange(B, device=dev)[None, :, None], idx].reshape(T, B, (2 * k + 1) * F)

    @staticmethod
    def _lengths(lengths, B: int, T: int, device) -> torch.Tensor:
        if lengths is None:
            return torch.full((B,), T, dtype=torch.long, device=device)
        lengths = torch.as_tensor(lengths, device=device).long().reshape(-1)
        if lengths.numel() != B or bool((lengths < 1).any()) or bool((lengths > T).any()):
            raise ValueError(f"lengths must be {B} values in [1, {T}], got {lengths.tolist()}")
        return lengths

    # -- forward and capture ------------------------------------------------------------
    def forward(self, feats: torch.Tensor, lengths=None, capture: bool = False,
                capture_dtype: torch.dtype = torch.float16, values=None, interventions=None,
                spliced: bool = False, state=None):
        """feats [B, T, F] (padded, with lengths) or [T, F] -> logits [B, T, K] (or [T, K]).

        spliced=True: feats is already spliced and ``forward_spliced(feats, state, lengths)`` runs
        (through forward, so a DistributedDataParallel wrapper sees the call).

        capture=True also returns the per-frame values of every layer, from the same pass:
        (logits, {"L1.c": [B, T, H], "L1.o": ..., ...}) in capture_dtype; `values` narrows
        the names (default: all the cell exposes). Frames at t >= lengths[b] hold whatever
        the padding produced: ignore them. ``interventions``: {layer (1-based): Intervention}
        applied inside those layers' recurrences (inference only; ``common.Intervention``).
        """
        if spliced:
            return self.forward_spliced(feats, state, lengths)
        interventions = interventions or {}
        bad = [k for k in interventions if not 1 <= k <= len(self.layers)]
        if bad:
            raise ValueError(f"interventions on layer(s) {bad}: the model has layers 1..{len(self.layers)}")
        single = feats.dim() == 2
        if single:
            feats = feats.unsqueeze(0)
        if feats.dim() != 3 or feats.shape[2] != self.config.feat_dim:
            raise ValueError(f"feats must be [B, T, {self.config.feat_dim}] or [T, {self.config.feat_dim}], "
                             f"got {tuple(feats.shape)}")
        names = self._value_names(values) if capture else ()
        captured = {}
        x, _ = self._layers(self.splice(feats, lengths), None, None, capture, names, interventions, captured,
                            capture_dtype, single)
        logits = self._output(x, single)
        return (logits, captured) if capture else logits

    def forward_spliced(self, x: torch.Tensor, state=None, lengths=None):
        """Spliced time-major input x [T, B, input_dim] (``splice``'s output) from per-layer initial
        states -> (logits [B, T, K], the states after each row's last valid frame).

        ``state``: None (zeros) or one state tuple per layer, as the layers take and return them
        (``common.py``). Training on carried-state streams (``cluster/streams.py``) calls this on
        windows of an utterance spliced whole, so a window's edge frames see the utterance's real
        neighbours and its first frame continues from the previous window's last.
        """
        if x.dim() != 3 or x.shape[2] != self.config.input_dim:
            raise ValueError(f"spliced input must be [T, B, {self.config.input_dim}], got {tuple(x.shape)}")
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"{len(state)} initial states for {len(self.layers)} layers")
        x, states = self._layers(x, state, lengths)
        return self._output(x, False), states

    def _layers(self, x, state, lengths, capture=False, names=(), interventions=None, captured=None,
                capture_dtype=torch.float16, single=False, first=1, last=None, extra=None):
        """x through every layer (residual from layer 2 up); returns (top layer's output, states).

        The one layer loop: ``SeedStack`` runs it with the seeds' stacked weights and the unit
        ablation from a kept layer input. ``first`` / ``last`` (1-based): x is layer ``first``'s
        input and the loop ends after layer ``last``; ``extra(k)``: more keyword arguments for
        layer k (``operands``, ``projected``)."""
        interventions, states = interventions or {}, []
        for k, layer in enumerate(self.layers[first - 1:last], first):
            y, s, vals = layer(x, state=None if state is None else state[k - 1], lengths=lengths, capture=capture,
                               **({"intervention": interventions[k]} if k in interventions else {}),
                               **(extra(k) if extra is not None else {}))
            states.append(s)
            for name in names:
                captured[f"L{k}.{name}"] = _batch_major(vals[name], capture_dtype, single)
            x = y + x if (self.config.residual and k > 1) else y
        return x, states

    def _output(self, x: torch.Tensor, single: bool) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self._bf16(x)):
            logits = self.output(x)
        return _batch_major(logits, x.dtype, single)

    @torch.no_grad()
    def capture(self, feats: torch.Tensor, lengths=None, dtype: torch.dtype = torch.float16,
                values=None, interventions=None) -> dict[str, torch.Tensor]:
        """Per-layer, per-frame values of every unit, e.g. out["L2.c"]: [B, T, H] (or [T, H]).

        Runs the same code as training (the layers' forward Functions); no gradient kept.
        ``interventions`` as in ``forward``.
        """
        return self.forward(feats, lengths, capture=True, capture_dtype=dtype, values=values,
                            interventions=interventions)[1]

    def value_names(self) -> list[str]:
        """Stable names of everything capture() returns, e.g. ["L1.c", "L1.m", ...]."""
        return [f"L{k}.{n}" for k in range(1, len(self.layers) + 1) for n in self._value_names(None)]

    def _value_names(self, values) -> tuple[str, ...]:
        exposed = self.layers[0].value_names
        if values is None:
            return tuple(exposed)
        values = (values,) if isinstance(values, str) else tuple(values)
        missing = [v for v in values if v not in exposed]
        if missing:
            if self.config.cell == "lstm_fused":
                raise ValueError(f"capture of {missing}: cell 'lstm_fused' is torch.nn.LSTM, whose fused kernel "
                                 f"exposes only the output m per frame; use cell='lstm' for c and the gates")
            raise ValueError(f"capture of {missing}: cell {self.config.cell!r} exposes {exposed}")
        return values

    def _bf16(self, x: torch.Tensor) -> bool:
        return self.config.precision == "bf16" and x.dtype == torch.float32

    def set_precision(self, precision: str) -> "AcousticModel":
        """Switch the matmul precision of an existing model (e.g. evaluate fp32 weights in bf16)."""
        self.config = dataclasses.replace(self.config, precision=precision)
        for layer in self.layers:
            layer.precision = precision
        return self


def _batch_major(v: torch.Tensor, dtype: torch.dtype, single: bool) -> torch.Tensor:
    """[T, B, ...] -> [B, T, ...] (or [T, ...] for one utterance), contiguous, in dtype: one copy."""
    v = v[:, 0] if single else v.transpose(0, 1)
    return torch.empty(v.shape, dtype=dtype, device=v.device).copy_(v)


def build_model(config: ModelConfig, cmvn_mean, cmvn_std) -> AcousticModel:
    """The acoustic model for `config`, with the corpus's CMVN statistics (40 floats each)."""
    return AcousticModel(config, cmvn_mean, cmvn_std)
