import json
from dataclasses import fields

import pytest

import armodels
from armodels.train import ModelCosts
from pipelines.config import PRESETS_DIR, TrainingConfig, load_config
from pipelines.errors import ManyProblems, UserError
from pipelines.plan import build_steps, token_budget, train_configs
from pipelines.step import topological_order


def write(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return str(path)


MINIMAL = "name: s\nmodels:\n  grids: [{family: transformer, sizes: [{n_layer: 1, n_embd: 16, n_head: 2}]}]\n"


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_presets_are_valid(preset):
    cfg, path = load_config(preset)
    assert path.parent == PRESETS_DIR and cfg.models.grids


def test_default_study_is_designed_for_the_fit():
    """Compute-optimal runs (20 tokens per parameter, no caps: distinct tokens per size) spanning over 30x in
    compute, seeds to measure noise, and a confirmation run at 4x."""
    cfg, _ = load_config(None)
    runs = [t.run(".") for t in train_configs(cfg)]
    compute = sorted({r.flops(cfg.fit.convention) for r in runs})
    assert len(compute) >= 6 and compute[-1] / compute[0] >= 30
    assert all(t.train.tokens == int(20 * r.costs().params) for t, r in zip(train_configs(cfg), runs))
    assert len(runs) > len(compute)  # extra seeds
    assert cfg.fit.confirm >= 4 and cfg.fit.convention == "per_layer"


def test_token_budget_rule(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "training:\n  min_tokens: 500000\n  max_tokens: 2000000\n"))[0]
    grid = cfg.models.grids[0]
    small, big = ModelCosts(49_344, 12_480, 1.0), ModelCosts(936_000, 788_736, 1.0)
    assert token_budget(cfg, grid, small, None) == 500_000  # 20 × 12.5k = 250k, raised to min_tokens
    assert token_budget(cfg, grid, big, None) == 2_000_000  # capped at max_tokens
    assert token_budget(cfg, grid, big, 123) == 123
    uncapped = load_config(write(tmp_path, MINIMAL))[0]  # no caps by default
    assert token_budget(uncapped, grid, big, None) == 20 * 788_736
    total = load_config(write(tmp_path, MINIMAL + "training:\n  tokens_per_param_of: total\n"))[0]
    assert token_budget(total, grid, small, None) == 20 * 49_344
    # a grid's own ratio overrides training's, for that grid only
    per_grid = load_config(write(tmp_path, MINIMAL.replace("{family:", "{tokens_per_param: 100, family:")))[0]
    assert token_budget(per_grid, per_grid.models.grids[0], big, None) == 100 * 788_736
    assert token_budget(per_grid, grid, big, None) == 20 * 788_736


@pytest.mark.parametrize("text, message", [
    (MINIMAL + "training:\n  lrr: 0.1\n", r"training\.lrr: unknown key \(did you mean lr\?\)"),
    (MINIMAL + "evaluation: {sampels: 2}\n", r"evaluation\.sampels: unknown key \(did you mean samples\?\); the "
                                              r"keys here: max_tokens, samples,"),
    (MINIMAL + "colour: blue\n", r"^config .*: colour: unknown key; the keys here: name, seed, corpus"),
    (MINIMAL.replace("n_embd", "n_embed"), r"sizes\.0\.n_embed: transformer has no such field \(did you mean "
                                           r"n_embd\?\)"),
    (MINIMAL.replace("family: transformer", "family: transfomer"),
     r"models\.grids\.0\.family: unknown family 'transfomer' \(did you mean transformer\?\); one of "),
    (MINIMAL + "training:\n  lr: fast\n", r"training\.lr: Input should be a valid number.*'fast'"),
    (MINIMAL + "training:\n  lr: -1\n", r"training\.lr: Input should be greater than 0"),
    (MINIMAL + "tokenizer:\n  vocab_size: 100\n",
     r"tokenizer\.vocab_size: with tokenizer\.kind bpe, 100 is too small: byte-level BPE needs at least 258"),
    (MINIMAL + "tokenizer:\n  kind: word\n  vocab_size: 2\n",
     r"tokenizer\.vocab_size: with tokenizer\.kind word, 2 is too small: a word-level tokenizer needs at least 3"),
    (MINIMAL + "tokenizer:\n  kind: char\n  vocab_size: 2000000\n",
     r"tokenizer\.vocab_size: Input should be less than or equal to 1000000"),
    (MINIMAL + "tokenizer:\n  kind: chars\n", r"tokenizer\.kind: Input should be 'bpe', 'char' or 'word'"),
    (MINIMAL.replace("family: transformer", "family: transformer, stream: char"),
     r"models\.grids\.0\.stream: 'char' needs text_tokenizers\.char \(its vocab_size and train_bytes\)"),
    (MINIMAL + "text_tokenizers:\n  char: {kind: word}\n",
     r"text_tokenizers\.char\.kind: is 'word' under the key 'char'; leave it out"),
    (MINIMAL + "text_tokenizers:\n  word: {vocab_size: 2}\n",
     r"text_tokenizers\.word\.vocab_size: with tokenizer\.kind word, 2 is too small"),
    (MINIMAL + "text_tokenizers:\n  chars: {}\n", r"text_tokenizers\.chars.*Input should be 'bpe', 'char' or 'word'"),
    ("name: s\nmodels:\n  grids: [{sizes: [{n_layer: 1, n_embd: 30, n_head: 4}]}]\n",
     r"models\.grids\.0\.sizes\.0: n_embd \(30\) must be a multiple of n_head \(4\)"),
    ("name: s\nmodels:\n  grids: [{family: rnn, sizes: [{hiden: 8}]}]\n",
     r"models\.grids\.0\.sizes\.0\.hiden: rnn has no such field \(did you mean hidden\?\); its fields: cell, "),
    ("name: s\nmodels:\n  grids: [{sizes: [{n_layer: 1, name: ../../escape}]}]\n",
     r"sizes\.0\.name: '\.\./\.\./escape' names a folder"),
    ("name: ../up\nmodels:\n  grids: [{sizes: [{n_layer: 1}]}]\n", r"name: String should match pattern"),
    ("name: s\nmodels:\n  grids: [{sizes: [{seq_len: 8}]}]\n", r"sizes\.0\.seq_len: set by the study"),
    ("name: s\n", r"models: Field required"),
    ("name: s\nmodels: {sizes: [}\n", r"not valid YAML at line 2"),
    ("- a\n- b\n", r"must be a YAML mapping"),
])
def test_bad_configs_give_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as e:
        load_config(write(tmp_path, text))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("family, size", [("made", "{}"), ("pixelcnn", "{channels: 4}")])
