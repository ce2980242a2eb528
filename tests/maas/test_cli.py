"""Every maas/kaito subcommand's --help, and the package's place in the layering (docs/architecture.md)."""

from __future__ import annotations

import pytest

COMMANDS = [["maas"], ["maas", "export"], ["maas", "submit"], ["maas", "status"], ["maas", "events"],
            ["maas", "logs"], ["maas", "checkpoints"], ["maas", "cancel"], ["maas", "score"], ["maas", "register"],
            ["kaito"],
            ["kaito", "manifest"]]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help(command):
    from click.testing import CliRunner

    from slmops.cli import main

    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and " ".join(command) in result.output


def test_maas_imports_only_the_lower_layers_and_nothing_imports_it():
    from tests.test_layers import MODULES, slmops_imports

    allowed = ("slmops.maas", "slmops.data", "slmops.errors", "slmops.io", "slmops.metrics", "slmops.azure.workspace",
               "slmops.registration", "slmops.registry", "slmops.tracking", "slmops")
    bad = [f"{name} imports {target}" for name, path in MODULES.items() if name.startswith("slmops.maas")
           for target in slmops_imports(path) if not (target in allowed or target.startswith("slmops.maas"))]
    assert not bad
    importers = [name for name, path in MODULES.items() if not name.startswith("slmops.maas")
                 and any(t.startswith("slmops.maas") for t in slmops_imports(path))]
    assert importers == []  # the root CLI names it only as a string in COMMANDS


def test_missing_openai_is_a_user_error(monkeypatch):
    import builtins

    from slmops.errors import UserError
    from slmops.maas import openai_ft

    real_import = builtins.__import__

    def no_openai(name, *args, **kwargs):
        if name == "openai":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openai)
    with pytest.raises(UserError, match=r"pip install 'slmops\[maas\]'"):
        openai_ft.require_openai()
