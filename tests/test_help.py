"""``train.py --help`` lists groups, presets, experiments and keys read from configs/ and
the dataclasses, without importing torch; ``eval.py --help`` lists the protocols."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def help_text(script: str, module: str | None = None) -> tuple[str, bool]:
    """(``python <script> --help``'s output, whether torch got imported), in a fresh
    process; ``module``: where the script's ``parse_args`` lives (default: the script)."""
    code = (f"import sys; sys.argv = ['{script}', '--help']; import {module or script[:-3]} as m\n"
            "try:\n    m.parse_args()\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text, _, flag = done.stdout.rstrip().rpartition("\n")
    return text, flag == "TORCH True"


def test_train_help_lists_groups_presets_experiments_and_keys():
    text, torch_imported = help_text("train.py", "ldm_ext.training")
    assert not torch_imported
    for group in ("model", "data", "trainer", "logger", "method"):
        names = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
        line = next(line for line in text.splitlines() if line.startswith(f"  {group} "))
        assert line.split(None, 1)[1] == ", ".join(names), line
    for path in (CONFIGS / "experiment").glob("*.yaml"):
        assert f"\n  {path.stem} " in text, path.stem
    assert "storymaker_demo           storymaker: model=tiny_sdxl data=demo trainer=cpu" in text
    assert "  name, seed, output_dir" in text
    assert "trainer.  accelerator," in text and "max_steps" in text
    words = text.replace(",", " ").split()
    assert {"mask_mode", "dip_max_timestep", "attention_loss_weight", "lora_rank"} <= set(words)


def test_train_help_follows_a_new_preset(tmp_path, monkeypatch):
    """Presets are read when help is asked for, not written into it."""
    from ldm_ext import config_help, config_layers

    for group in (*config_layers.GROUPS, "experiment"):
        (tmp_path / group).mkdir()
    (tmp_path / "model" / "my_model.yaml").write_text("family: sd15\n")
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "defaults: {model: my_model, method: storymaker}\nname: mine\n")
    monkeypatch.setattr(config_layers, "CONFIG_ROOT", tmp_path)
    text = config_help.config_help("mine")
    assert "  model     my_model" in text and "  mine " in text


def test_eval_help_lists_every_protocol_with_its_description():
    text, torch_imported = help_text("eval.py", "ldm_ext.evaluation.cli")
    assert not torch_imported
    listed = text.split("protocols (--config configs/eval/NAME.yaml):")[1].splitlines()[1:]
    names = sorted(p.stem for p in (CONFIGS / "eval").glob("*.yaml"))
    assert [line.split()[0] for line in listed if line.strip()] == names
    for line in listed:
        if line.strip():
            assert len(line.split(None, 1)[1]) > 20, line  # a description, not a blank
    assert any("StoryMaker's Table 1" in line for line in listed)
