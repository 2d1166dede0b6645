import numpy as np
import pytest
import torch

from failsight._validate import FailsightInputError
from failsight.datasets.shapes import make_shapes, zero_shot_split
from failsight.models.compositional import (
    COMPOSED,
    CompositionalNet,
    compose_logits,
    compose_predictions,
    predict_heads,
    pretrain_encoder,
    torch_threads,
    train_compositional,
)

SIZE = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # one torch thread: the machines running the tests are shared and small; oversubscription is slow
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    d = make_shapes(360, image_size=SIZE, seed=0)
    split = zero_shot_split(d, val=0.0, test=0.2, seed=0)
    return split.subsets(d)


def _net(**kw):
    base = {"image_size": SIZE, "width": 4, "hidden": 16, "seed": 0}
    base.update(kw)
    return CompositionalNet(8, 8, **base)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- architecture


@pytest.mark.parametrize(("size", "grid"), [(32, 8), (24, 6), (16, 4), (20, 5), (8, 2)])
def test_token_grid_and_output_shapes(size, grid):
    m = CompositionalNet(8, 8, image_size=size, width=4, seed=0)
    x = torch.rand(3, 3, size, size)
    assert m.encode(x).shape == (3, grid * grid, 8)
    out = m(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"shape": (3, 8), "color": (3, 8), "object": (3, 64)}
    assert m.block is not None and m.block.pos.shape == (1, grid * grid, 8)


