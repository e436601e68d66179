"""The package ships its types: ``py.typed`` is installed with it, every public callable is
annotated, and the losses spell out their keywords. ``make typecheck`` (mypy --strict, CI) checks
the annotations themselves; `make wheel-check` runs these tests against the installed wheel, so
the wheel is checked to carry `py.typed` too."""
import importlib.resources
import inspect
import types

import pytest

import infomax_ext as im
from infomax_ext.infomax import infomax_terms


def test_py_typed_marker_is_in_the_installed_package():
    marker = importlib.resources.files("infomax_ext") / "py.typed"
    assert marker.is_file()


def _unannotated(fn, skip_first: bool) -> list[str]:
    """Names of ``fn``'s parameters without an annotation, and ``return`` when it has none."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1 if skip_first else 0:]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty and fn.__name__ != "__init__":
        missing.append("return")
    return missing


def _public_callables():
    """``(qualified name, function, whether its first parameter is self/cls)`` for every function
    exported by ``infomax_ext`` and every public method (and ``__init__``) those classes define."""
    for name in im.__all__:
        obj = getattr(im, name)
        if inspect.isfunction(obj):
            yield name, obj, False
        elif inspect.isclass(obj) and obj.__module__.startswith("infomax_ext"):
            for attr, value in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(value, (classmethod, staticmethod)):
                    yield f"{name}.{attr}", value.__func__, isinstance(value, classmethod)
                elif isinstance(value, property):
                    yield f"{name}.{attr}", value.fget, True
                elif inspect.isfunction(value):
                    yield f"{name}.{attr}", value, True


def test_every_public_callable_is_annotated():
    found = list(_public_callables())
    assert len(found) > 60  # the whole surface is walked, not an empty list
    missing = {name: gaps for name, fn, method in found if (gaps := _unannotated(fn, method))}
    assert missing == {}


@pytest.mark.parametrize("loss", [im.infomaxloss, im.miloss])
def test_losses_spell_out_their_keywords(loss):
    kinds = {p.kind for p in inspect.signature(loss).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    assert inspect.Parameter.VAR_POSITIONAL not in kinds


def test_infomaxloss_takes_exactly_the_keywords_of_infomax_terms():
    loss = inspect.signature(im.infomaxloss).parameters
    terms = inspect.signature(infomax_terms).parameters
    assert [(p.name, p.kind, p.default) for p in loss.values()] == \
        [(p.name, p.kind, p.default) for p in terms.values()]


def test_all_names_every_public_name_and_no_module():
    """``__all__`` is a literal list (a type checker reads it to know what ``import infomax_ext``
    exports): it must name every public function, class and constant imported into the
    package, and no submodule."""
    public = {name for name, value in vars(im).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert sorted(im.__all__) == sorted(public)
