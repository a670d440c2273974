"""Typed config: defaults + YAML + key=value, with one-line errors."""
import pytest

from posectl.config import build, dump_yaml, load_yaml, parse_overrides, to_dict
from posectl.errors import ConfigError
from posectl.methods.baseline import BaselineConfig


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nbackbone:\n  width: 128\ndata:\n  path: /x\n")
    cfg = build(BaselineConfig, load_yaml(f), parse_overrides(["epochs=5", "lr=3e-4", "backbone.name=videopose",
                                                               "backbone.receptive_field=27", "train_flip=false"]))
    assert cfg.epochs == 5 and cfg.lr == pytest.approx(3e-4) and cfg.backbone.width == 128
    assert cfg.data.path == "/x" and cfg.backbone.name == "videopose" and cfg.train_flip is False
    assert build(BaselineConfig, to_dict(cfg)) == cfg
    assert "receptive_field: 27" in dump_yaml(cfg)


@pytest.mark.parametrize("override, message", [
    ("epochz=3", "unknown parameter 'epochz' .*did you mean 'epochs'"),
    ("epochs=abc", "epochs: expected int, got 'abc'"),
    ("epochs=2.5", "epochs: expected int"),
    ("lr=fast", "lr: expected float"),
    ("train_flip=maybe", "train_flip: expected bool"),
    ("backbone.name=transformer", "backbone.name: must be one of 'simple' | 'videopose'"),
    ("epochs=0", "epochs: must be >= 1"),
    ("lr=-1", "lr: must be > 0"),
    ("lr=.nan", "NaN"),
    ("data=3", "unknown parameter 'data'"),
    ("lr=inf", "lr: NaN and Inf are not allowed"),
    ("backbone.dropout=2", r"backbone.dropout: must be < 1, got 2"),
    ("backbone.dropout=-0.1", r"backbone.dropout: must be >= 0, got -0.1"),   # an upper bound keeps the lower
    ("backbone.width=-5", r"backbone.width: must be >= 1, got -5"),
    ("backbone.blocks=-1", r"backbone.blocks: must be >= 0, got -1"),
    ("data.max_train_samples=-5", r"data.max_train_samples: must be >= 0"),
    ("precise_bn=-2", r"precise_bn: must be >= -1"),
    ("data.val_split=test", "data.val_split: 'test' is also the test split"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build(BaselineConfig, parse_overrides([override]))


def test_numbers_read_from_yaml_match_string_choices(tmp_path):
    """`eval_joints=16` (as the README writes it) is the choice '16', from the command line and from YAML."""
    from posectl.methods.dhaug import DHAugConfig
    assert build(DHAugConfig, parse_overrides(["eval_joints=16"])).eval_joints == "16"
    f = tmp_path / "c.yaml"
    f.write_text("eval_joints: 14\n")
    assert build(DHAugConfig, load_yaml(f)).eval_joints == "14"
    with pytest.raises(ConfigError, match="eval_joints: must be one of"):
        build(DHAugConfig, parse_overrides(["eval_joints=15"]))


def test_every_method_default_config_is_in_range():
    """The shipped defaults pass the range checks, and a range is enforced in each method's own fields."""
    from posectl.methods.base import get_method
    bad = {"baseline": "backbone.width=0", "dhaug": "gan.critic_steps=0", "gpa": "gpa_prob=1.5",
           "posynda": "denoiser.heads=3", "pose2mesh": "meshnet.cheb_order=0", "l2d": "detector.sigma=0"}
    for name, override in bad.items():
        cls = get_method(name).Config
        build(cls, {})
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            build(cls, parse_overrides([override]))


def test_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["epochs"])
    assert parse_overrides(["a.b=1", "s=x=y"]) == {"a.b": 1, "s": "x=y"}


def test_yaml_is_loaded_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(f)
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(g)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
