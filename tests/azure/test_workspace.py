"""Workspace resolution: flags > AZURE_* variables > config.json, every missing piece named with its fix."""

from __future__ import annotations

import json

import pytest

from slmops.azure.workspace import find_config, resolve_workspace
from slmops.errors import UserError

FLAGS = {"subscription_id": "sub-flag", "resource_group": "rg-flag", "workspace_name": "ws-flag"}
ENV = {"AZURE_SUBSCRIPTION_ID": "sub-env", "AZURE_RESOURCE_GROUP": "rg-env", "AZUREML_WORKSPACE_NAME": "ws-env"}
CONFIG = {"subscription_id": "sub-cfg", "resource_group": "rg-cfg", "workspace_name": "ws-cfg"}
SCOPE = {"Scope": "/subscriptions/sub-scope/resourceGroups/rg-scope/providers/"
                  "Microsoft.MachineLearningServices/workspaces/ws-scope"}


@pytest.mark.parametrize("flags, env, config, expected", [
    (FLAGS, ENV, CONFIG, ("sub-flag", "rg-flag", "ws-flag")),
    ({}, ENV, CONFIG, ("sub-env", "rg-env", "ws-env")),
    ({}, {}, CONFIG, ("sub-cfg", "rg-cfg", "ws-cfg")),
    ({}, {}, SCOPE, ("sub-scope", "rg-scope", "ws-scope")),
    ({"workspace_name": "ws-flag"}, {"AZURE_RESOURCE_GROUP": "rg-env"}, CONFIG, ("sub-cfg", "rg-env", "ws-flag")),
], ids=["flags", "env", "config", "config-scope", "mixed"])
def test_precedence(tmp_path, flags, env, config, expected):
    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml" / "config.json").write_text(json.dumps(config))
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    ws = resolve_workspace(flags, env, nested)
    assert (ws.subscription_id, ws.resource_group, ws.workspace_name) == expected


def test_config_search_order_matches_mlclient(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "aml_config").mkdir()
    (tmp_path / "sub" / "aml_config" / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml" / "config.json").write_text(json.dumps(CONFIG))
    # .azureml/ anywhere up the tree wins over aml_config/ and a plain config.json, as in MLClient.from_config
    assert find_config(tmp_path / "sub") == tmp_path / ".azureml" / "config.json"


def test_every_missing_piece_is_named_with_its_fix(tmp_path):
    with pytest.raises(UserError) as info:
        resolve_workspace({"workspace_name": "ws"}, {}, tmp_path)
    assert len(info.value.problems) == 2
    message = str(info.value)
    assert "--subscription" in message and "AZURE_SUBSCRIPTION_ID" in message
    assert "--resource-group" in message and "AZURE_RESOURCE_GROUP" in message
    assert "workspace_name:" not in message


def test_cli_without_workspace_exits_2(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from slmops.cli import main

    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["status", "run1"])
    assert result.exit_code == 2
    assert "AZUREML_WORKSPACE_NAME" in result.output


def test_bad_config_json_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="Cannot read the workspace config"):
        resolve_workspace({}, {}, tmp_path)


@pytest.mark.parametrize("args", [["submit", "--help"], ["status", "--help"], ["logs", "--help"],
                                  ["download", "--help"], ["cancel", "--help"], ["components", "--help"],
                                  ["components", "publish", "--help"]])
def test_help(args):
    from click.testing import CliRunner

    from slmops.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