def test_image_families_need_an_image_stream(tmp_path, family, size):
    """A family that models images (height × width) in a grid of token streams: one line naming the grid."""
    text = f"name: s\nmodels:\n  grids: [{{family: {family}, sizes: [{size}]}}]\n"
    with pytest.raises(UserError, match=rf"models\.grids\.0: {family} models images") as e:
        load_config(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_missing_config_names_the_presets():
    with pytest.raises(UserError, match="config nope.yaml not found.*text-default"):
        load_config("nope.yaml")
    with pytest.raises(UserError, match=r"config text-tny not found \(did you mean text-tiny\?\)"):
        load_config("text-tny")


def test_changing_one_field_changes_only_downstream_hashes(tmp_path):
    base, _ = load_config("text-tiny")
    changed = base.model_copy(update={"evaluation": base.evaluation.model_copy(update={"samples": 2})})
    before = {s.name: s.hash for s in topological_order(build_steps(base))}
    after = {s.name: s.hash for s in topological_order(build_steps(changed))}
    differ = {n for n in before if before[n] != after[n]}
    assert differ == {n for n in before if n.startswith("eval-")} | {"fit", "report"}


def test_tokenizer_kind_is_an_added_setting_that_changes_only_the_tokenizer_and_after(tmp_path):
    """Studies made before tokenizer.kind keep their hashes; a char or word tokenizer is a study of its own, which
    a vocabulary below BPE's 258 suits."""
    from pipelines.step import config_dict

    base, _ = load_config("text-tiny")
    steps = {s.name: s for s in topological_order(build_steps(base))}
    assert config_dict(steps["tokenizer"].config) == {"vocab_size": 300, "train_bytes": 500_000}
    assert "kind" not in base.stable_dump()["tokenizer"] and base.tokenizer.kind == "bpe"
    for kind in ("char", "word"):
        cfg, _ = load_config("text-tiny", [f"tokenizer.kind={kind}", "tokenizer.vocab_size=100"])
        changed = {s.name: s for s in topological_order(build_steps(cfg))}
        assert changed["tokenizer"].config.kind == kind
        assert changed["tokenizer"].describe == f"{'character' if kind == 'char' else 'word'}-level, vocab 100"
        assert changed["corpus"].hash == steps["corpus"].hash
        assert all(changed[n].hash != steps[n].hash for n in steps if n != "corpus")


def test_an_isoflop_grid_trains_every_size_at_every_budget():
    cfg, _ = load_config("text-isoflop-tiny")
    runs = train_configs(cfg)
    budgets = cfg.training.flops_budgets
    assert len(runs) == len(budgets) * len(cfg.models.grids[0].sizes) and len({r.name for r in runs}) == len(runs)
    for r in runs:
        run = r.run("shards")
        spent = run.flops("6ND")
        assert any(abs(spent / c - 1) < 0.05 for c in budgets), (r.name, spent)  # whole batches round it up
    fit_step = next(s for s in build_steps(cfg)[0].inputs.values() if s.name == "fit")
    assert fit_step.config.isoflop


def settable_fields(family: str) -> str:
    set_by_study = armodels.fields_set_by_study(family)
    return ", ".join(sorted(f.name for f in fields(armodels.family_classes(family)[1]) if f.name not in set_by_study))


def test_every_problem_of_a_config_is_listed_at_once(tmp_path):
    """Problems in several sections and several sizes: one headline with the count, then one line each."""
    text = ("name: s\nmodels:\n  grids:\n"
            "    - {family: transformer, sizes: [{n_layer: 1, n_embd: 16, n_head: 2}, {n_layer: 2, n_embed: 32},"
            " {n_layer: 1, n_embd: 30, n_head: 4}]}\n"
            "    - {family: rnn, sizes: [{hiden: 8}, {hidden: 8, seeds: 0}]}\n"
            "training: {lrr: 0.001, batch_size: many}\n")
    with pytest.raises(ManyProblems) as e:
        load_config(write(tmp_path, text))
    assert e.value.headline == f"config {tmp_path / 'study.yaml'}: 6 problems:"
    assert e.value.problems == [
        "models.grids.0.sizes.1.n_embed: transformer has no such field (did you mean n_embd?); its fields: "
        + settable_fields("transformer"),
        "models.grids.0.sizes.2: n_embd (30) must be a multiple of n_head (4)",
        "models.grids.1.sizes.0.hiden: rnn has no such field (did you mean hidden?); its fields: "
        + settable_fields("rnn"),
        "models.grids.1.sizes.1.seeds: must be a whole number of seeds, 1 or more (got 0)",
        "training.batch_size: Input should be a valid integer, unable to parse string as an integer (got 'many')",
        "training.lrr: unknown key (did you mean lr?); the keys here: " + ", ".join(TrainingConfig.model_fields),
    ]
    assert str(e.value).splitlines()[1:] == [f"  {p}" for p in e.value.problems]
    # a section's checks across its keys run once the keys are valid, and list every problem too
    with pytest.raises(ManyProblems, match=r"2 problems:\n  training: min_tokens 9 exceeds max_tokens 3\n  "
                                           r"training\.lr_sweep: has a learning rate twice"):
        load_config(write(tmp_path, MINIMAL + "training: {min_tokens: 9, max_tokens: 3, lr_sweep: [0.1, 0.1]}\n"))


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path):
    """PyYAML reads `1e-3` as a string (YAML 1.1 wants a dot); configs read it as the number people mean, also
    where no pydantic field would convert it (a size's own lr); a quoted one stays a string."""
    cfg, _ = load_config(write(tmp_path, MINIMAL.replace("n_head: 2}", "n_head: 2, lr: 1e-3}")
                               + "training: {lr: 2E-3, flops_budgets: [1e12, 3.5e+12]}\nname: '1e5'\n"))
    assert cfg.models.grids[0].sizes[0]["lr"] == 0.001 and cfg.training.lr == 0.002
    assert cfg.training.flops_budgets == [1e12, 3.5e12] and cfg.name == "1e5"


