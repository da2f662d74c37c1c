"""BUTD against an independent statement of the specification's forward pass, written here from the
spec's formulas with plain tensor ops on the model's raw parameters (weight norm as g * v / ||v||,
the GRU/LSTM recurrences by hand); FiLM shapes and learning; the padding row."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from butd.models import BUTD, FiLM, build_model

NTOKEN, ANSWERS, V_DIM, EMB, HIDDEN, B, K, T = 30, 11, 20, 12, 16, 5, 7, 9


def effective(layer):
    """(weight, bias) of a Linear as the spec computes them: weight_norm(dim=None) is g * v / ||v||_F."""
    p = getattr(layer, "parametrizations", None)
    if p is None:
        return layer.weight, layer.bias
    g, v = p.weight.original0, p.weight.original1
    return g * v / v.norm(), layer.bias


def dense(x, layer, relu=True):
    w, b = effective(layer)
    y = x @ w.T + b
    return y.clamp(min=0) if relu else y


def rnn_direction(x, rnn, layer, reverse, kind):
    """One direction of one layer of nn.GRU/nn.LSTM (gate order r,z,n / i,f,g,o), zero initial state."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
    b_ih, b_hh = getattr(rnn, "bias_ih" + sfx), getattr(rnn, "bias_hh" + sfx)
    h = x.new_zeros(x.shape[0], rnn.hidden_size)
    c = torch.zeros_like(h)
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    out = [None] * x.shape[1]
    for t in steps:
        gi, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        if kind == "GRU":
            ir, iz, in_ = gi.chunk(3, 1)
            hr, hz, hn = gh.chunk(3, 1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            h = (1 - z) * n + z * h
        else:
            i, f, g, o = (gi + gh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        out[t] = h
    return torch.stack(out, 1)


def reference_butd(m, features, spatials, tokens, kind, layers, bidirectional):
    """The spec's BUTD.forward (eval mode: dropout is the identity)."""
    x = m.w_emb.emb.weight[tokens]
    for layer in range(layers):
        dirs = [rnn_direction(x, m.q_enc.rnn, layer, False, kind)]
        if bidirectional:
            dirs.append(rnn_direction(x, m.q_enc.rnn, layer, True, kind))
        x = torch.cat(dirs, 2)
    q = x[:, -1] if not bidirectional else torch.cat([x[:, -1, :HIDDEN], x[:, 0, HIDDEN:]], 1)
    v = torch.cat([features.float(), spatials], 2)
    joint = dense(v, m.att.image_proj.mlp[0]) * dense(q, m.att.question_proj.mlp[0])[:, None, :]
    att = torch.softmax(dense(joint, m.att.linear, relu=False), dim=1)
    img_enc = (v * att).sum(1)
    joint = dense(q, m.q_project.mlp[0]) * dense(img_enc, m.img_project.mlp[0])
    hid = dense(joint, m.ans_classifier[0])
    return dense(hid, m.ans_classifier[3], relu=False)


def inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(B, K, V_DIM, generator=g).to(dtype)
    spatials = torch.rand(B, K, 6, generator=g)
    tokens = torch.randint(0, NTOKEN, (B, T), generator=g)
    tokens[:, :3] = NTOKEN                     # front padding, as the question shards write it
    return features, spatials, tokens


@pytest.mark.parametrize("rnn", ["GRU", "LSTM"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("weight_norm", [True, False])
def test_butd_matches_spec_forward(rnn, bidirectional, layers, weight_norm):
    torch.manual_seed(1)
    m = BUTD(NTOKEN, ANSWERS, v_dim=V_DIM, emb_dim=EMB, hidden=HIDDEN, rnn=rnn, rnn_layers=layers,
             bidirectional=bidirectional, weight_norm=weight_norm).eval()
    # Move the weight-norm gains away from ||v|| so that a missing normalisation would show.
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.rand_like(p) * 0.1)
    features, spatials, tokens = inputs()
    with torch.no_grad():
        got = m(features, spatials, tokens)
        want = reference_butd(m, features, spatials, tokens, rnn, layers, bidirectional)
    assert got.shape == (B, ANSWERS)
    assert (got - want).abs().max().item() < 1e-5


def test_weight_norm_is_one_gain_per_matrix():
    m = BUTD(NTOKEN, ANSWERS, v_dim=V_DIM, emb_dim=EMB, hidden=HIDDEN)
    layer = m.ans_classifier[0]
    assert layer.parametrizations.weight.original0.numel() == 1
    # Scaling v leaves the effective weight unchanged: it is normalised over the whole matrix.
    before = layer.weight.detach().clone()
    with torch.no_grad():
        layer.parametrizations.weight.original1.mul_(3.0)
    assert torch.allclose(layer.weight, before, atol=1e-6)


def test_float16_features_are_cast_inside_forward():
    torch.manual_seed(0)
    m = BUTD(NTOKEN, ANSWERS, v_dim=V_DIM, emb_dim=EMB, hidden=HIDDEN).eval()
    features, spatials, tokens = inputs()
    half = features.half()
    with torch.no_grad():
        assert torch.equal(m(half, spatials, tokens), m(half.float(), spatials, tokens))


def test_padding_row_is_zero_untouched_by_glove_and_gets_no_gradient():
    torch.manual_seed(0)
    m = BUTD(NTOKEN, ANSWERS, v_dim=V_DIM, emb_dim=EMB, hidden=HIDDEN)
    glove = np.random.default_rng(0).normal(size=(NTOKEN, EMB)).astype(np.float32)
    m.load_embeddings(glove)
    emb = m.w_emb.emb.weight
    assert torch.equal(emb[:NTOKEN], torch.from_numpy(glove))
    assert torch.count_nonzero(emb[NTOKEN]) == 0
    features, spatials, tokens = inputs()
    m(features, spatials, tokens).sum().backward()
    assert torch.count_nonzero(emb.grad[NTOKEN]) == 0
    assert torch.count_nonzero(emb.grad[tokens[0, -1]]) > 0
    with pytest.raises(ValueError, match=r"expected \(30, 12\)"):
        m.load_embeddings(glove[:-1])


def test_the_last_state_follows_the_last_word():
    # Questions are front-padded so that the encoder's last state comes right after the last word.
    torch.manual_seed(0)
    m = BUTD(NTOKEN, ANSWERS, v_dim=V_DIM, emb_dim=EMB, hidden=HIDDEN).eval()
    features, spatials, tokens = inputs()
    with torch.no_grad():
        a = m(features, spatials, tokens)
        tokens2 = tokens.clone()
        tokens2[:, -1] = (tokens2[:, -1] + 1) % NTOKEN     # the last word matters
        b = m(features, spatials, tokens2)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("bidirectional", [False, True])
def test_film_shapes_and_a_gradient_step_lowers_the_loss(bidirectional):
    torch.manual_seed(0)
    m = FiLM(NTOKEN, ANSWERS, v_dim=V_DIM, emb_dim=EMB, hidden=HIDDEN, bidirectional=bidirectional,
             answer_dropout=0.0)
    assert m.film_gamma.weight.shape == (V_DIM + 6, HIDDEN * (2 if bidirectional else 1))
    assert not hasattr(m, "att")
    features, spatials, tokens = inputs()
    labels = torch.randint(0, ANSWERS, (B,))
    opt = torch.optim.Adamax(m.parameters(), lr=0.01)
    losses = []
    for _ in range(2):
        logits = m(features.half(), spatials, tokens)
        assert logits.shape == (B, ANSWERS) and logits.dtype == torch.float32
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for n, p in m.named_parameters() if "emb" not in n)
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]


def test_film_matches_its_formula():
    torch.manual_seed(0)
    m = FiLM(NTOKEN, ANSWERS, v_dim=V_DIM, emb_dim=EMB, hidden=HIDDEN).eval()
    features, spatials, tokens = inputs()
    with torch.no_grad():
        q = m.q_enc(m.w_emb(tokens))
        v = torch.cat([features, spatials], 2)
        enc = (v * dense(q, m.film_gamma, False)[:, None] + dense(q, m.film_beta, False)[:, None]).mean(1)
        want = dense(dense(dense(enc, m.img_project.mlp[0]), m.ans_classifier[0]), m.ans_classifier[3], False)
        assert (m(features, spatials, tokens) - want).abs().max() < 1e-5


def test_build_model():
    assert isinstance(build_model("butd", ntoken=4, num_answers=3, v_dim=8, hidden=8, emb_dim=4), BUTD)
    assert isinstance(build_model("film", ntoken=4, num_answers=3, v_dim=8, hidden=8, emb_dim=4), FiLM)
    with pytest.raises(ValueError, match="unknown model 'mcan'"):
        build_model("mcan", ntoken=4, num_answers=3)


def test_frozen_embeddings_stay_as_loaded():
    torch.manual_seed(0)
    m = BUTD(NTOKEN, ANSWERS, v_dim=V_DIM, emb_dim=EMB, hidden=HIDDEN, freeze_embeddings=True)
    m.load_embeddings(torch.randn(NTOKEN, EMB))
    before = m.w_emb.emb.weight.clone()
    features, spatials, tokens = inputs()
    opt = torch.optim.Adamax([p for p in m.parameters() if p.requires_grad], lr=0.01)
    F.cross_entropy(m(features, spatials, tokens), torch.randint(0, ANSWERS, (B,))).backward()
    opt.step()
    assert torch.equal(m.w_emb.emb.weight, before) and m.w_emb.emb.weight.grad is None
    assert m.q_enc.rnn.weight_ih_l0.grad is not None
