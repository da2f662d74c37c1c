"""The layers the models are built from, as the specification defines them: weight-normalised
linear layers, the MLP, the word embedding with its padding row, the question encoder and the
product-fusion attention."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm


def linear(in_dim: int, out_dim: int, use_weight_norm: bool = True) -> nn.Module:
    """A Linear layer, weight-normalised over the whole matrix (one scalar gain) as the spec does."""
    layer = nn.Linear(in_dim, out_dim)
    return _weight_norm(layer, dim=None) if use_weight_norm else layer


class MLP(nn.Module):
    """Linear + ReLU for each consecutive pair of ``dims`` (the ReLU follows the last layer too)."""

    def __init__(self, dims, use_weight_norm: bool = True):
        super().__init__()
        layers = []
        for in_dim, out_dim in zip(dims[:-1], dims[1:]):
            layers += [linear(in_dim, out_dim, use_weight_norm), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


class WordEmbedding(nn.Module):
    """Embedding with one extra row, index ``ntoken``, that is the (zero, frozen) padding token."""

    def __init__(self, ntoken: int, dim: int, dropout: float = 0.0):
        super().__init__()
        self.ntoken, self.dim = ntoken, dim
        self.emb = nn.Embedding(ntoken + 1, dim, padding_idx=ntoken)
        self.dropout = nn.Dropout(dropout)

    @torch.no_grad()
    def load_embeddings(self, weights) -> None:
        """Copy ``weights`` (numpy or tensor, [ntoken, dim]) into every row but the padding row."""
        weights = torch.as_tensor(weights)
        if tuple(weights.shape) != (self.ntoken, self.dim):
            raise ValueError(f"embedding weights have shape {tuple(weights.shape)}, "
                             f"expected ({self.ntoken}, {self.dim}) = (ntoken, emb_dim)")
        self.emb.weight[:self.ntoken] = weights.to(self.emb.weight)

    def forward(self, tokens):
        return self.dropout(self.emb(tokens))


class QuestionEncoder(nn.Module):
    """GRU or LSTM over the (front-padded) question; returns the state after the last token
    (bidirectional: the forward state at the last token joined with the backward state at the first)."""

    def __init__(self, in_dim: int, hidden_dim: int, nlayers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, rnn: str = "GRU"):
        super().__init__()
        if rnn not in ("GRU", "LSTM"):
            raise ValueError(f"rnn must be 'GRU' or 'LSTM', got {rnn!r}")
        self.hidden, self.bidirectional = hidden_dim, bidirectional
        self.out_dim = hidden_dim * (2 if bidirectional else 1)
        self.rnn = getattr(nn, rnn)(in_dim, hidden_dim, nlayers, bidirectional=bidirectional,
                                    dropout=dropout, batch_first=True)

    def forward(self, x):
        output, _ = self.rnn(x)
        if not self.bidirectional:
            return output[:, -1]
        return torch.cat([output[:, -1, :self.hidden], output[:, 0, self.hidden:]], dim=1)


class Attention(nn.Module):
    """Product-fusion attention: softmax over boxes of linear(dropout(proj(v) * proj(q)))."""

    def __init__(self, image_dim: int, question_dim: int, hidden: int, dropout: float = 0.2,
                 use_weight_norm: bool = True):
        super().__init__()
        self.image_proj = MLP([image_dim, hidden], use_weight_norm)
        self.question_proj = MLP([question_dim, hidden], use_weight_norm)
        self.dropout = nn.Dropout(dropout)
        self.linear = linear(hidden, 1, use_weight_norm)

    def forward(self, image_features, question_emb, box_mask=None):
        """[B, K, image_dim], [B, question_dim] -> attention weights [B, K, 1]; boxes where
        ``box_mask`` [B, K] is False (padding) get none (ban-vqa's ``v_mask``)."""
        # Broadcasting the question over the boxes is the spec's repeat() without the copy.
        joint = self.image_proj(image_features) * self.question_proj(question_emb).unsqueeze(1)
        logits = self.linear(self.dropout(joint))
        if box_mask is not None:
            logits = logits.masked_fill(~box_mask.unsqueeze(2), float("-inf"))
        return torch.softmax(logits, dim=1)
