"""FiLM fusion, as the modular branch of annotated-butd defines it (``src/models/film.py``)."""
from __future__ import annotations

import torch.nn as nn

from butd.models.base import VQAModel, box_mask


class FiLM(VQAModel):
    """FiLM fusion: the question predicts a per-channel scale (``film_gamma``) and shift
    (``film_beta``) for every box's features, plain ``nn.Linear`` layers as in the modular branch
    (the projection and classifier are weight-normalised like BUTD's); the modulated boxes are
    averaged, projected and classified. There is no attention, so ``attention_dropout`` is accepted
    (same constructor) but unused."""

    def build_fusion(self, q_dim, image_dim, hidden, attention_dropout, weight_norm):
        self.film_gamma = nn.Linear(q_dim, image_dim)
        self.film_beta = nn.Linear(q_dim, image_dim)

    def forward(self, features, spatials, question_tokens, num_boxes=None):
        """features [B, K, v_dim], spatials [B, K, spatial_dim], question_tokens [B, L] -> logits
        [B, A]. ``num_boxes`` [B, I] (optional): real boxes per image; the average skips padding."""
        v = self.image_inputs(features, spatials)
        q = self.encode_question(question_tokens)
        film = v * self.film_gamma(q).unsqueeze(1) + self.film_beta(q).unsqueeze(1)
        mask = box_mask(num_boxes, v.shape[1])
        if mask is None:
            pooled = film.mean(dim=1)
        else:
            mask = mask.unsqueeze(2).to(film.dtype)
            pooled = (film * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return self.ans_classifier(self.img_project(pooled))
