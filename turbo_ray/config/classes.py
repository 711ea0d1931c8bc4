"""Which labels make each class (`data.classes`): a list of classes, each one label or several
merged, in the order of the classifier's outputs.

    classes = ClassMap.parse("neutral,happy=happy+excited,angry,sad")   # or "4class", "all"
    classes.names             # ("neutral", "happy", "angry", "sad")
    classes.of("excited")     # "happy"; a label in no class: None
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from turbo_ray.errors import ConfigError

# IEMOCAP's class sets, named by its labels' long names; "4class" merges excited into happy
NAMED = {
    "4class": "neutral,happy=happy+excited,angry,sad",
    "all": "neutral,happy,excited,angry,sad,frustrated,fearful,surprised,disgusted,other,"
    "no_agreement",
}


@dataclass(frozen=True)
class ClassMap:
    members: tuple[tuple[str, tuple[str, ...]], ...]  # (class, the labels it is made of), in order

    @classmethod
    def parse(cls, spec: str) -> ClassMap:
        """A named set (`NAMED`) or "a,b=b1+b2,…": class `a` is label `a`, class `b` labels `b1`
        and `b2`."""
        members, labels_seen = [], set()
        for item in NAMED.get(spec, spec).split(","):
            name, _, labels = (part.strip() for part in item.partition("="))
            merged = tuple(label.strip() for label in labels.split("+")) if labels else (name,)
            if not name or not all(merged):
                raise ConfigError(
                    f"data.classes {spec!r}: expected classes like a,b=b1+b2, got item {item!r}"
                )
            if name in dict(members):
                raise ConfigError(f"data.classes {spec!r}: class {name!r} twice")
            if twice := sorted(labels_seen & set(merged)):
                raise ConfigError(f"data.classes {spec!r}: label {twice[0]!r} in two classes")
            members.append((name, merged))
            labels_seen |= set(merged)
        if len(members) < 2:
            raise ConfigError(f"data.classes {spec!r}: a classifier needs two classes or more")
        return cls(tuple(members))

    @classmethod
    def of_labels(cls, labels: Iterable[str]) -> ClassMap:
        """Every label its own class, in sorted order."""
        return cls(tuple((label, (label,)) for label in sorted(set(labels))))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.members)

    def of(self, label: str) -> str | None:
        """The class `label` belongs to, or None."""
        return next((name for name, labels in self.members if label in labels), None)

    def spec(self) -> str:
        """The value of `data.classes` that gives this map."""
        return ",".join(
            name if labels == (name,) else f"{name}={'+'.join(labels)}"
            for name, labels in self.members
        )
