"""Every hook in gateway/hookspecs.py is documented, typed, and exercised by a named test.

Adding a hook means adding its line to HOOK_TESTS, naming a test that calls or implements it;
until then this file fails.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from gateway import hookspecs

TESTS = Path(__file__).parent

# hook name -> the test (file::function) that exercises it
HOOK_TESTS = {
    "register_connectors": "test_plugins.py::test_builtin_connectors_come_from_entry_points",
    "register_systems": "test_plugins.py::test_systems_and_transforms_from_a_plugin",
    "register_transforms": "test_plugins.py::test_systems_and_transforms_from_a_plugin",
    "register_commands": "test_plugins.py::test_third_party_distribution_installs_and_works",
    "on_run_finished": "test_plugins.py::test_event_hooks_reach_every_observer",
    "on_record_delivered": "test_plugins.py::test_event_hooks_reach_every_observer",
}


def hook_names() -> list[str]:
    return sorted(
        name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "gateway_spec")
    )


def test_the_hook_list_is_found() -> None:
    # Guards the checks below against finding nothing (e.g. if the marker's attribute were renamed).
    assert {"register_connectors", "register_commands", "on_run_finished"} <= set(hook_names())


def test_every_hook_has_a_registered_test() -> None:
    missing = sorted(set(hook_names()) - set(HOOK_TESTS))
    stale = sorted(set(HOOK_TESTS) - set(hook_names()))
    assert not missing, f"hooks with no test named in HOOK_TESTS: {missing}"
    assert not stale, f"HOOK_TESTS names hooks that no longer exist: {stale}"


@pytest.mark.parametrize("hook", sorted(HOOK_TESTS))
def test_the_named_test_exists_and_exercises_its_hook(hook: str) -> None:
    file, function = HOOK_TESTS[hook].split("::")
    source = (TESTS / file).read_text(encoding="utf-8")
    tests = {
        node.name: ast.get_source_segment(source, node)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }
    assert function in tests, f"{HOOK_TESTS[hook]} does not exist"
    # The test implements or calls the hook by name (in a plugin's source or an assertion).
    assert hook in tests[function], f"{HOOK_TESTS[hook]} never mentions {hook}"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented_and_typed(hook: str) -> None:
    fn = getattr(hookspecs, hook)
    doc = inspect.getdoc(fn) or ""
    assert len(doc.split()) >= 8, (
        f"{hook}: the docstring must say what the hook is for and what it gets"
    )
    signature = inspect.signature(fn)
    untyped = [
        name for name, p in signature.parameters.items() if p.annotation is inspect.Parameter.empty
    ]
    assert not untyped, f"{hook}: parameters without a type: {untyped}"
    assert signature.return_annotation is not inspect.Signature.empty, f"{hook}: no return type"
    # Every parameter is explained in the docstring.
    for name in signature.parameters:
        assert f"``{name}``" in doc, f"{hook}: parameter ``{name}`` is not described"
