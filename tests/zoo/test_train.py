"""Training: every recipe learns, resume is exact, the output is a complete HF dir,
and the lean mod-p forward equals the HF forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, GPT2LMHeadModel

from arithinterp.errors import ConfigError
from arithinterp.zoo.data import TaskFormat, split_pairs
from arithinterp.zoo.modeling import build_model, build_tokenizer_for, lean_last_logits
from arithinterp.zoo.recipe import load_recipe, recipe_names
from arithinterp.zoo.train import lr_factor, train, training_history


def shrunk(name: str, *, steps: int, every: int = 5, **update):
    """The shipped recipe with a schedule short enough for a test."""
    r = load_recipe(name)
    schedule = r.schedule.model_copy(update={"warmup_steps": 2, "warmup_start": 0.5})
    ev = r.eval.model_copy(
        update={"every": every, "n_periodic": 256, "n_final": 500, "n_per_class": 50}
    )
    return r.model_copy(update={"steps": steps, "schedule": schedule, "eval": ev, **update})


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_loss_goes_down(name, tmp_path):
    recipe = shrunk(name, steps=21)
    train(recipe, tmp_path, stop_at=20, progress=False)  # stop before the final evaluation
    history = training_history(tmp_path)
    key = "train_loss" if "train_loss" in history[0] else "test_loss"
    losses = [row[key] for row in history]
    assert [row["step"] for row in history] == [5, 10, 15, 20]
    assert losses[-1] < losses[0] - 0.05, losses


def test_recipes_validate_and_match_the_spec():
    add, one = load_recipe("add-5d"), load_recipe("add-5d-1L")
    assert (add.architecture.n_layer, add.architecture.n_head) == (2, 3)
    assert one.architecture.n_layer == 1
    assert add.enrichment.batch_fraction == 0.6 and add.enrichment.pair_fraction == 0.4
    assert add.optimizer.weight_decay == 0.1 and add.optimizer.betas == (0.9, 0.98)
    mod = load_recipe("modadd-113")
    arch = mod.architecture
    assert (arch.n_layer, arch.n_embd, arch.n_head, arch.n_inner) == (1, 128, 4, 512)
    assert arch.activation == "relu" and not arch.tie and mod.batch_size is None
    assert (mod.optimizer.lr, mod.optimizer.weight_decay) == (1e-3, 1.0)
    assert mod.task.train_fraction == 0.3 and mod.loss_float64
    mul = load_recipe("mul-3d")
    assert (mul.architecture.n_layer, mul.architecture.n_head, mul.architecture.n_embd) == (
        2,
        4,
        128,
    )


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="add-5d"):
        load_recipe("add-7d")


def test_lr_schedule():
    r = load_recipe("add-5d").model_copy(update={"steps": 100})
    r = r.model_copy(update={"schedule": r.schedule.model_copy(update={"warmup_steps": 10})})
    f = [lr_factor(s, r) for s in range(100)]
    assert f[0] == pytest.approx(0.01 + 0.99 / 10)
    assert f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # cosine decays monotonically
    assert f[-1] < 0.01
    m = load_recipe("modadd-113")
    assert [lr_factor(s, m) for s in (0, 4, 9, 500)] == pytest.approx([0.1, 0.5, 1.0, 1.0])


def _state(path):
    tensors = load_file(str(path / "_train_state" / "tensors.safetensors"))
    info = json.loads((path / "_train_state" / "state.json").read_text())
    return tensors, info


def test_resume_is_exact(tmp_path):
    recipe = shrunk("add-5d", steps=13, every=100, checkpoint_every=100)
    once, twice = tmp_path / "once", tmp_path / "twice"
    train(recipe, once, stop_at=12, progress=False)
    train(recipe, twice, stop_at=6, progress=False)
    assert _state(twice)[1]["step"] == 6
    train(recipe, twice, stop_at=12, progress=False)
    (t1, i1), (t2, i2) = _state(once), _state(twice)
    assert i1["step"] == i2["step"] == 12
    assert i1["numpy_rng"] == i2["numpy_rng"]
    assert t1.keys() == t2.keys()
    assert any(k.startswith("optim.") for k in t1)
    for k in t1:
        assert torch.equal(t1[k], t2[k]), k


def test_resume_refuses_another_recipe(tmp_path):
    train(shrunk("add-5d", steps=5, every=100), tmp_path, stop_at=2, progress=False)
    with pytest.raises(ConfigError, match="different recipe"):
        train(shrunk("add-5d", steps=5, every=100, seed=3), tmp_path, stop_at=4, progress=False)


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a zoo model"):
        train(shrunk("add-5d", steps=2), tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _check_hf_dir(path):
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (path / f).is_file(), f
    model = GPT2LMHeadModel.from_pretrained(path, use_safetensors=True)
    cfg = model.config
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    return model, AutoTokenizer.from_pretrained(path)


def test_full_modadd_run_writes_model_card_and_checkpoints(tmp_path):
    recipe = shrunk("modadd-113", steps=30, every=10, snapshot_every=10, early_stop=None)
    out = train(recipe, tmp_path / "m", progress=False)
    assert not (out / "_train_state").exists() and not (out / "_snapshots").exists()
    model, tok = _check_hf_dir(out)
    assert not model.config.tie_word_embeddings and model.config.activation_function == "relu"
    assert tok("5 7 =")["input_ids"] == [5, 7, 113]
    card = json.loads((out / "card.json").read_text())
    assert card["name"] == "modadd-113" and card["steps"] == 30 and card["seed"] == 0
    assert card["metrics"]["train"]["n"] == 3830 and card["metrics"]["test"]["n"] == 12769 - 3830
    assert card["headline"]["metric"] == "test_accuracy"
    for key in ("wall_time_s", "device", "torch_version", "transformers_version", "recipe"):
        assert key in card
    assert "## Accuracy" in (out / "README.md").read_text()
    phases = [c["phase"] for c in card["checkpoints"]]
    assert len(phases) == 4 and phases[-1] == "final"
    assert set(phases[:-1]) <= {"memorised", "circuit formation", "cleanup", "training"}
    for c in card["checkpoints"]:
        ckpt = out / "checkpoints" / f"step-{c['step']}"
        _check_hf_dir(ckpt)
        assert (
            json.loads((ckpt / "metrics.json").read_text())["test_accuracy"] == c["test_accuracy"]
        )


def test_full_addition_run_reports_classes_and_digits(tmp_path):
    out = train(shrunk("add-5d-1L", steps=5, every=100), tmp_path / "a", progress=False)
    _check_hf_dir(out)
    m = json.loads((out / "card.json").read_text())["metrics"]
    assert list(m["by_class"]) == ["S0", "S1", "S2", "S3", "S4", "S5"]
    assert len(m["uniform"]["per_token"]) == 6 and m["uniform"]["n"] == 500


def _modadd_model(seed: int = 0):
    recipe = load_recipe("modadd-113")
    fmt = TaskFormat.from_task(recipe.task)
    torch.manual_seed(seed)
    return build_model(recipe, build_tokenizer_for(fmt)), fmt


@pytest.mark.parametrize("seed", [0, 1])
def test_lean_forward_equals_hf_last_position(seed):
    model, fmt = _modadd_model(seed)
    with torch.no_grad():  # weights of a trained scale, not just the 0.02 init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    train_pairs, _ = split_pairs(113, 0.3, seed)
    ids = torch.from_numpy(fmt.prompt_ids(train_pairs[:, 0], train_pairs[:, 1]))
    model.eval()
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1]
        lean = lean_last_logits(model, ids)
    # float32 agreement relative to the logits' scale: a norm: centre model does not
    # normalise, so these perturbed weights give logits in the thousands.
    scale = max(1.0, float(full.abs().max()))
    torch.testing.assert_close(lean, full, atol=1e-5 * scale, rtol=1e-5)


def test_lean_forward_gradients_reach_the_hf_parameters():
    model, fmt = _modadd_model()
    ids = torch.tensor([[1, 2, 113], [5, 7, 113]])
    lean_last_logits(model, ids).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_lean_forward_is_one_layer_only():
    recipe = load_recipe("add-5d")
    model = build_model(recipe, build_tokenizer_for(TaskFormat.from_task(recipe.task)))
    with pytest.raises(ValueError, match="1 layer"):
        lean_last_logits(model, torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("name", ["add-5d", "modadd-113"])
def test_zoo_format_loads_in_transformer_lens(name, tmp_path):
    """The zoo's HF directories boot in TransformerLens 4.x with the same logits."""
    bridge = pytest.importorskip("transformer_lens.model_bridge")
    recipe = load_recipe(name)
    fmt = TaskFormat.from_task(recipe.task)
    tok = build_tokenizer_for(fmt)
    torch.manual_seed(0)
    model = build_model(recipe, tok).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ids = torch.from_numpy(fmt.prompt_ids([12, 100], [67, 89]))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = bridge.TransformerBridge.boot_transformers(str(tmp_path), device="cpu")(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_centre_norm_recipes_build_linear_layernorms_at_the_papers_init_scale():
    """``norm: centre`` (modadd-113, after Nanda et al.'s LayerNorm-free model): every
    LayerNorm computes x - mean(x) to within var / (2 eps), and weights start at std
    1/sqrt(d_model), in a plain HF GPT-2 checkpoint."""
    from arithinterp.zoo.recipe import CENTRE_EPS

    model, _ = _modadd_model(seed=0)
    assert model.config.layer_norm_epsilon == CENTRE_EPS
    x = torch.randn(64, model.config.n_embd) * 3.0  # var 9: relative deviation ~ 9 / 2e6
    centred = x - x.mean(-1, keepdim=True)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3  # ln_1, ln_2, ln_f
    for norm in norms:
        torch.testing.assert_close(norm(x), centred, atol=1e-4, rtol=1e-5)
    std = float(model.transformer.wte.weight.std())
    assert abs(std - 1 / model.config.n_embd**0.5) < 0.01


def _literal_c_hat(a: int, b: int, n: int) -> list[int]:
    """Bai et al.'s running sums, schoolbook: column sums of digit products plus carries."""
    da = [(a // 10**i) % 10 for i in range(n)]
    db = [(b // 10**i) % 10 for i in range(n)]
    out, prev = [], 0
    for k in range(2 * n):
        s = sum(da[i] * db[k - i] for i in range(n) if 0 <= k - i < n)
        prev = s + prev // 10
        out.append(prev)
    return out


@pytest.mark.parametrize("order", ["lsd", "msd"])
def test_aux_targets_are_the_running_sums_of_each_answer_position(order):
    from arithinterp.zoo.train import _Batches

    recipe = load_recipe("mul-3d-aux")
    recipe = recipe.model_copy(update={"task": recipe.task.model_copy(update={"answer_order": order})})
    fmt = TaskFormat.from_task(recipe.task)
    ids, answers, aux = _Batches(recipe, fmt, np.random.default_rng(0)).next()
    for row, ans, target in zip(ids, answers, aux):
        a = int("".join(map(str, row[:3].tolist())))
        b = int("".join(map(str, row[4:7].tolist())))
        c_hat = _literal_c_hat(a, b, 3)
        if order == "msd":
            c_hat = c_hat[::-1]  # answer position 0 writes the most significant digit
        assert target.tolist() == c_hat
        assert [c % 10 for c in c_hat] == ans.tolist()


def test_aux_loss_trains_a_head_and_ships_a_plain_gpt2(tmp_path):
    recipe = shrunk("mul-3d-aux", steps=12, every=100, checkpoint_every=100)
    once, twice = tmp_path / "once", tmp_path / "twice"
    train(recipe, once, stop_at=10, progress=False)
    train(recipe, twice, stop_at=5, progress=False)
    train(recipe, twice, stop_at=10, progress=False)
    (t1, _), (t2, _) = _state(once), _state(twice)
    assert "param.aux.head.weight" in t1 and any(k.startswith("optim.aux.") for k in t1)
    for k in t1:  # resume is exact with the auxiliary head too
        assert torch.equal(t1[k], t2[k]), k
    out = train(recipe, once, progress=False)
    model, _ = _check_hf_dir(out)
    plain = build_model(recipe, build_tokenizer_for(TaskFormat.from_task(recipe.task)))
    assert model.state_dict().keys() == plain.state_dict().keys()  # no auxiliary weights shipped
    card = json.loads((out / "card.json").read_text())
    assert card["recipe"]["aux_loss"]["weight"] == 1.0
    assert card["cpu_time_s"] > 0 and "s of CPU time" in (out / "README.md").read_text()


def test_aux_loss_learns_the_running_sums(tmp_path):
    """With only the auxiliary loss weighted heavily, the head's error on c^_k falls."""
    from arithinterp.zoo.train import _AuxHead, _Batches

    recipe = shrunk("mul-3d-aux", steps=1)
    fmt = TaskFormat.from_task(recipe.task)
    torch.manual_seed(0)
    model = build_model(recipe, build_tokenizer_for(fmt))
    head = _AuxHead(model, recipe, fmt)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    batches = _Batches(recipe, fmt, np.random.default_rng(0))
    losses = []
    for _ in range(60):
        ids, _, aux = batches.next()
        model(input_ids=ids)
        loss = head.loss(aux)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.remove()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), (losses[:5], losses[-10:])


def test_subtraction_run_reports_borrow_classes(tmp_path):
    out = train(shrunk("sub-5d", steps=4, every=100), tmp_path / "s", progress=False)
    _check_hf_dir(out)
    card = json.loads((out / "card.json").read_text())
    m = card["metrics"]
    assert list(m["by_class"]) == ["B0", "B1", "B2", "B3", "B4"]  # B5 needs 6 digits
    assert list(m["uniform_by_class"]) == ["B0", "B1", "B2", "B3", "B4", "B5"]
    assert len(m["uniform"]["per_token"]) == 6
    assert card["format"]["example_prompt"] == "12345-67890=" and card["format"]["example_answer"] == "-55545"
    assert "borrow-cascade class" in (out / "README.md").read_text()


def test_ops_tok_run_reports_every_operator(tmp_path):
    out = train(shrunk("ops-2d-tok", steps=4, every=100), tmp_path / "o", progress=False)
    model, tok = _check_hf_dir(out)
    card = json.loads((out / "card.json").read_text())
    by_op = card["metrics"]["by_operator"]
    assert list(by_op["test"]) == ["add", "sub", "mul", "floordiv"]
    assert sum(v["n"] for v in by_op["train"].values()) == card["metrics"]["train"]["n"]
    assert card["format"]["examples"]["floordiv"] == ["37/8=", "4"]
    assert tok("31*29=")["input_ids"] == [31, 1003, 29, 1000]


def test_train_refuses_the_package_zoo_unless_asked(tmp_path, monkeypatch):
    from arithinterp.zoo import registry

    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path / "zoo")
    with pytest.raises(ConfigError, match="into_package"):
        train(shrunk("add-5d", steps=2), tmp_path / "zoo" / "add-5d", progress=False)
    assert not (tmp_path / "zoo").exists()
    out = train(shrunk("add-5d", steps=2, every=100), tmp_path / "zoo" / "add-5d",
                progress=False, into_package=True)
    assert (out / "card.json").is_file()
