"""slmops.contract on its own: a contract that contradicts itself is refused, the parser types values with
`coerce`'s rules, the rendered YAML reads back as the contract, and `--check` / `--write` keep the files in step.
(The five real contracts are checked in tests/steps/test_contracts.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from slmops import contract
from slmops.contract import Component, Input, Output

ROOT = Path(__file__).resolve().parents[1]


def toy(**changes) -> Component:
    fields = dict(
        name="toy", display_name="slmops: toy",
        description="A long description that has to be folded because it does not fit on one line of the YAML file "
                    "at all; it says: nothing, with 'quotes' and # marks.",
        inputs=[Input("data", "uri_folder", "Input folder."),
                Input("n", "integer", "How many.", default=2, min=1, max=3),
                Input("mode", "string", "Which: a or b.", default="a", enum=["a", "b"]),
                Input("flag", "boolean", "On or off.", default=False),
                Input("note", "string", "Free text.", optional=True, quote="'")],
        outputs=[Output("out", "Where it goes.")])
    return Component(**{**fields, **changes})


@pytest.mark.parametrize("bad_input, message", [
    (Input("n", "integer", "N.", default=0, min=1), "inputs.n.default: 0 is below the minimum 1"),
    (Input("n", "integer", "N.", default=1, enum=["1"]), "enum on a integer input"),
    (Input("n", "string", "N.", default="c", enum=["a", "b"]), "inputs.n.default: 'c' is not one of"),
    (Input("n", "string", "N.", default="x", optional=True), "optional with a default"),
    (Input("n", "number", "N.", min=1.0, max=0.5), "min 1.0 > max 0.5"),
    (Input("n", "tensor", "N."), "type 'tensor' is not one of"),
    (Input("n", "string", "two  spaces"), "one non-empty line"),
    (Input("out", "string", "Clashes with the output."), "flags declared twice: ['out']"),
])
def test_a_contract_that_contradicts_itself_is_refused(bad_input, message):
    with pytest.raises(ValueError, match="contract of toy") as exc:
        toy(inputs=[bad_input])
    assert message in str(exc.value)


def test_parser_types_values_with_coerce_rules_and_leaves_bounds_to_check_values(capsys):
    parser = contract.parser(toy(), doc="toy")
    args = parser.parse_args(["--data", "d", "--n", "5", "--mode", "c", "--flag", "True", "--out", "o"])
    assert (args.n, args.mode, args.flag, args.note) == (5, "c", True, None)
    assert contract.check_values(toy(), args) == [
        "--n: 5 is above the maximum 3. Fix: give a value within [1, 3].",
        "--mode: 'c' is not one of ['a', 'b']. Fix: use one of the listed values.",
    ]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--data", "d", "--n", "two", "--out", "o"])
    assert exc.value.code == 2
    assert "argument --n: 'two' is not a valid integer" in capsys.readouterr().err
    help_text = parser.format_help()
    assert "--mode {a,b}" in help_text and "(min 1; max 3; default: 2)" in help_text


def test_rendered_yaml_reads_back_as_the_contract_with_folded_text_and_optional_flags():
    component = toy()
    text = contract.render_yaml(component)
    assert text == contract.render_yaml(toy())  # deterministic
    assert "description: >-\n  A long description" in text and max(map(len, text.splitlines())) <= contract.WIDTH
    assert yaml.safe_load(text) == component.to_dict()
    assert yaml.safe_load(text)["command"] == ("python -m slmops.steps.toy --data ${{inputs.data}} --n ${{inputs.n}} "
                                               "--mode ${{inputs.mode}} --flag ${{inputs.flag}} "
                                               "$[[--note '${{inputs.note}}']] --out ${{outputs.out}}")


def test_check_names_a_stale_file_and_write_fixes_it(tmp_path, capsys):
    components = tmp_path / "components"
    shutil.copytree(ROOT / "components", components)
    contract.main(["--check", str(components)])  # the checked-in files are current
    stale = components / "finetune" / "component.yaml"
    stale.write_text(stale.read_text().replace("min: 1.0e-12", "min: 0.0"))
    with pytest.raises(SystemExit) as exc:
        contract.main(["--check", str(components)])
    assert exc.value.code == 1
    out = capsys.readouterr()
    assert f"--- {stale}" in out.out and "-    min: 0.0\n+    min: 1.0e-12" in out.out
    assert "python -m slmops.contract --write" in out.err
    contract.main(["--write", str(components)])
    contract.main(["--check", str(components)])
    assert stale.read_text() == (ROOT / "components" / "finetune" / "component.yaml").read_text()
