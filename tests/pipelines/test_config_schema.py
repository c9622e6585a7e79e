"""`arscale config schema`: the JSON Schema of study configs that editors validate against as you type. It must
accept every preset and reject what load_config rejects by key: unknown keys, and fields a family does not have."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from pipelines.cli import main
from pipelines.config import PRESETS_DIR, ConfigLoader
from tests.support.cli import arscale

jsonschema = pytest.importorskip("jsonschema")  # installed with Ray (not one of arscale's own dependencies)


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    """The schema as the real command writes it."""
    out = tmp_path_factory.mktemp("schema") / "study.schema.json"
    r = arscale("config", "schema", "--out", out)
    assert r.returncode == 0 and "yaml-language-server: $schema=" in r.stdout, r.stderr
    schema = json.loads(out.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def preset(name: str) -> dict:
    return yaml.load((PRESETS_DIR / f"{name}.yaml").read_text(), Loader=ConfigLoader)


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_the_schema_accepts_every_preset(schema, name):
    jsonschema.validate(preset(name), schema)


def wrong(path: list, value, base: str = "text-tiny") -> dict:
    """The preset with `value` put at `path` (a new key or a replaced value)."""
    data = copy.deepcopy(preset(base))
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize("data, where", [
    (wrong(["colour"], "blue"), "colour"),
    (wrong(["training", "lrr"], 0.1), "lrr"),
    (wrong(["models", "grids", 0, "sizes", 0, "n_embed"], 16), "n_embed"),  # a field transformers do not have
    (wrong(["models", "grids", 0, "sizes", 0, "hidden"], 16), "hidden"),  # an rnn's field in a transformer grid
    (wrong(["models", "grids", 0, "family"], "transfomer"), "transfomer"),
    (wrong(["training", "lr"], "fast"), "fast"),
])
def test_the_schema_rejects_what_the_config_would(schema, data, where):
    with pytest.raises(jsonschema.ValidationError, match=where):
        jsonschema.validate(data, schema)


def test_a_size_of_another_family_is_checked_against_that_family(schema):
    data = preset("text-families")
    rnn = next(g for g in data["models"]["grids"] if g["family"] == "rnn")
    rnn["sizes"][0]["hidden"] = 32
    jsonschema.validate(data, schema)  # rnn has `hidden`
    rnn["sizes"][0]["n_head"] = 2
    with pytest.raises(jsonschema.ValidationError, match="n_head"):
        jsonschema.validate(data, schema)


def test_schema_printed_and_its_help_says_how_to_use_it(capsys):
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "StudyConfig"
    with pytest.raises(SystemExit):
        main(["config", "schema", "--help"])
    assert "# yaml-language-server: $schema=" in capsys.readouterr().out
