# SPDX-License-Identifier: LGPL-2.1-or-later
"""Record classes (headers, keyslots, cipher specs) without importing
``dataclasses``.

``dataclasses`` imports ``inspect``, and with it ``ast``, ``dis`` and
``tokenize``: 6 to 9 ms here, a tenth of a whole ``pyqcrypt info`` run,
which scripts call in loops.  The records on that path need only this
subset of ``dataclasses.dataclass``, with the same behaviour:

* ``__init__`` over the annotated fields in order, positional or keyword,
  with defaults and ``field(default_factory=...)``;
* ``__repr__`` (``Name(a=1, b=2)``, leaving out ``field(repr=False)``)
  and ``__eq__`` (same class, fields with ``compare=True``), unless the
  class defines its own;
* ``frozen=True``: assignment raises ``FrozenInstanceError`` (an
  AttributeError) and instances hash by their compared fields; a mutable
  record is unhashable, as a dataclass with ``eq=True`` is;
* ``replace(record, **changes)``.

Modules import ``dataclasses`` itself under ``TYPE_CHECKING``, so mypy
checks these records as the dataclasses they behave as;
tests/test_record.py holds the two to the same behaviour.
"""

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class _Field:
    __slots__ = ("name", "default", "default_factory", "repr", "compare")

    def __init__(self, default=_MISSING, default_factory=_MISSING, repr=True, compare=True):
        self.name = None
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare

    def value(self):
        if self.default is not _MISSING:
            return self.default
        if self.default_factory is not _MISSING:
            return self.default_factory()
        return _MISSING


def field(*, default=_MISSING, default_factory=_MISSING, repr=True, compare=True):
    """A field with options, as ``dataclasses.field`` (the subset above)."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory, repr, compare)


def _collect_fields(cls):
    fields = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if "ClassVar" in str(annotation):
            continue
        declared = cls.__dict__.get(name, _MISSING)
        spec = declared if isinstance(declared, _Field) else _Field(default=declared)
        spec.name = name
        if spec.default is _MISSING:
            if name in cls.__dict__:
                delattr(cls, name)          # a field(...) with no plain default
        else:
            setattr(cls, name, spec.default)
        fields.append(spec)
    return tuple(fields)


def _make_init(fields, cls_name):
    names = [f.name for f in fields]

    def __init__(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError("%s() takes %d positional arguments but %d were given"
                            % (cls_name, len(names), len(args)))
        values = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError("%s() got an unexpected keyword argument %r" % (cls_name, key))
            if key in values:
                raise TypeError("%s() got multiple values for argument %r" % (cls_name, key))
            values[key] = value
        for f in fields:
            value = values[f.name] if f.name in values else f.value()
            if value is _MISSING:
                raise TypeError("%s() missing required argument: %r" % (cls_name, f.name))
            object.__setattr__(self, f.name, value)
    return __init__


def _make_repr(fields):
    shown = [f.name for f in fields if f.repr]

    def __repr__(self):
        return "%s(%s)" % (type(self).__qualname__,
                           ", ".join("%s=%r" % (n, getattr(self, n)) for n in shown))
    return __repr__


def _make_eq(compared):
    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return tuple(getattr(self, n) for n in compared) == tuple(getattr(other, n) for n in compared)
    return __eq__


def _frozen_setattr(self, name, value):
    raise FrozenInstanceError("cannot assign to field %r" % name)


def _frozen_delattr(self, name):
    raise FrozenInstanceError("cannot delete field %r" % name)


def dataclass(cls=None, *, frozen=False):
    """Make *cls* a record (see the module docstring); usable as
    ``@dataclass`` or ``@dataclass(frozen=True)``."""
    def wrap(cls):
        fields = _collect_fields(cls)
        compared = tuple(f.name for f in fields if f.compare)
        own = cls.__dict__
        cls.__record_fields__ = fields
        if "__init__" not in own:
            cls.__init__ = _make_init(fields, cls.__name__)
        if "__repr__" not in own:
            cls.__repr__ = _make_repr(fields)
        if "__eq__" not in own:
            cls.__eq__ = _make_eq(compared)
        if "__hash__" not in own or own["__hash__"] is None:
            if frozen:
                cls.__hash__ = lambda self: hash(tuple(getattr(self, n) for n in compared))
            else:
                cls.__hash__ = None
        if frozen:
            cls.__setattr__ = _frozen_setattr
            cls.__delattr__ = _frozen_delattr
        return cls
    return wrap if cls is None else wrap(cls)


def replace(record, **changes):
    """A new record of the same class with *changes* applied."""
    values = {f.name: getattr(record, f.name) for f in type(record).__record_fields__}
    values.update(changes)
    return type(record)(**values)
