"""FiLM against the modular branch's own FiLM (butd/reference/annotated_butd.py, a transcription of
annotated-butd's src/models/film.py) for GQA, VQA v2 and NLVR2 inputs: the same parameters in the
same order, drawn alike from one seed, and the same logits given the same weights; with padded
boxes, the masked average equals the reference on the real boxes alone."""
import pytest
import torch

from butd.models import FiLM
from butd.reference import annotated_butd

NTOKEN, EMB, HIDDEN, V_DIM, K, B, T = 23, 10, 16, 12, 5, 4, 9
# dataset -> (answers, images per question, spatial channels our model is given)
DATASETS = {"gqa": (7, 1, 6), "vqa2": (9, 1, 6), "nlvr2": (2, 2, 7)}


def build_pair(dataset, seed=0, **options):
    answers, _, spatial_dim = DATASETS[dataset]
    torch.manual_seed(seed)
    reference = annotated_butd.FiLM(dataset, NTOKEN, V_DIM, answers, emb_dim=EMB, hidden=HIDDEN, **options)
    torch.manual_seed(seed)
    ours = FiLM(NTOKEN, answers, v_dim=V_DIM, spatial_dim=spatial_dim, emb_dim=EMB, hidden=HIDDEN, **options)
    return reference, ours


def batch(dataset, seed=1):
    """The reference's inputs (features, 6 spatials, tokens, indicator or None) and ours (the
    indicator joined to the spatials as the loader does)."""
    _, images, _ = DATASETS[dataset]
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(B, images * K, V_DIM, generator=g) * 3
    spatials = torch.rand(B, images * K, 6, generator=g)
    tokens = torch.randint(0, NTOKEN, (B, T), generator=g)
    tokens[:, :3] = NTOKEN                                   # front padding
    if images == 1:
        return (features, spatials, tokens, None), (features, spatials, tokens)
    indicator = torch.cat([torch.zeros(B, K, 1), torch.ones(B, K, 1)], dim=1)
    return (features, spatials, tokens, indicator), (features, torch.cat([spatials, indicator], 2), tokens)


def perturb(model, seed=2):
    """Move every weight off its initial value (biases start at zero or tiny), so that a parameter
    the two models used differently would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("options", [{}, {"rnn": "LSTM", "rnn_layers": 2}, {"weight_norm": False}],
                         ids=["gru", "lstm2", "plain"])
def test_same_parameters_drawn_alike_from_one_seed(dataset, options):
    reference, ours = build_pair(dataset, **options)
    ref, got = dict(reference.named_parameters()), dict(ours.named_parameters())
    assert list(got) == list(ref)                       # names, in construction order
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    for name, p in ref.items():
        assert torch.equal(got[name], p), name          # the same random draws, in the same order
    image_dim = V_DIM + 6 + (dataset == "nlvr2")
    assert ours.film_gamma.weight.shape == (image_dim, HIDDEN) and type(ours.film_beta) is torch.nn.Linear
    assert ours.ans_classifier[3].bias.shape == (DATASETS[dataset][0],)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("options", [{}, {"rnn": "LSTM"}, {"weight_norm": False}], ids=["gru", "lstm", "plain"])
def test_same_logits_given_the_same_weights(dataset, options):
    reference, ours = build_pair(dataset, **options)
    perturb(reference)
    ours.load_state_dict(reference.state_dict())
    reference.eval(), ours.eval()
    theirs_in, ours_in = batch(dataset)
    with torch.no_grad():
        expected = reference(*theirs_in)
        got = ours(*ours_in)
    assert got.shape == (B, DATASETS[dataset][0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_padded_boxes_are_left_out_of_the_average():
    """Two images of K rows, the first question with 3 and 2 real boxes: our masked average equals
    the reference's plain mean over those 5 boxes alone; a full question is unchanged."""
    reference, ours = build_pair("nlvr2")
    perturb(reference)
    ours.load_state_dict(reference.state_dict())
    reference.eval(), ours.eval()
    (features, spatials, tokens, indicator), (_, joined, _) = batch("nlvr2")
    num_boxes = torch.tensor([[3, 2]] + [[K, K]] * (B - 1), dtype=torch.int32)
    real = torch.cat([torch.arange(3), K + torch.arange(2)])
    features[0, 3:K] = 0.0                                   # the padding is zero rows, as in a store
    features[0, K + 2:] = 0.0
    with torch.no_grad():
        got = ours(features, joined, tokens, num_boxes)
        first = reference(features[:1, real], spatials[:1, real], tokens[:1], indicator[:1, real])
        rest = reference(features[1:], spatials[1:], tokens[1:], indicator[1:])
    torch.testing.assert_close(got, torch.cat([first, rest]), rtol=1e-5, atol=1e-5)