def test_attention_switch_removes_the_block():
    with_att, without = _net(), _net(attention=False)
    assert without.block is None
    n_with = sum(p.numel() for p in with_att.parameters())
    n_without = sum(p.numel() for p in without.parameters())
    assert n_without < n_with
    # without attention the token order does not matter (mean pooling only)
    x = torch.rand(2, 3, SIZE, SIZE)
    tok = without.encode(x)
    without.eval()
    a = without.forward_tokens(tok)["shape"]
    b = without.forward_tokens(tok.flip(1))["shape"]
    torch.testing.assert_close(a, b)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = _net(seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert _same(_state(a), _state(_net(seed=5)))
    assert not _same(_state(a), _state(_net(seed=6)))


# ----------------------------------------------------------------------------- composition


def test_compose_logits_is_the_product_of_head_probabilities():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)) * 3, rng.normal(size=(5, 4)) * 3
    logp = compose_logits(a, b)
    assert logp.shape == (5, 12)
    ta, tb = torch.tensor(a), torch.tensor(b)
    product = (torch.softmax(ta, 1)[:, :, None] * torch.softmax(tb, 1)[:, None, :]).reshape(5, 12)
    np.testing.assert_allclose(np.exp(logp), product.numpy(), rtol=1e-10, atol=1e-12)
    # = softmax of shape_logit + colour_logit over all combinations
    summed = torch.softmax((ta[:, :, None] + tb[:, None, :]).reshape(5, 12), 1)
    np.testing.assert_allclose(np.exp(logp), summed.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(logp.argmax(1), compose_predictions(a.argmax(1), b.argmax(1), 4))


def test_composition_predicts_a_combination_the_object_head_never_saw():
    # shape head says "2", colour head says "5": composed label 2 * 8 + 5 whatever the object head says
    s = np.full((1, 8), -5.0)
    s[0, 2] = 5.0
    c = np.full((1, 8), -5.0)
    c[0, 5] = 5.0
    assert compose_logits(s, c).argmax() == 2 * 8 + 5


def test_compose_bad_input():
    with pytest.raises(FailsightInputError, match="same images"):
        compose_logits(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(FailsightInputError, match="NaN"):
        compose_logits(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))
    with pytest.raises(FailsightInputError, match="must match"):
        compose_predictions([0, 1], [0], 3)
    with pytest.raises(FailsightInputError, match="label 3"):
        compose_predictions([0], [3], 3)


# ----------------------------------------------------------------------------- training


def test_training_is_deterministic_and_logs_every_epoch(data):
    seen = []

    def cb(epoch, preds, model):
        seen.append((epoch, {k: {h: p.copy() for h, p in v.items()} for k, v in preds.items()}))

    runs = []
    for _ in range(2):
        m = _net()
        h = train_compositional(m, data["train"], epochs=2, batch_size=32, seed=3,
                                eval_sets={"test": data["test"], "unseen": data["test_unseen"].images},
                                callback=cb)
        runs.append((m, h))
    (m1, h1), (m2, h2) = runs
    assert _same(_state(m1), _state(m2))
    assert h1.loss == h2.loss and set(h1.loss) == {"shape", "color", "object"}
    for k in ("test", "unseen"):
        for head in ("shape", "color", "object", COMPOSED):
            np.testing.assert_array_equal(h1.predictions[k][head], h2.predictions[k][head])
    n_test = len(data["test"])
    assert h1.predictions["test"]["shape"].shape == (2, n_test)
    assert [e for e, _ in seen] == [1, 2, 1, 2]
    np.testing.assert_array_equal(seen[1][1]["test"]["color"], h1.predictions["test"]["color"][-1])
    # history's last epoch = a fresh prediction with the trained model; composed = shape * C + colour
    logits = predict_heads(m1, data["test"])
    np.testing.assert_array_equal(logits["shape"].argmax(1), h1.final_predictions("test")["shape"])
    final = h1.final_predictions("test")
    np.testing.assert_array_equal(final[COMPOSED], final["shape"] * 8 + final["color"])
    np.testing.assert_array_equal(logits[COMPOSED].argmax(1), h1.final_predictions("test")[COMPOSED])
    assert not m1.training
    # another seed gives other weights
    m3 = _net()
    train_compositional(m3, data["train"], epochs=2, batch_size=32, seed=4)
    assert not _same(_state(m1), _state(m3))
    h1.to_json()  # JSON-ready (predictions excluded)
    assert "predictions" not in h1.to_dict()


def test_colour_is_learned_quickly(data):
    m = _net(attention=False, width=8)
    h = train_compositional(m, data["train"], epochs=4, batch_size=16, lr=1e-2, seed=0,
                            eval_sets={"test": data["test"]})
    acc = (h.predictions["test"]["color"] == data["test"].color_labels[None]).mean(axis=1)
    # a training outcome, so the threshold sits where every measured seed clears it with a wide margin: over
    # seeds 0-18 (same data and settings, 56 test images) colour accuracy was 0.75-1.0 (mean 0.92, sd 0.06;
    # the old threshold 0.8 failed seed 7), so 0.5 (4x chance) is 6.6 sd below the mean and 0.25 below the
    # lowest; the colour loss fell to at most 0.41x its first epoch's in every seed
    assert acc[-1] > 0.5  # chance is 1/8
    assert h.loss["color"][-1] < h.loss["color"][0]


def test_frozen_encoder_is_pretrained_then_left_unchanged(data):
    m = _net(frozen_embeddings=True)
    assert not m.encoder_pretrained
    h = train_compositional(m, data["train"], epochs=1, batch_size=32, pretrain_epochs=2, seed=0,
                            eval_sets={"test": data["test"]})
    assert h.pretrain is not None and len(h.pretrain.loss) == 2 and h.pretrain.loss[1] < h.pretrain.loss[0]
    assert m.encoder_pretrained and h.frozen_embeddings
    assert all(not p.requires_grad for p in m.encoder.parameters())
    enc_state = m.encoder_state()
    head_state = _state(m.shape_head)
    h2 = train_compositional(m, data["train"], epochs=2, batch_size=32, seed=1)
    assert h2.pretrain is None  # already pretrained: not repeated
    assert _same(enc_state, m.encoder_state())  # weights *and* batch-norm running statistics unchanged
    assert not _same(head_state, _state(m.shape_head))
    full = _net()
    assert h2.trainable_parameters < sum(p.numel() for p in full.parameters())
    # a frozen encoder stays in eval mode (fixed batch-norm statistics) when the model trains
    m.train()
    assert not m.encoder.training and m.shape_head.training


def test_shared_pretrained_encoder_and_explicit_pretraining(data):
    donor = _net(frozen_embeddings=True)
    ph = pretrain_encoder(donor, data["train"].images, epochs=1, batch_size=64, seed=0)
    assert ph.epochs == 1 and np.isfinite(ph.loss[0])
    a = _net(frozen_embeddings=True, seed=1).load_encoder_state(donor.encoder_state())
    assert a.encoder_pretrained
    h = train_compositional(a, data["train"], epochs=1, batch_size=64, seed=0)
    assert h.pretrain is None
    assert _same(a.encoder_state(), donor.encoder_state())


def test_only_the_given_heads_are_trained(data):
    m = _net()
    shape_head = _state(m.shape_head)
    h = train_compositional(m, data["train"], {"object": data["train"].shape_labels}, epochs=1, batch_size=64)
    assert set(h.loss) == {"object"}
    assert _same(shape_head, _state(m.shape_head))  # no gradient reached the unused head


def test_torch_threads_is_scoped():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_bad_input(data):
    m = _net()
    tr = data["train"]
    with pytest.raises(FailsightInputError, match="expects images"):
        train_compositional(m, np.zeros((4, 3, 32, 32), np.float32), {"shape": [0, 1, 2, 3]})
    with pytest.raises(FailsightInputError, match="4-D"):
        train_compositional(m, np.zeros((4, SIZE, SIZE), np.float32), {"shape": [0, 1, 2, 3]})
    with pytest.raises(FailsightInputError, match="unknown head"):
        train_compositional(m, tr.images, {"texture": tr.shape_labels})
    with pytest.raises(FailsightInputError, match="only 8 classes"):
        train_compositional(m, tr.images, {"shape": tr.labels})
    with pytest.raises(FailsightInputError, match="one label per image"):
        train_compositional(m, tr.images, {"shape": tr.shape_labels[:-1]})
    with pytest.raises(FailsightInputError, match="ShapesData"):
        train_compositional(m, tr.images)
    with pytest.raises(FailsightInputError, match="eval_sets"):
        train_compositional(m, tr, eval_sets={"x": np.zeros((2, 3, 8, 8), np.float32)})
    with pytest.raises(FailsightInputError, match="lr"):
        train_compositional(m, tr, lr=-1.0)
    with pytest.raises(FailsightInputError, match="epochs"):
        train_compositional(m, tr, epochs=0)
    with pytest.raises(FailsightInputError, match="CompositionalNet"):
        train_compositional(torch.nn.Linear(2, 2), tr)
    with pytest.raises(FailsightInputError, match="callback"):
        train_compositional(m, tr, callback=3)
    with pytest.raises(FailsightInputError, match="divisible"):
        CompositionalNet(8, 8, width=3, heads=4)
    with pytest.raises(FailsightInputError, match="image_size"):
        CompositionalNet(8, 8, image_size=4)
    with pytest.raises(FailsightInputError, match="evaluation set"):
        h = train_compositional(m, tr, epochs=1, batch_size=128)
        h.final_predictions("test")
