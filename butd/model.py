"""The BUTD (product fusion) and FiLM models of the specification, as plain nn.Modules.

    model = BUTD(ntoken=len(vocab), num_answers=len(label2ans), v_dim=2048)
    model.load_embeddings(glove)                      # np.float32 [ntoken, emb_dim]
    logits = model(features, spatials, tokens)        # [B, K, v_dim], [B, K, 6], [B, 40] -> [B, A]

Given the same weights, ``BUTD`` computes exactly the specification's forward pass (its submodule
names are kept, so the two state dicts line up), with one repair: a bidirectional question encoder
yields ``2 * hidden`` features, and the attention and question projection are sized for that (the
specification sizes them ``hidden`` and fails). Features may arrive in the store's dtype (float16):
the models cast them to their own parameter dtype, which on a GPU is cheaper than in the loader.

This module imports only torch: the training loop lives in ``butd.lit``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

SPATIAL_DIM = 6


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

    def forward(self, image_features, question_emb):
        # Broadcasting the question over the boxes is the spec's repeat() without the copy.
        joint = self.image_proj(image_features) * self.question_proj(question_emb).unsqueeze(1)
        return torch.softmax(self.linear(self.dropout(joint)), dim=1)        # [B, K, 1]


class _VQAModel(nn.Module):
    """What BUTD and FiLM share: the constructor, the question encoder, the image projection and
    the classifier; ``build_fusion`` adds each model's own layers."""

    def __init__(self, ntoken: int, num_answers: int, v_dim: int = 2048, emb_dim: int = 300,
                 hidden: int = 1024, rnn: str = "GRU", rnn_layers: int = 1, bidirectional: bool = False,
                 weight_norm: bool = True, emb_dropout: float = 0.0, q_dropout: float = 0.0,
                 attention_dropout: float = 0.2, answer_dropout: float = 0.5):
        super().__init__()
        self.v_dim, self.hidden = v_dim, hidden
        self.w_emb = WordEmbedding(ntoken, emb_dim, emb_dropout)
        self.q_enc = QuestionEncoder(emb_dim, hidden, rnn_layers, bidirectional, q_dropout, rnn)
        # the specification's construction order, so a seeded run draws the same initial weights
        self.build_fusion(self.q_enc.out_dim, v_dim + SPATIAL_DIM, hidden, attention_dropout, weight_norm)
        self.img_project = MLP([v_dim + SPATIAL_DIM, hidden], weight_norm)
        self.ans_classifier = nn.Sequential(
            linear(hidden, 2 * hidden, weight_norm), nn.ReLU(), nn.Dropout(answer_dropout),
            linear(2 * hidden, num_answers, weight_norm))

    def build_fusion(self, q_dim, image_dim, hidden, attention_dropout, weight_norm):
        """Add the layers that join question and image (each model its own)."""
        raise NotImplementedError

    def load_embeddings(self, weights) -> None:
        """Load GloVe rows ([ntoken, emb_dim]) into the word embedding."""
        self.w_emb.load_embeddings(weights)

    def image_inputs(self, features, spatials):
        """Features joined with their 6-d spatials, in the model's dtype: [B, K, v_dim + 6]."""
        dtype = self.img_project.mlp[0].bias.dtype
        return torch.cat([features.to(dtype), spatials.to(dtype)], dim=2)

    def encode_question(self, tokens):
        return self.q_enc(self.w_emb(tokens))


class BUTD(_VQAModel):
    """Bottom-Up Top-Down with product fusion (the specification's model)."""

    def build_fusion(self, q_dim, image_dim, hidden, attention_dropout, weight_norm):
        self.att = Attention(image_dim, q_dim, hidden, attention_dropout, weight_norm)
        self.q_project = MLP([q_dim, hidden], weight_norm)

    def forward(self, features, spatials, question_tokens):
        v = self.image_inputs(features, spatials)
        q = self.encode_question(question_tokens)
        img_enc = (v * self.att(v, q)).sum(dim=1)
        return self.ans_classifier(self.q_project(q) * self.img_project(img_enc))


class FiLM(_VQAModel):
    """FiLM fusion (the specification's companion model): the question predicts a per-channel scale
    and shift for every box's features; the modulated boxes are averaged, projected and classified.
    There is no attention, so ``attention_dropout`` is accepted (same constructor) but unused."""

    def build_fusion(self, q_dim, image_dim, hidden, attention_dropout, weight_norm):
        self.gamma = linear(q_dim, image_dim, weight_norm)
        self.beta = linear(q_dim, image_dim, weight_norm)

    def forward(self, features, spatials, question_tokens):
        v = self.image_inputs(features, spatials)
        q = self.encode_question(question_tokens)
        film = v * self.gamma(q).unsqueeze(1) + self.beta(q).unsqueeze(1)
        return self.ans_classifier(self.img_project(film.mean(dim=1)))


MODELS = {"butd": BUTD, "film": FiLM}


def build_model(name: str, **kwargs) -> _VQAModel:
    """``build_model('butd' | 'film', ntoken=..., num_answers=..., ...)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)
