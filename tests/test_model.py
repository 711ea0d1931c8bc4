"""The two-view Turbo model on the real tiny preset (random wav2vec2 + the packaged MiniLM)."""

import math

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, DistilBertConfig

from turbo_ray.config import TINY_AUDIO, Config, load_config
from turbo_ray.losses import LossWeights, objective
from turbo_ray.model import build_model
from turbo_ray.model.encoders import AudioEncoder, _dropout_overrides, load_pretrained
from turbo_ray.model.turbo import MIN_TEMPERATURE
from turbo_ray.presets import encoder_names
from turbo_ray.train import build_optimizer, build_scheduler, train_epoch, train_step

SENTENCES = [
    "I can't believe you did that!",
    "okay",
    "the meeting is at three",
    "this is wonderful news",
]


def make(*overrides: str):
    torch.manual_seed(0)
    cfg = load_config(None, list(overrides))
    return cfg, build_model(cfg, num_classes=4)


@pytest.fixture(scope="module")
def batch():
    cfg = Config()
    tok = AutoTokenizer.from_pretrained(encoder_names(cfg.model)[1])
    text = tok(SENTENCES, padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([16000, 9000, 12000, 6400])
    waves = torch.randn(4, 16000, generator=g) * (torch.arange(16000) < lengths[:, None])
    return {
        "waveforms": waves,
        "audio_lengths": lengths,
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
    }


def test_tiny_preset_loads_offline():
    cfg, model = make()
    assert encoder_names(cfg.model)[0] == TINY_AUDIO
    n_audio = sum(p.numel() for p in model.audio_encoder.parameters())
    assert 3e5 < n_audio < 8e5, n_audio
    text_model = model.text_encoder.model
    assert type(text_model).__name__ == "BertModel" and text_model.config.num_hidden_layers == 6
    assert text_model.config.hidden_dropout_prob == cfg.model.dropout
    assert not any(
        p.requires_grad for p in model.audio_encoder.model.feature_extractor.parameters()
    )


def test_training_views_differ_and_eval_is_deterministic(batch):
    _, model = make("model.dropout=0.2")
    model.train()
    out = model(**batch)
    assert out.audio.shape == (2, 4, 128) and out.logits.shape == (8, 4)
    assert not torch.allclose(out.audio[0], out.audio[1])
    assert not torch.allclose(out.text[0], out.text[1])
    model.eval()
    with torch.no_grad():
        first, second = model(**batch), model(**batch)
    assert first.audio is None and first.logits.shape == (4, 4)
    assert torch.equal(first.logits, second.logits)


def test_views_identical_without_dropout(batch):
    _, model = make("model.dropout=0.0", "model.attention_dropout=0.0", "model.head_dropout=0.0")
    model.train()
    out = model(**batch)
    assert torch.allclose(out.audio[0], out.audio[1], atol=1e-6)
    assert torch.allclose(out.text[0], out.text[1], atol=1e-6)


def test_duplicated_batch_forward_equals_two_separate_forwards(batch):
    _, model = make("model.dropout=0.0", "model.attention_dropout=0.0")
    model.train()
    audio = model.audio_encoder(batch["waveforms"], batch["audio_lengths"], views=2)
    text = model.text_encoder(batch["input_ids"], batch["attention_mask"], views=2)
    audio_once = model.audio_encoder(batch["waveforms"], batch["audio_lengths"])
    text_once = model.text_encoder(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(audio, torch.cat([audio_once, audio_once]), atol=1e-5)
    assert torch.allclose(text, torch.cat([text_once, text_once]), atol=1e-5)


def test_shared_prefix_runs_once_on_the_batch_and_suffix_on_both_views(batch):
    _, model = make()
    model.train()
    seen = {}
    encoder = model.audio_encoder.model
    encoder.feature_extractor.register_forward_hook(
        lambda m, i, o: seen.setdefault("prefix", []).append(i[0].shape[0])
    )
    encoder.encoder.register_forward_hook(
        lambda m, i, o: seen.setdefault("suffix", []).append(i[0].shape[0])
    )
    model(**batch)
    assert seen == {"prefix": [4], "suffix": [8]}


@pytest.mark.parametrize("frozen", [True, False])
def test_backward_runs_through_the_conv_prefix_only_when_it_is_trained(batch, frozen):
    _, model = make(f"model.freeze_feature_encoder={str(frozen).lower()}")
    model.train()
    features, _ = model.audio_encoder.prefix(batch["waveforms"], batch["audio_lengths"])
    assert features.requires_grad is not frozen  # frozen: no graph, backward stops at the suffix
    model.audio_encoder(batch["waveforms"], batch["audio_lengths"], views=2).sum().backward()
    conv_grads = [p.grad for p in model.audio_encoder.model.feature_extractor.parameters()]
    assert all(g is None for g in conv_grads) if frozen else all(g is not None for g in conv_grads)


def test_padding_does_not_change_pooled_embeddings(batch):
    _, model = make()
    model.eval()
    with torch.no_grad():
        n = int(batch["audio_lengths"][3])
        alone = model.audio_encoder(batch["waveforms"][3:4, :n], batch["audio_lengths"][3:4])
        padded = model.audio_encoder(batch["waveforms"], batch["audio_lengths"])[3:4]
        assert torch.allclose(alone, padded, atol=1e-5)
        k = int(batch["attention_mask"][1].sum())
        alone = model.text_encoder(batch["input_ids"][1:2, :k], batch["attention_mask"][1:2, :k])
        padded = model.text_encoder(batch["input_ids"], batch["attention_mask"])[1:2]
        assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("mode", ["turbo", "in", "cross"])
def test_gradients_reach_both_encoders_and_heads(batch, mode):
    cfg, model = make(f"loss.mode={mode}", "loss.learnable_temperature=true")
    model.train()
    parts = objective(model(**batch), torch.tensor([0, 1, 2, 3]), LossWeights.from_config(cfg.loss))
    parts["total"].backward()

    def grad_norm(module):
        return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)

    assert grad_norm(model.audio_encoder.model.encoder) > 0
    assert grad_norm(model.text_encoder.model.encoder) > 0
    assert grad_norm(model.audio_proj) > 0 and grad_norm(model.text_proj) > 0
    assert model.log_temperature.grad.abs().item() > 0
    assert all(p.grad is None for p in model.audio_encoder.model.feature_extractor.parameters())
    # DDP (without find_unused_parameters) needs a gradient for every trainable parameter
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_the_temperature_travels_in_the_output_from_its_parameter(batch):
    # the config only initialises τ: the loss reads the model's parameter, carried in its output
    cfg, model = make("loss.temperature=0.2", "loss.learnable_temperature=true")
    model.train()
    out = model(**batch)
    assert out.temperature.item() == pytest.approx(0.2) and out.temperature.requires_grad
    labels, weights = torch.tensor([0, 1, 2, 3]), LossWeights.from_config(cfg.loss)
    with torch.no_grad():
        model.log_temperature.fill_(math.log(0.05))  # the parameter moved; the config did not
    torch.manual_seed(0)
    moved = model(**batch)
    assert moved.temperature.item() == pytest.approx(0.05) and cfg.loss.temperature == 0.2
    hotter = objective(moved._replace(temperature=torch.tensor(0.2)), labels, weights)
    assert objective(moved, labels, weights)["in"].item() != pytest.approx(hotter["in"].item())


def test_one_training_step_is_the_epochs_step(batch):
    # `train_step` (what the benchmarks time) and `train_epoch` (what training runs) take the same
    # step
    labelled = dict(batch, labels=torch.tensor([0, 1, 2, 3]))
    params = []
    for run in ("step", "epoch"):
        cfg, model = make("loss.learnable_temperature=true")
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, steps=2)
        torch.manual_seed(1)
        if run == "step":
            model.train()
            for _ in range(2):
                train_step(model, labelled, optimizer, scheduler, cfg, torch.device("cpu"))
        else:
            train_epoch(model, [labelled] * 2, optimizer, scheduler, cfg, torch.device("cpu"))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])
    assert "labels" in labelled  # the caller's batch is not consumed


