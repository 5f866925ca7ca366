"""`import raydistill`, `raydistill.data` and `raydistill.eval` import their exports on first use
(raydistill.lazy): every name still resolves to its defining module's object, and importing the
package alone pulls in neither torch nor transformers. The CLI's parser and a run's input checks
import neither either: they run before Ray starts, and the heavy imports run beside it."""

import json
import subprocess
import sys

import pytest

import raydistill
import raydistill.data
import raydistill.eval


@pytest.mark.parametrize("package", [raydistill, raydistill.data, raydistill.eval])
def test_every_export_resolves_to_its_modules_object(package):
    import importlib

    for name, module in package._EXPORTS.items():
        assert getattr(package, name) is getattr(importlib.import_module(module), name), name
    assert set(package._EXPORTS) <= set(dir(package))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_importing_the_package_loads_no_torch_or_transformers():
    code = ("import sys, raydistill, raydistill.data, raydistill.errors, raydistill.data.files; "
            "print(sorted(m for m in ('torch', 'transformers', 'ray.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_parser_and_the_input_checks_load_no_torch(tiny_bart_dir, tiny_data_dir, tmp_path):
    """What a distill run does before Ray starts: build the parser, read the config, check the
    data, the models' shapes and vocabularies, and the output folder."""
    config = {"method": "kd", "teacher": str(tiny_bart_dir), "student_decoder_layers": 1,
              "data_dir": str(tiny_data_dir), "output_dir": str(tmp_path / "out"),
              "distillation": {"intermediate_matches": [
                  {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse"}]}}
    code = ("import json, sys; from raydistill.cli import build_parser; build_parser(); "
            "from raydistill.config import DistillConfig; "
            "from raydistill.train.run import preflight; "
            f"preflight(DistillConfig.from_dict(json.loads({json.dumps(config)!r}))); "
            "print(sorted(m for m in ('torch', 'transformers', 'ray.data', 'ray.train') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
