"""The registry is the one table of methods (their views included) and of data kinds:
config validation, training's checks, the DataModule factory and scoring read it, and
nothing reads a method's fields by name."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from datamodules.checks import check_data_paths
from datamodules.factory import build_datamodule
from datamodules.views import InstantFamilyView, build_view
from ldm_ext.config import ConfigError, MethodConfig, load_config
from ldm_ext.registry import DATA_KINDS, METHODS, DataKind, MethodSpec
from ldm_ext.training_checks import check_config

DEMO = "configs/experiment/demo.yaml"


class RecordingDataModule:
    """Stands in for a DataModule: keeps what the factory passed."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def test_a_registered_data_kind_is_checked_and_built_from_its_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(DATA_KINDS, "captions", DataKind(RecordingDataModule, "root", "folder",
                                                         options={"size": "resolution"}))
    with pytest.raises(ConfigError, match=r"data.kind='nope' is not one of .*'captions'"):
        load_config(DEMO, ["data.kind=nope"])
    with pytest.raises(ConfigError, match="data.root=.*no such folder"):
        check_data_paths(load_config(DEMO, ["data.kind=captions", "data.root=missing"]))
    cfg = load_config(DEMO, ["data.kind=captions", f"data.root={tmp_path}",
                             "data.resolution=96"])
    check_config(cfg)
    dm = build_datamodule(cfg)
    assert dm.args == (str(tmp_path),) and dm.kwargs["view"] == "instantfamily"
    assert dm.kwargs["size"] == 96 and dm.kwargs["num_slots"] == cfg.method.num_slots


def test_a_method_without_a_view_takes_only_kinds_that_build_their_batches():
    assert METHODS["sefi_ide"].view is None
    with pytest.raises(ConfigError, match="data.kind=demo streams the method's data view and "
                                          "method.name=sefi_ide has none.*single_image"):
        load_config("configs/experiment/sefi_ide_tiny.yaml", ["data.kind=demo"])
    with pytest.raises(ValueError, match="'sefi_ide' has no data view"):
        build_view("sefi_ide", num_slots=1)


@dataclass
class RenamedConfig(MethodConfig):
    """A method naming its face network's fields its own way."""

    name: str = "renamed"
    id_net: str = "arcface"
    id_net_file: str = "random"

    @classmethod
    def identity_encoder(cls, method) -> str:
        return f"{method.id_net}/{method.id_net_file}"

    @classmethod
    def scoring_encoder(cls, method) -> tuple[str, str]:
        return method.id_net, method.id_net_file


@dataclass
class FacelessConfig(MethodConfig):
    name: str = "faceless"
    face_encoder: str = "dlib"  # a field of that name is no longer read by shared code


@pytest.fixture
def two_methods(monkeypatch):
    for config in (RenamedConfig, FacelessConfig):
        monkeypatch.setitem(METHODS, config.name, MethodSpec(
            config, "unused:Module", "unused:Pipeline", InstantFamilyView))


def _experiment(tmp_path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text("defaults: {model: tiny, data: demo, trainer: cpu, logger: default}\n"
                    f"name: {name}\nmethod: {{name: {name}}}\n")
    return load_config(path)


def test_runs_are_scored_with_the_encoder_the_method_config_names(tmp_path, two_methods):
    from ldm_ext.evaluation.run_scoring import run_scoring

    scoring = run_scoring(_experiment(tmp_path, "renamed"))
    assert (scoring.face_encoder, scoring.face_weights) == ("arcface", "random")
    assert scoring.second_encoder != "arcface"  # never the method's own family
    faceless = run_scoring(_experiment(tmp_path, "faceless"))
    assert (faceless.face_encoder, faceless.face_weights) == ("facenet", "vggface2")
