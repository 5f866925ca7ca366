"""`import raydistill` and `raydistill.data` import their exports on first use (raydistill.lazy):
every name still resolves to its defining module's object, and importing the package alone
pulls in neither torch nor transformers."""

import subprocess
import sys

import pytest

import raydistill
import raydistill.data


@pytest.mark.parametrize("package", [raydistill, raydistill.data])
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
