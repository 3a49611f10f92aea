"""Declaring estimator parameters once: name, default, constraint and documentation together.

A parameter is a field of a dataclass (:func:`parameter`); the
:func:`declared` decorator turns the class into one whose ``__init__`` stores
each parameter verbatim (what scikit-learn's ``clone`` and ``set_params``
need), and derives ``_parameter_constraints`` and the ``Parameters`` section
of the docstring from the same fields.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import textwrap
from typing import Any, TypeVar, cast

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # pragma: no cover
    from typing_extensions import dataclass_transform

T = TypeVar("T")


def parameter(
    *,
    default: Any = dataclasses.MISSING,
    constraints: list,
    types: str,
    doc: str,
    kw_only: bool = True,
) -> Any:
    """Declare one estimator parameter, as a dataclass field.

    Parameters
    ----------
    default : object, optional
        The default value; none makes the parameter required.
    constraints : list
        scikit-learn's parameter constraints (``_parameter_constraints``).
    types : str
        The type line of the docstring entry, without the default (which is
        added from ``default``).
    doc : str
        The description of the docstring entry.
    kw_only : bool, default=True
        False for the one positional parameter, ``encoder``.

    Returns
    -------
    dataclasses.Field
    """
    metadata = {"constraints": constraints, "types": types, "doc": textwrap.dedent(doc).strip()}
    return dataclasses.field(default=default, kw_only=kw_only, metadata=metadata)


def like(owner: type, name: str, **changes: Any) -> Any:
    """A field declared as ``owner``'s field ``name``, with ``changes``.

    ``changes`` may replace ``default``, ``constraints``, ``types``, ``doc``
    or ``kw_only``: how one estimator reuses another's declaration.
    """
    field = cast(Any, owner).__dataclass_fields__[name]
    settings = {"default": field.default, "kw_only": field.kw_only, **field.metadata}
    return parameter(**{**settings, **changes})


def _shown(default: Any) -> str:
    return f'"{default}"' if isinstance(default, str) else repr(default)


def _entry(field: dataclasses.Field) -> str:
    header = f"{field.name} : {field.metadata['types']}"
    if field.default is not dataclasses.MISSING:
        header += f", default={_shown(field.default)}"
    return header + "\n" + textwrap.indent(field.metadata["doc"], "    ")


@dataclass_transform(kw_only_default=True, eq_default=False, field_specifiers=(parameter,))
def declared(cls: type[T]) -> type[T]:
    """Make ``cls`` a scikit-learn estimator class from its declared fields.

    ``__init__`` stores every field under its own name and does nothing else
    (a dataclass ``__init__``: no equality, hashing or repr of its own, so
    ``BaseEstimator``'s apply); ``_parameter_constraints`` maps each field to
    its constraints; ``{parameters}`` in the docstring becomes the
    ``Parameters`` entries in the order of the signature.
    """
    cls = dataclasses.dataclass(cls, eq=False, repr=False, kw_only=True)
    fields = {field.name: field for field in dataclasses.fields(cast(Any, cls))}
    order = inspect.signature(cls).parameters
    constraints = {name: fields[name].metadata["constraints"] for name in order}
    setattr(cls, "_parameter_constraints", constraints)  # noqa: B010 (T is any class)
    if cls.__doc__:  # None under python -OO
        entries = "\n\n".join(_entry(fields[name]) for name in order)
        cls.__doc__ = cls.__doc__.replace("    {parameters}", textwrap.indent(entries, "    "))
    return cls
