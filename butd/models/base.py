"""What BUTD and FiLM share: the question encoder, the image projection and the answer classifier."""
from __future__ import annotations

import torch
import torch.nn as nn

from butd.models.layers import MLP, QuestionEncoder, WordEmbedding, linear

SPATIAL_DIM = 6


class VQAModel(nn.Module):
    """The constructor, the question encoder, the image projection and the classifier of both
    models; ``build_fusion`` adds each model's own layers. ``spatial_dim`` is the width of the
    per-box geometry joined to each box's features: 6, or 7 where an image indicator follows
    (two images per question)."""

    def __init__(self, ntoken: int, num_answers: int, v_dim: int = 2048, spatial_dim: int = SPATIAL_DIM,
                 emb_dim: int = 300, hidden: int = 1024, rnn: str = "GRU", rnn_layers: int = 1,
                 bidirectional: bool = False, weight_norm: bool = True, emb_dropout: float = 0.0,
                 q_dropout: float = 0.0, attention_dropout: float = 0.2, answer_dropout: float = 0.5,
                 freeze_embeddings: bool = False):
        super().__init__()
        self.v_dim, self.hidden = v_dim, hidden
        self.w_emb = WordEmbedding(ntoken, emb_dim, emb_dropout)
        self.w_emb.emb.weight.requires_grad_(not freeze_embeddings)
        self.q_enc = QuestionEncoder(emb_dim, hidden, rnn_layers, bidirectional, q_dropout, rnn)
        # the specification's construction order, so a seeded run draws the same initial weights
        self.build_fusion(self.q_enc.out_dim, v_dim + spatial_dim, hidden, attention_dropout, weight_norm)
        self.img_project = MLP([v_dim + spatial_dim, hidden], weight_norm)
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
        """Features joined with their spatials, in the model's dtype: [B, K, v_dim + spatial_dim]."""
        dtype = self.img_project.mlp[0].bias.dtype
        return torch.cat([features.to(dtype), spatials.to(dtype)], dim=2)

    def encode_question(self, tokens):
        return self.q_enc(self.w_emb(tokens))


def box_mask(num_boxes, boxes: int):
    """bool [B, I*K] from ``num_boxes`` [B, I] (the real boxes of each of I images of K rows), True
    for real boxes; None when ``num_boxes`` is None (every row is a real box)."""
    if num_boxes is None:
        return None
    per_image = boxes // num_boxes.shape[1]
    mask = torch.arange(per_image, device=num_boxes.device) < num_boxes.unsqueeze(2)
    return mask.reshape(num_boxes.shape[0], -1)