def test_dropout_reaches_every_known_config_family_and_an_unknown_one_is_an_error():
    bert = _dropout_overrides(BertConfig(), 0.3, 0.2)
    assert bert == {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.2}
    distil = _dropout_overrides(DistilBertConfig(), 0.3, 0.2)  # DistilBERT calls it `dropout`
    assert distil == {"dropout": 0.3, "attention_dropout": 0.2}

    class NoDropoutConfig:  # a family whose dropout fields this project does not know
        attention_dropout = 0.1

    with pytest.raises(
        ValueError, match="NoDropoutConfig has no hidden dropout field .* model.dropout"
    ):
        _dropout_overrides(NoDropoutConfig(), 0.3, 0.2)


def test_baseline_is_one_view_without_projection_heads(batch):
    cfg, model = make("loss.mode=baseline")
    model.train()
    seen = []
    model.text_encoder.model.register_forward_hook(
        lambda m, i, o: seen.append(o.last_hidden_state.shape[0])
    )
    out = model(**batch)
    assert out.audio is None and out.logits.shape == (4, 4) and seen == [4]
    assert not hasattr(model, "audio_proj")
    assert out.temperature is None
    assert set(objective(out, torch.tensor([0, 1, 2, 3]), LossWeights.from_config(cfg.loss))) == {
        "ce",
        "total",
    }


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_a_unimodal_baseline_builds_and_runs_only_its_encoder(batch, modality):
    cfg, model = make("loss.mode=baseline", f"model.modalities={modality}")
    other = "text" if modality == "audio" else "audio"
    assert getattr(model, f"{other}_encoder") is None
    kept = getattr(model, f"{modality}_encoder")
    assert model.classifier[0].in_features == kept.dim
    model.train()
    labels = torch.tensor([0, 1, 2, 3])
    objective(model(**batch), labels, LossWeights.from_config(cfg.loss))["total"].backward()
    assert all(p.grad is not None for p in model.classifier.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in kept.parameters())
    # the left-out modality's input does not reach the classifier
    model.eval()
    blank = (
        {"waveforms": torch.zeros_like(batch["waveforms"])}
        if other == "audio"
        else {
            "input_ids": batch["input_ids"][:, :2],  # [CLS] + one token: another text
            "attention_mask": batch["attention_mask"][:, :2],
        }
    )
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**(batch | blank)).logits)
    build_optimizer(model, cfg)  # param groups cope with the missing encoder


