"""The methods factory (tvrbench.methods): names, configs, a built module, clear errors."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from tvrbench import methods
from tvrbench.methods import MethodConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "method"


def test_docstring_examples():
    assert doctest.testmod(methods, optionflags=doctest.ELLIPSIS).failed == 0


def test_default_methods_are_the_benchmark_six_without_variants():
    assert methods.default_methods(CONFIG_DIR) == list(methods.DEFAULT_METHODS)
    names, unknown = methods.resolve_methods("glccl_no_csc, meanp,nope", CONFIG_DIR)
    assert names == ["glccl_no_csc", "meanp", "nope"] and unknown == ["nope"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(MethodConfigError, match=r"method nope: no config .*nope\.yaml.*glccl"):
        methods.load_method("nope", CONFIG_DIR)


def test_bad_class_path_and_unknown_argument_are_one_line_errors(tmp_path):
    (tmp_path / "ghost.yaml").write_text("model: {class_path: nowhere.Ghost}\n")
    with pytest.raises(MethodConfigError, match="class_path nowhere.Ghost: cannot be imported"):
        methods.create_module("ghost", tmp_path)
    with pytest.raises(MethodConfigError, match="takes no argument not_an_argument"):
        methods.create_module("meanp", CONFIG_DIR, not_an_argument=1)


def test_create_module_builds_every_method_with_the_data_shape():
    from tvrbench.retrieval import RetrievalModule

    for name in methods.DEFAULT_METHODS:
        module = methods.create_module(name, CONFIG_DIR, max_words=16, max_frames=5)
        assert isinstance(module, RetrievalModule), name
    # The data's frame count reaches a method with a frame table; meanP has none.
    glccl = methods.load_method("glccl", CONFIG_DIR).model()
    placed = methods.place_data_shape(glccl, max_words=16, max_frames=5)
    assert placed != glccl and "5" in repr(placed)
    meanp = methods.load_method("meanp", CONFIG_DIR).model()
    assert methods.place_data_shape(meanp, max_words=16, max_frames=5) == meanp


def test_checkpoint_errors_name_the_file(tmp_path):
    module = methods.create_module("meanp", CONFIG_DIR)
    with pytest.raises(MethodConfigError, match="no such file"):
        methods.load_checkpoint_weights(module, tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MethodConfigError, match=r"bad\.ckpt: cannot be loaded"):
        methods.load_checkpoint_weights(module, bad)


def test_the_data_shape_lands_in_the_head_and_arguments_are_checked_per_class():
    glccl = methods.load_method("glccl", CONFIG_DIR).model()
    placed = methods.place_data_shape(glccl, max_words=16, max_frames=5)
    head_args = placed["init_args"]["head"]["init_args"]
    assert (head_args["max_words"], head_args["max_frames"]) == (16, 5)
    assert "max_frames" not in placed["init_args"]  # the module takes no such argument
    glccl["init_args"]["head"]["init_args"]["not_a_head_argument"] = 1
    with pytest.raises(MethodConfigError, match="GLCCLHead takes no argument not_a_head_argument"):
        methods.check_arguments(glccl, "glccl.yaml")


def test_published_numbers_and_ablation_baselines_come_from_the_head():
    """The report's class attributes: the head's, unless a module subclass sets its own
    (CenterCLIP scores with meanP's head but has no published DiDeMo number)."""

    def attribute(name: str, key: str):
        method = methods.load_method(name, CONFIG_DIR)
        return methods.method_attribute(method.class_path, method.init_args, key)

    published = {m: attribute(m, "PUBLISHED_DIDEMO_T2V") for m in methods.DEFAULT_METHODS}
    assert {m: p["R@1"] for m, p in published.items() if p} == {
        "meanp": 43.4, "xclip": 45.2, "glscl": 46.7,
    }  # fmt: skip
    assert published["centerclip"] is None and published["glccl"] is None
    assert attribute("glccl_no_csc", "ABLATION_BASELINES") == ("xclip",)
    assert methods.method_attribute("nowhere.Ghost", {}, "PUBLISHED_DIDEMO_T2V") is None


def test_an_older_runs_module_config_builds_todays_module_with_the_same_parameters():
    """Saved configs of runs made before heads were injected name per-method module classes
    that take their head's arguments (the committed runs' configs look like this)."""
    old = {
        "class_path": "baselines.glscl.GLSCLModule",
        "init_args": {
            "clip": "tiny",
            "lr": 1e-3,
            "max_frames": 6,
            "temporal_layers": 2,
            "temporal_init": "identity",
            "num_queries": 4,
            "ffn_dim": 64,
        },
    }
    new = methods.upgrade_model_config(old)
    assert new["class_path"] == "tvrbench.retrieval.RetrievalModule"
    assert new["init_args"]["lr"] == 1e-3 and "max_frames" not in new["init_args"]
    head = new["init_args"]["head"]
    assert head["class_path"] == "baselines.glscl.GLSCLHead"
    assert head["init_args"]["num_queries"] == 4 and head["init_args"]["max_frames"] == 6
    upgraded = methods.build_module(new)
    # The same parameter names and shapes as a module built from today's config.
    current = methods.load_method("glscl", CONFIG_DIR).model()
    current = methods.place_data_shape(current, max_frames=6)
    current["init_args"]["head"]["init_args"].update(temporal_layers=2, num_queries=4, ffn_dim=64)
    reference = methods.build_module(current)
    shapes = {k: tuple(v.shape) for k, v in upgraded.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    # The report finds the published numbers of an older record's method.
    published = methods.method_attribute(
        old["class_path"], old["init_args"], "PUBLISHED_DIDEMO_T2V"
    )
    assert published is not None and published["R@1"] == 46.7
    assert methods.upgrade_model_config(current) == current  # today's sections stay as they are


def test_model_overrides_change_one_head_argument_and_keep_the_rest():
    from tvrbench.bench.config import load_recipe, resolve_run

    def resolve(model_overrides):
        return resolve_run(
            "glccl",
            0,
            recipe=load_recipe("tiny", ROOT / "configs" / "recipe"),
            method_config_dir=CONFIG_DIR,
            data={"class_path": "tvrbench.data.datamodule.DiDeMoDataModule", "init_args": {}},
            trainer={"accelerator": "cpu", "devices": 1},
            bench={},
            overrides={"model": model_overrides},
        ).config["model"]["init_args"]

    base = resolve({})["head"]["init_args"]
    changed = resolve({"lr": 5e-4, "head": {"init_args": {"tau": 7.0}}})
    assert changed["lr"] == 5e-4 and changed["head"]["init_args"]["tau"] == 7.0
    assert {k: v for k, v in changed["head"]["init_args"].items() if k != "tau"} == {
        k: v for k, v in base.items() if k != "tau"
    }
    with pytest.raises(MethodConfigError, match="takes no argument nope"):
        resolve({"head": {"init_args": {"nope": 1}}})
