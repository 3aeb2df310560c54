"""``data.name`` / ``data.revision`` / the splits reach ``datasets.load_dataset`` (a local dataset folder with two
configurations stands in for a hub dataset such as gsm8k's ``main``), and ``relay-rl validate`` on a machine without
hub access: hub ids are noted as not checked, local paths still fail."""

import json

import pytest

from relay_rl.cluster.cli import main
from relay_rl.cluster.config import DataConfig
from relay_rl.cluster.data import load_data
from relay_rl.errors import ConfigError
from tests.conftest import RECIPES

README = """---
configs:
- config_name: main
  data_files:
  - {split: train, path: main/train.jsonl}
  - {split: test, path: main/test.jsonl}
- config_name: socratic
  data_files:
  - {split: train, path: socratic/train.jsonl}
  - {split: test, path: socratic/test.jsonl}
---
"""


@pytest.fixture
def dataset_repo(tmp_path):
    for config in ("main", "socratic"):
        for split, n in (("train", 3), ("test", 2)):
            f = tmp_path / config / f"{split}.jsonl"
            f.parent.mkdir(exist_ok=True)
            f.write_text("".join(json.dumps({"prompt": f"{config}-{split}-{i}"}) + "\n" for i in range(n)))
    (tmp_path / "README.md").write_text(README)
    return tmp_path


def test_data_name_and_splits_pick_the_configuration(dataset_repo):
    train, evals = load_data(DataConfig(train=str(dataset_repo), eval=str(dataset_repo), name="socratic"), None)
    assert train["prompt"] == [f"socratic-train-{i}" for i in range(3)]
    assert evals["prompt"] == [f"socratic-test-{i}" for i in range(2)]
    train, evals = load_data(
        DataConfig(train=str(dataset_repo), eval=str(dataset_repo), name="main", eval_split="train"), None
    )
    assert train["prompt"] == evals["prompt"] == [f"main-train-{i}" for i in range(3)]
    with pytest.raises(ConfigError, match=r"data.train: cannot load .*nope"):
        load_data(DataConfig(train=str(dataset_repo), name="nope"), None)


def _validate(args, capsys) -> tuple[int, str, str]:
    code = main(["validate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_without_hub_access_notes_hub_ids_and_passes(capsys):
    """The test machines have no hub (HF_HUB_OFFLINE is set for the suite): the GKD recipe's student, teacher and
    dataset are hub ids."""
    code, out, err = _validate([str(RECIPES / "gkd.yaml")], capsys)
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("# note:")]
    for field, name in (
        ("model.name_or_path", "Qwen/Qwen2.5-0.5B-Instruct"),
        ("teacher.name_or_path", "Qwen/Qwen2.5-7B-Instruct"),
        ("data.train", "EdinburghNLP/xsum"),
    ):
        assert any(f"{field}: {name} is a hub id, not checked here (HF_HUB_OFFLINE is set)" in n for n in notes), notes
    assert "# valid. algorithm gkd" in out
    code, out, _ = _validate([str(RECIPES / "gkd.yaml"), "--offline"], capsys)
    assert code == 0 and "not checked here (--offline)" in out


def test_validate_finds_an_unreachable_hub_by_itself(capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    code, out, err = _validate([str(RECIPES / "gkd.yaml")], capsys)
    assert code == 0, err
    assert "is a hub id, not checked here (http://127.0.0.1:9 is not reachable from this machine" in out


def test_validate_offline_still_fails_a_wrong_local_path(capsys, tmp_path):
    code, _, err = _validate(
        [str(RECIPES / "gkd.yaml"), f"model.name_or_path={tmp_path / 'missing'}", "--offline"], capsys
    )
    assert code == 2 and f"model.name_or_path: no such folder {tmp_path / 'missing'}" in err
    data = f"data.train={tmp_path / 'missing.jsonl'}"
    code, _, err = _validate([str(RECIPES / "gkd.yaml"), data, "--offline"], capsys)
    assert code == 2 and "data.train" in err and "missing.jsonl" in err
