"""The streaming MFCC-LSTM's streaming model: MFCC frames in, ``forward(x, hidden=None) -> (logits, hidden)``.

``x`` is ``(batch, frames, n_features)``; a single frame ``(batch, 1, n_features)`` with the
previous ``hidden`` continues the sequence, so frame-by-frame stepping equals the whole-sequence
result. Padded batches pass ``lengths``: logits are read at each sequence's last real frame and
the returned state is the state after that frame, so padding never changes the result.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from emovox.models import register


@register("lstm")
class EmotionLSTM(nn.Module):
    streaming = True

    def __init__(self, n_features: int = 13, n_classes: int = 6, *, hidden_size: int = 128, num_layers: int = 2,
                 dropout: float = 0.3):
        super().__init__()
        self.kwargs = {"hidden_size": hidden_size, "num_layers": num_layers, "dropout": dropout}
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(n_features, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, n_classes)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor] | None = None,
                lengths: torch.Tensor | None = None):
        if lengths is None:
            out, hidden = self.lstm(x, hidden)
            last = out[:, -1, :]
        else:
            packed = pack_padded_sequence(x, lengths.cpu().clamp_min(1), batch_first=True, enforce_sorted=False)
            _, hidden = self.lstm(packed, hidden)
            last = hidden[0][-1]
        return self.fc(self.dropout(last)), hidden

    def frame_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits after every frame ``(batch, frames, n_classes)``: what a stream reports as it goes.

        Causal, so in a zero-padded batch the outputs up to a clip's last real frame are exact
        (the frames after it are to be masked). Training on every frame (``streaming_loss="frames"``)
        gives gradients at every step instead of only through the last one.
        """
        return self.steps(x)[0]

    def steps(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``(logits after every frame (batch, frames, n_classes), hidden after the last)``: a stream
        continuing from ``hidden`` that needs every frame's answer (``final_answer="mean"``)."""
        out, hidden = self.lstm(x, hidden)
        return self.fc(self.dropout(out)), hidden

    def padded_logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of a zero-padded batch ``(batch, frames, n_features)`` read at each clip's last real frame.

        The LSTM is causal, so outputs up to a clip's last frame never see the padding after it:
        the result equals ``forward(x, None, lengths)[0]``, but one unpacked pass over the batch
        is many times faster on a CPU than packed sequences (used for training and evaluation).
        """
        out, _ = self.lstm(x)
        if lengths is None:
            last = out[:, -1, :]
        else:
            idx = (lengths.to(out.device).clamp(1, out.shape[1]) - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
            last = out.gather(1, idx).squeeze(1)
        return self.fc(self.dropout(last))
