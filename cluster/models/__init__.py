"""Gated recurrent acoustic models after Tang, Shi & Wang, "Visualization Analysis for Recurrent Networks".

Cells (one file each, parameters named after the paper's symbols):
  lstm        PeepholeLSTM  - Sec. 3.1, Chung et al. 2014 (lstm.py)
  gru         GRU           - Eq. (1), Cho et al. 2014, reset before the matmul (gru.py)
  lstm_lazy   LazyLSTM      - Sec. 5.1, the LSTM in GRU order (lstm_lazy.py)
  lstm_fused  FusedLSTM     - torch.nn.LSTM, the speed/accuracy reference (fused.py)
The model (acoustic.py): splice + CMVN -> layers (residual: Sec. 5.2) -> linear -> logits.
SeedStack (stack.py): S models of one config (a grid point's seeds) as one batch, rows grouped by seed.
"""

from .acoustic import CELLS, VALUE_NAMES, AcousticModel, ModelConfig, build_model
from .checkpoint import (MODEL_FILE, CheckpointError, CheckpointMeta, checkpoint_id, code_version, file_digest,
                         load_checkpoint, model_file, save_checkpoint)
from .common import Intervention
from .fused import FusedLSTM
from .gru import GRU
from .lstm import PeepholeLSTM
from .lstm_lazy import LazyLSTM
from .stack import SeedStack

__all__ = [
    "CELLS", "VALUE_NAMES", "AcousticModel", "ModelConfig", "build_model",
    "MODEL_FILE", "CheckpointError", "CheckpointMeta", "checkpoint_id", "code_version", "file_digest",
    "load_checkpoint", "model_file", "save_checkpoint",
    "PeepholeLSTM", "GRU", "LazyLSTM", "FusedLSTM", "Intervention", "SeedStack",
]