def test_training_steps_lower_the_loss_on_a_fixed_batch(batch):
    cfg, model = make()
    model.train()
    labels = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    losses = []
    for _ in range(8):
        torch.manual_seed(len(losses))
        loss = objective(model(**batch), labels, LossWeights.from_config(cfg.loss))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def epochs(cfg, model, batch, count: int) -> list[float]:
    """`count` epochs of the real training step, each over the fixed batch twice; mean total loss
    per epoch."""
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    labelled = dict(batch, labels=torch.tensor([0, 1, 2, 3]))
    return [
        train_epoch(model, [labelled] * 2, optimizer, scheduler, cfg, torch.device("cpu"))[
            "train_total"
        ]
        for _ in range(count)
    ]


def test_bf16_training_on_cpu_learns_and_tracks_fp32(batch):
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg, model = make(f"train.precision={precision}", "train.lr=3e-4")
        torch.manual_seed(1)  # the same dropout masks' seed for both
        losses[precision] = epochs(cfg, model, batch, 4)
    assert losses["bf16"][-1] < 0.8 * losses["bf16"][0], losses
    # bf16 encoders, fp32 losses: each epoch's loss within 5 % of the fp32 run's
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05), losses


def test_learnable_temperature_is_clamped_after_every_step(batch):
    cfg, model = make("loss.learnable_temperature=true")
    with torch.no_grad():
        model.log_temperature.fill_(math.log(MIN_TEMPERATURE / 2))
    epochs(
        cfg, model, batch, 1
    )  # two steps: clamped after the first, one small Adam step after the second
    assert MIN_TEMPERATURE <= model.temperature.item() < 1.01 * MIN_TEMPERATURE


def test_audio_encoder_loads_from_a_local_directory_with_configured_dropout(tmp_path):
    torch.manual_seed(0)
    load_pretrained(TINY_AUDIO, 0.1, 0.1).save_pretrained(tmp_path)
    reloaded = load_pretrained(str(tmp_path), dropout=0.3, attention_dropout=0.2)
    assert reloaded.config.hidden_dropout == 0.3 and reloaded.config.attention_dropout == 0.2
    assert reloaded.config.layerdrop == 0.0
    torch.manual_seed(0)
    original = load_pretrained(TINY_AUDIO, 0.1, 0.1)
    for (name, a), b in zip(original.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    encoder = AudioEncoder(reloaded)
    assert encoder.dim == 128


def test_text_model_is_not_an_audio_encoder():
    with pytest.raises(ValueError, match="not a wav2vec2-style audio encoder"):
        AudioEncoder(load_pretrained(encoder_names(Config().model)[1], 0.1, 0.1))


@pytest.mark.parametrize("norm", ["group", "layer"])  # wav2vec2-base's front end, and the tiny's
def test_an_utterances_audio_embedding_does_not_depend_on_its_batch(norm):
    from transformers import Wav2Vec2Model

    from turbo_ray.model.encoders import tiny_audio_config

    config = tiny_audio_config()
    config.feat_extract_norm, config.do_stable_layer_norm = norm, norm == "layer"
    torch.manual_seed(0)
    encoder = AudioEncoder(Wav2Vec2Model(config)).eval()
    short, long = torch.randn(8_000), torch.randn(24_000)
    batch = torch.nn.utils.rnn.pad_sequence([short, long], batch_first=True)
    with torch.no_grad():
        alone = encoder(short[None], torch.tensor([8_000]))
        beside = encoder(batch, torch.tensor([8_000, 24_000]))[:1]
    torch.testing.assert_close(alone, beside, atol=1e-5, rtol=0)
