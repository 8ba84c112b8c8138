"""One registry type for everything slimtune looks up by name.

Pruning criteria (:data:`~slimtune.compressors.CRITERIA`), quantization algorithms and observers,
training compressors (:data:`~slimtune.compressors.COMPRESSORS`) and search strategies
(:data:`~slimtune.strategies.STRATEGIES`) are each a :class:`Registry`: a read-only mapping from the
name users write in plans and specs to the registered object, filled by ``register`` (usually as a
decorator). Registering a name twice is an error (unless it is the same definition again, as a
module reload makes); looking up an unknown name raises :class:`~slimtune.errors.UnknownNameError`
with the closest known name and the list of known ones.

Example:
    >>> from slimtune.registry import Registry
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square")
    ... def square(x):
    ...     return x * x
    >>> cube = SHAPES.register("cube", lambda x: x**3)
    >>> SHAPES.get("square")(3), SHAPES.names(), "cube" in SHAPES, len(SHAPES)
    (9, ['cube', 'square'], True, 2)
    >>> SHAPES.get("sqare")
    Traceback (most recent call last):
    ...
    slimtune.errors.UnknownNameError: unknown shape 'sqare'; did you mean 'square'? known: cube, square
    >>> SHAPES.register("square", cube)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    slimtune.errors.DuplicateNameError: shape 'square' is already registered (by ...square); pick another name ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from slimtune.errors import DuplicateNameError, SlimtuneError, UnknownNameError, closest_name

__all__ = ["Registry", "closest_name"]

T = TypeVar("T")
_S = TypeVar("_S")
_MISSING: Any = object()


class Registry(Mapping[str, T], Generic[T]):
    """Objects by name, of one kind; a read-only :class:`~collections.abc.Mapping` (``name in reg``,
    ``reg[name]``, ``sorted(reg)``, ``len``, ``.items()``) filled by :meth:`register`.

    Args:
        kind: What is registered, as messages name it (``"criterion"``, ``"strategy"``).
        unknown_error: The :class:`~slimtune.errors.UnknownNameError` subclass an unknown name raises
            (e.g. one that is also the package's own error type).
        duplicate_error: The error a name registered twice raises.
        field: The option unknown names are reported under (``"plan.compressor"``), or None.
        identity: What of a registered object identifies its definition when a name is registered
            again (default: the object itself); the same definition again replaces the entry.
    """

    def __init__(
        self,
        kind: str,
        *,
        unknown_error: type[UnknownNameError] = UnknownNameError,
        duplicate_error: type[SlimtuneError] = DuplicateNameError,
        field: str | None = None,
        identity: Callable[[T], Any] | None = None,
    ) -> None:
        self.kind = kind
        self.field = field
        self._unknown_error = unknown_error
        self._duplicate_error = duplicate_error
        self._identity = identity
        self._items: dict[str, T] = {}

    # ------------------------------------------------------------------ registering
    @overload
    def register(self, name: str, obj: None = None, *, overwrite: bool = False) -> Callable[[_S], _S]: ...

    @overload
    def register(self, name: str, obj: _S, *, overwrite: bool = False) -> _S: ...

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator doing so.

        Raises:
            SlimtuneError: (the registry's ``duplicate_error``) ``name`` is registered already by
                something else and ``overwrite`` is False. Registering the same definition again
                (the same object, or a function or class of the same module and qualified name, as
                a module reload makes) replaces the entry.
        """
        if obj is None:

            def deco(o: _S) -> _S:
                self._add(name, o, overwrite)
                return o

            return deco
        self._add(name, obj, overwrite)
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a temporary registration in a test); unknown names raise :meth:`get`'s error."""
        self.get(name)
        del self._items[name]

    def _add(self, name: str, obj: T, overwrite: bool) -> None:
        if not isinstance(name, str) or not name:
            raise self._duplicate_error(f"{self.kind} name must be a non-empty string, got {name!r}")
        old = self._items.get(name, _MISSING)
        if old is not _MISSING and not overwrite and not self._same(old, obj):
            raise self._duplicate_error(
                f"{self.kind} {name!r} is already registered (by {_describe(self._key(old))}); "
                "pick another name or pass overwrite=True"
            )
        self._items[name] = obj

    def _key(self, obj: T) -> Any:
        return self._identity(obj) if self._identity is not None else obj

    def _same(self, old: T, new: T) -> bool:
        a, b = self._key(old), self._key(new)
        return a is b or (_definition(a) is not None and _definition(a) == _definition(b))

    # ------------------------------------------------------------------ looking up
    def get(self, name: str, default: Any = _MISSING) -> T:  # type: ignore[override]
        """The object registered as ``name``.

        Unlike ``dict.get``, an unknown name raises unless a ``default`` is given.

        Raises:
            UnknownNameError: (the registry's ``unknown_error``) ``name`` is not registered; the message
                suggests the closest known name and lists the known ones.
        """
        try:
            return self._items[name]
        except (KeyError, TypeError):
            if default is not _MISSING:
                return default
            raise self._unknown_error(self.kind, name, self._items, field=self.field) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:  # unhashable
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def _definition(obj: Any) -> tuple[str, str] | None:
    """``(module, qualified name)`` of a function or class, None for other objects."""
    qualname = getattr(obj, "__qualname__", None)
    module = getattr(obj, "__module__", None)
    if isinstance(obj, type) or callable(obj):
        if isinstance(qualname, str) and isinstance(module, str) and "<lambda>" not in qualname:
            return module, qualname
    return None


def _describe(obj: Any) -> str:
    definition = _definition(obj)
    return ".".join(definition) if definition is not None else repr(obj)
