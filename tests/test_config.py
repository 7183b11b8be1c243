"""Recipes: packaged recipes, base inheritance, overrides, field errors, ranges, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tympan.config import (
    Recipe,
    TaskConfig,
    load_recipe,
    merge_options,
    packaged_recipes,
    save_recipe,
)
from tympan.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# packaged recipes and inheritance


def test_every_packaged_recipe_loads() -> None:
    names = packaged_recipes()
    assert {"simclr", "demo"} <= set(names)
    for name in names:
        r = load_recipe(name)
        assert isinstance(r, Recipe)
        assert r.name == name
        assert len(r.tasks) >= 1 and all(isinstance(t, TaskConfig) for t in r.tasks)


def test_simclr_recipe_values() -> None:
    r = load_recipe("simclr")
    assert r.method == "simclr"
    assert r.frontend.n_mels == 128 and r.frontend.n_fft == 1024 and r.frontend.hop_length == 512
    assert r.augment.ops == ["fade", "white_noise", "time_mask", "time_shift"]
    assert r.augment.params["white_noise"] == {"snr_db": [3, 30]}
    assert r.tasks[0].name == "contrastive" and r.tasks[0].objective == "nt_xent"
    assert r.tasks[0].params == {"temperature": 0.1}
    assert r.train.max_steps == 10000 and r.train.warmup_steps == 200
    assert isinstance(r.train.weight_decay, float) and r.train.weight_decay == pytest.approx(1e-6)
    # fields the recipe does not name keep their dataclass defaults
    assert r.train.precision == "auto" and r.fewshot.readout_max_iter == 50


def test_demo_extends_simclr() -> None:
    base, demo = load_recipe("simclr"), load_recipe("demo")
    assert demo.name == "demo"
    # what demo changes
    assert demo.model.width == 16 and base.model.width == 64
    assert demo.audio.clip_seconds == 1.0 and base.audio.clip_seconds == 2.0
    assert demo.train.max_steps == 1000 and demo.train.warmup_steps == 30
    assert demo.train.num_workers == 1
    # what it inherits, including siblings of changed fields inside the same section
    assert demo.audio.sample_rate == base.audio.sample_rate == 16000
    assert demo.model.arch == base.model.arch == "resnet18"
    assert demo.train.lr == base.train.lr and demo.train.weight_decay == base.train.weight_decay
    assert demo.method == base.method
    assert demo.frontend == base.frontend
    assert demo.augment == base.augment
    assert demo.tasks == base.tasks
    assert demo.fewshot == base.fewshot


def test_user_recipe_with_packaged_base(tmp_path: Path) -> None:
    p = _write(tmp_path / "mine.yaml", "base: demo\nname: mine\ntrain:\n  lr: 0.01\n")
    r = load_recipe(p)
    assert r.name == "mine" and r.train.lr == 0.01
    assert r.model.width == 16  # from demo
    assert r.train.max_steps == 1000  # from demo
    assert r.frontend.n_mels == 128  # from simclr, two levels up
    assert load_recipe(str(p)) == r  # a str path works as well as a Path


def test_base_chain_of_files_and_loops(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    _write(b, "base: simclr\nname: b\nmodel:\n  width: 8\n")
    _write(a, f"base: {b}\nname: a\ntrain:\n  batch_size: 4\n")
    r = load_recipe(a)
    assert (r.name, r.model.width, r.train.batch_size, r.train.max_steps) == ("a", 8, 4, 10000)
    _write(b, f"base: {a}\nname: b\n")  # a -> b -> a
    with pytest.raises(ConfigError, match="loop"):
        load_recipe(a)


def test_unknown_base_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="simclr"):  # lists the packaged recipes
        load_recipe({"base": "no_such_recipe"})
    with pytest.raises(ConfigError, match="no_such_recipe"):
        load_recipe("no_such_recipe")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="YAML"):
        load_recipe(_write(tmp_path / "bad.yaml", "train: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_empty_recipe_is_all_defaults(tmp_path: Path) -> None:
    assert load_recipe(_write(tmp_path / "empty.yaml", "")) == Recipe()
    assert load_recipe({}) == Recipe()


# ---------------------------------------------------------------------------------------------
# overrides


def test_nested_and_dotted_overrides_agree() -> None:
    nested = load_recipe("simclr", {"train": {"max_steps": 7, "lr": 0.5}, "model": {"width": 8}})
    dotted = load_recipe("simclr", {"train.max_steps": 7, "train.lr": 0.5, "model.width": 8})
    assert nested == dotted
    assert dotted.train.max_steps == 7 and dotted.train.lr == 0.5 and dotted.model.width == 8
    # siblings of overridden fields are kept
    assert dotted.train.warmup_steps == 200 and dotted.model.arch == "resnet18"


def test_deep_dotted_override_and_override_on_top_of_base() -> None:
    r = load_recipe("demo", {"augment.params.white_noise.snr_db": [10, 20], "train.max_steps": 3})
    assert r.augment.params["white_noise"] == {"snr_db": [10, 20]}
    assert r.augment.params["fade"]["max_in"] == 0.5  # other ops untouched
    assert r.train.max_steps == 3 and r.model.width == 16
    # overrides are not sticky: the next load is unaffected
    assert load_recipe("demo").train.max_steps == 1000


def test_overrides_do_not_mutate_a_dict_recipe() -> None:
    data = {"train": {"max_steps": 5}}
    load_recipe(data, {"train.max_steps": 9})
    assert data == {"train": {"max_steps": 5}}


def test_unknown_fields_name_their_dotted_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'train\.max_stepz'"):
        load_recipe("simclr", {"train.max_stepz": 10})
    with pytest.raises(ConfigError, match=r"'train\.max_stepz'"):
        load_recipe(_write(tmp_path / "typo.yaml", "base: simclr\ntrain:\n  max_stepz: 10\n"))
    with pytest.raises(ConfigError, match=r"'trian'"):
        load_recipe("simclr", {"trian": {"max_steps": 10}})
    with pytest.raises(ConfigError, match=r"'tasks\[0\]\.objectiv'"):
        load_recipe({"tasks": [{"name": "c", "objectiv": "nt_xent"}]})
    with pytest.raises(ConfigError, match=r"'frontend\.n_mel'"):
        load_recipe({"frontend": {"n_mel": 64}})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"train.batch_size": "a"}, "train.batch_size"),
        ({"train.batch_size": 2.5}, "train.batch_size"),
        ({"train.max_steps": True}, "train.max_steps"),  # a bool is not an int
        ({"train.lr": "fast"}, "train.lr"),
        ({"train.lr": True}, "train.lr"),
        ({"frontend.normalize": "yes"}, "frontend.normalize"),
        ({"frontend.f_max": "high"}, "frontend.f_max"),
        ({"train.devices": 2.5}, "train.devices"),
        ({"augment.ops": "fade"}, "augment.ops"),
        ({"augment.ops": ["fade", 3]}, r"augment.ops\[1\]"),
        ({"train": 5}, "train"),
        ({"tasks": {"name": "x"}}, "tasks"),
        ({"name": 3}, "name"),
    ],
)
def test_wrong_types_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{field}'"):
        load_recipe("simclr", overrides)


def test_wrong_type_in_a_yaml_file_names_the_field(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.yaml", 'train:\n  batch_size: "a"\n')
    with pytest.raises(ConfigError, match=r"'train\.batch_size'"):
        load_recipe(p)


def test_accepted_type_conversions() -> None:
    r = load_recipe("simclr", {"train.lr": 1, "frontend.f_max": 8000, "train.devices": 2})
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float)
    assert r.frontend.f_max == 8000.0 and isinstance(r.frontend.f_max, float)
    assert r.train.devices == 2
    assert load_recipe("simclr", {"train.devices": "auto"}).train.devices == "auto"
    assert load_recipe("simclr", {"frontend.f_max": None}).frontend.f_max is None
    assert load_recipe("simclr", {"augment.max_ops": None}).augment.max_ops is None


def test_exponent_floats_in_yaml_are_numbers(tmp_path: Path) -> None:
    """``lr: 3e-4`` is how ML recipes are written, and the README/CLI help advertise
    ``--set train.lr=3e-4``. PyYAML (YAML 1.1) reads ``3e-4`` as the *string* '3e-4' (it wants
    ``3.0e-4``), so a float field must accept it."""
    p = _write(tmp_path / "lr.yaml", "base: simclr\ntrain:\n  lr: 3e-4\n  weight_decay: 1e-5\n")
    r = load_recipe(p)
    assert r.train.lr == pytest.approx(3e-4) and isinstance(r.train.lr, float)
    assert r.train.weight_decay == pytest.approx(1e-5)
    # the CLI parses each --set value with yaml.safe_load
    r = load_recipe("simclr", {"train.lr": yaml.safe_load("3e-4")})
    assert r.train.lr == pytest.approx(3e-4)


# ---------------------------------------------------------------------------------------------
# range checks


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"audio.sample_rate": 0}, "audio.sample_rate"),
        ({"audio.clip_seconds": 0.0}, "audio.clip_seconds"),
        ({"audio.clip_seconds": -1.0}, "audio.clip_seconds"),
        ({"frontend.channels": 2}, "frontend.channels"),
        ({"frontend.hop_length": 0}, "hop_length"),
        ({"frontend.n_fft": -1}, "n_fft"),
        ({"frontend.n_mels": 0}, "n_mels"),
        ({"model.width": 3}, "model.width"),
        ({"tasks": []}, "tasks"),
        ({"tasks": [{"name": "a"}, {"name": "a"}]}, "tasks"),
        ({"augment.min_ops": -1}, "augment.min_ops"),
        ({"augment.min_ops": 3, "augment.max_ops": 2}, "augment.max_ops"),
        ({"augment.max_ops": 5}, "augment.max_ops"),  # only 4 ops
        ({"train.batch_size": 1}, "train.batch_size"),
        ({"train.max_steps": 0}, "train.max_steps"),
        ({"train.lr": 0.0}, "train.lr"),
        ({"train.lr": -1e-3}, "train.lr"),
        ({"fewshot.segment_seconds": 0.0}, "fewshot.segment_seconds"),
    ],
)
def test_range_checks_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_recipe("simclr", overrides)


def test_range_boundaries_are_accepted() -> None:
    r = load_recipe(
        "simclr",
        {"train.batch_size": 2, "train.max_steps": 1, "model.width": 4, "frontend.channels": 3,
         "augment.min_ops": 4, "augment.max_ops": 4},
    )
    assert (r.train.batch_size, r.train.max_steps, r.model.width) == (2, 1, 4)
    assert load_recipe("simclr", {"augment.min_ops": 0, "augment.max_ops": 0}).augment.max_ops == 0


def test_min_ops_above_the_number_of_ops_is_refused() -> None:
    """With ``max_ops`` left at None (= len(ops)), ``min_ops`` must still be <= len(ops);
    otherwise the recipe loads and training later dies inside torch.randint."""
    with pytest.raises(ConfigError, match=r"augment\.(min|max)_ops"):
        load_recipe("simclr", {"augment.min_ops": 5})


# ---------------------------------------------------------------------------------------------
# round trip


@pytest.mark.parametrize("name", packaged_recipes())
def test_save_then_load_round_trips(name: str, tmp_path: Path) -> None:
    r = load_recipe(name)
    path = tmp_path / "config.yaml"
    save_recipe(r, path)
    again = load_recipe(path)
    assert again == r
    # the saved file is the resolved recipe: every section written out, no 'base'
    data = yaml.safe_load(path.read_text())
    assert "base" not in data
    assert set(data) == {f for f in Recipe().to_dict()}
    assert data["fewshot"]["readout_max_iter"] == 50


def test_round_trip_of_a_customised_recipe(tmp_path: Path) -> None:
    r = load_recipe(
        "demo",
        {"frontend.f_max": 7000, "frontend.channels": 3, "train.devices": 2, "augment.max_ops": 2,
         "augment.ops": ["fade", "time_shift"],
         "augment.params": {"fade": {"shapes": ["log"]}, "time_shift": {"max_ratio": 0.25}},
         "tasks": [{"name": "c", "weight": 0.5, "head": {"out_dim": 64}, "params": {"temperature": 0.2}}],
         "train.weight_decay": 1.0e-7},
    )
    path = tmp_path / "custom.yaml"
    save_recipe(r, path)
    again = load_recipe(path)
    assert again == r
    assert again.augment.ops == ["fade", "time_shift"] and again.augment.max_ops == 2
    assert again.augment.params["fade"]["shapes"] == ["log"]
    assert again.augment.params["time_shift"] == {"max_ratio": 0.25}
    assert again.frontend.f_max == 7000.0 and again.train.devices == 2
    assert again.tasks == [TaskConfig(name="c", weight=0.5, head={"out_dim": 64}, params={"temperature": 0.2})]
    assert again.train.weight_decay == pytest.approx(1e-7)


# ---------------------------------------------------------------------------------------------
# merge_options


def test_merge_options() -> None:
    defaults = {"hidden_dim": 512, "out_dim": 128, "num_layers": 2}
    given = {"out_dim": 64}
    merged = merge_options(defaults, given, "tasks[0].head")
    assert merged == {"hidden_dim": 512, "out_dim": 64, "num_layers": 2}
    assert defaults["out_dim"] == 128 and given == {"out_dim": 64}  # inputs untouched
    assert merge_options(defaults, {}, "x") == defaults
    with pytest.raises(ConfigError, match=r"'tasks\[0\]\.head\.out_dims'"):
        merge_options(defaults, {"out_dims": 64}, "tasks[0].head")
    with pytest.raises(ConfigError, match="hidden_dim"):  # the message lists the known keys
        merge_options(defaults, {"bogus": 1}, "h")
