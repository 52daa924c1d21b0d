"""Every device's kernel package implements the whole kernel contract, and the
float64 reference oracle covers every family (nbmodel/kernels/contract.py)."""
from __future__ import annotations

import importlib
import inspect

import pytest

from nbmodel.backend import available_devices, get_device
from nbmodel.kernels.contract import CONTRACT, FAMILIES, REFERENCE, parameters

DEVICES = [name for name in available_devices() if not name.startswith("test-")]
ENTRIES = [(family, fn) for family in sorted(CONTRACT) for fn in CONTRACT[family]]


def _params(fn):
    fn = getattr(fn, "py_func", fn)  # an @njit dispatcher: the Python function it compiles
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family, function", ENTRIES, ids=[f"{f}.{g}" for f, g in ENTRIES])
def test_device_implements_the_contract(device, family, function):
    module = get_device(device).kernels(family)
    assert hasattr(module, function), f"{device}: kernels/{family} has no {function} (missing twin)"
    assert _params(getattr(module, function)) == parameters(family, function), \
        f"{device}: {family}.{function} parameters differ from the contract"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reference_covers_every_family(family):
    assert REFERENCE.get(family), f"no reference functions listed for {family}"
    module = importlib.import_module(f"nbmodel.kernels.reference.{family}")
    for name in REFERENCE[family]:
        assert name in CONTRACT[family], f"reference {family}.{name} is not a contract function"
        assert callable(getattr(module, name, None)), f"reference/{family}.py has no {name}"


def test_kernels_import_nothing_above_them():
    """nbmodel/kernels/ imports only nbmodel.config and its own modules."""
    import ast
    import pathlib

    root = pathlib.Path(importlib.import_module("nbmodel.kernels").__file__).parent
    bad = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        depth = len(path.relative_to(root).parts)  # kernels/x.py: 1, kernels/cpu/x.py: 2
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: how far up does it reach?
                    up = node.level - depth  # 1: nbmodel itself, more: above it
                    target = (node.module or "")
                    if up >= 1 and not (up == 1 and target.split(".")[0] == "config"):
                        bad.append(f"{path.relative_to(root)}: from {'.' * node.level}{target}")
                elif (node.module or "").startswith("nbmodel") and not node.module.startswith(
                        ("nbmodel.kernels", "nbmodel.config")):
                    bad.append(f"{path.relative_to(root)}: from {node.module}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("nbmodel") and not alias.name.startswith(
                            ("nbmodel.kernels", "nbmodel.config")):
                        bad.append(f"{path.relative_to(root)}: import {alias.name}")
    assert bad == []