def test_a_study_of_several_text_tokenizers_plans_a_stream_each_and_keeps_the_study_tokenizers_hashes(tmp_path):
    """text_tokenizers adds corpus ─► tokenizer-<kind> ─► shards-<kind> for the kinds a grid reads; the study's own
    tokenizer stream ("text") and its runs keep the hashes they had without it."""
    base, _ = load_config("text-tiny")
    grids = [*base.stable_dump()["models"]["grids"],
             {"family": "transformer", "stream": "char", "sizes": [{"n_layer": 1, "n_embd": 8, "n_head": 2}]}]
    cfg, _ = load_config("text-tiny", ["text_tokenizers.char.vocab_size=64", "text_tokenizers.word.vocab_size=500",
                                       f"models.grids={json.dumps(grids)}"])
    assert cfg.text_tokenizers["char"].kind == "char" and cfg.text_tokenizer_for("text") is cfg.tokenizer
    before = {s.name: s.hash for s in topological_order(build_steps(base))}
    steps = {s.name: s for s in topological_order(build_steps(cfg))}
    assert {n for n in steps if n.startswith(("tokenizer", "shards"))} == {
        "tokenizer", "shards", "tokenizer-char", "shards-char"}  # no grid reads the word stream: not planned
    assert steps["tokenizer-char"].config.kind == "char" and steps["tokenizer-char"].config.vocab_size == 64
    assert steps["shards-char"].inputs["tokenizer"] is steps["tokenizer-char"]
    assert all(steps[n].hash == h for n, h in before.items() if n not in ("fit", "report"))
    char_runs = [n for n in steps if n.startswith("train-char-transformer")]
    assert len(char_runs) == 1 and steps[char_runs[0]].config.model["vocab_size"] == 64
    evaluation = steps[char_runs[0].replace("train-", "eval-")]
    assert evaluation.inputs["shards"] is steps["shards-char"] and evaluation.inputs["tokenizer"] is steps[
        "tokenizer-char"]
    assert evaluation.config.text_stream == "char" and evaluation.config.series == "char-transformer"


def test_text_tokenizers_belong_to_text_studies(tmp_path):
    text = ("name: s\nimages: {data: digits, train_images: 10, test_images: 10}\ntext_tokenizers: {char: {}}\n"
            "models:\n  grids: [{family: made, stream: pixels, sizes: [{hidden: [8]}]}]\n")
    with pytest.raises(UserError, match=r"text_tokenizers: text streams need a text study"):
        load_config(write(tmp_path, text))
