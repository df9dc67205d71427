"""The ontology's vocabulary: object, link and action types and functions on objects.

These models are what `data/ontology/*.yaml` is parsed into. They check the shape of each
declaration; how declarations refer to each other (a link to an unknown object type, a
precondition on an unknown property) is checked by :mod:`dagster_platform.ontology.loader`,
which knows where in which file every value came from.
"""

from __future__ import annotations

import operator
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

PROPERTY_TYPES: dict[str, str] = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "float": "DOUBLE",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
    "string_list": "VARCHAR[]",
}
PropertyType = Literal["string", "integer", "float", "boolean", "timestamp", "date", "string_list"]
Cardinality = Literal["one_to_one", "many_to_one", "one_to_many", "many_to_many"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backing(_Strict):
    """Where an object type's rows come from: a warehouse table or view, a data file read by
    DuckDB (path relative to the ontology folder), or a SELECT over warehouse tables."""

    table: str | None = None
    file: str | None = None
    sql: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Backing:
        given = [name for name in ("table", "file", "sql") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of table, file or sql (got {given or 'none'})")
        return self


class PropertyDef(_Strict):
    type: PropertyType
    column: str | None = Field(None, description="Backing column; the property name if unset.")
    description: str = ""
    allowed: tuple[str | int | float, ...] | None = None


class ObjectType(_Strict):
    description: str = ""
    backing: Backing
    primary_key: str
    title: str = Field(description="Template such as '{name} ({cluster_id})'.")
    description_template: str | None = Field(
        None, description="Template of the text the knowledge base embeds for each object."
    )
    properties: dict[Name, PropertyDef]

    def column_of(self, prop: str) -> str:
        return self.properties[prop].column or prop


class LinkDerivation(_Strict):
    """A link is derived either from a property holding the other end's key (one value or a
    list) on the source or the target object, or from a table of (source, target) key pairs."""

    property: str | None = None
    on: Literal["source", "target"] = "source"
    table: str | None = None
    file: str | None = None
    sql: str | None = None
    source_column: str | None = None
    target_column: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> LinkDerivation:
        relation = [name for name in ("table", "file", "sql") if getattr(self, name)]
        if self.property and relation:
            raise ValueError("derive from a property or from a table, not both")
        if not self.property and len(relation) != 1:
            raise ValueError("give a property, or exactly one of table, file or sql")
        if relation and not (self.source_column and self.target_column):
            raise ValueError("a table derivation needs source_column and target_column")
        return self


class LinkType(_Strict):
    description: str = ""
    source: str
    target: str
    cardinality: Cardinality
    derive: LinkDerivation
    dependency: bool = Field(
        True,
        description="The source depends on the target: the source is in the target's impact set.",
    )


Operator = Literal[
    "equals", "not_equals", "in", "not_in", "gt", "gte", "lt", "lte", "is_null", "not_null"
]
_COMPARE = {
    "equals": operator.eq,
    "not_equals": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


class Condition(_Strict):
    """`property` compared with `value` by `op`; what preconditions and filters are made of."""

    property: str
    op: Operator = "equals"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> Condition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list | tuple):
            raise ValueError(f"op {self.op} needs a list value")
        if self.op in ("is_null", "not_null") and self.value is not None:
            raise ValueError(f"op {self.op} takes no value")
        if self.op not in ("is_null", "not_null", "in", "not_in") and self.value is None:
            raise ValueError(f"op {self.op} needs a value")
        return self

    def holds(self, actual: Any) -> bool:
        if self.op == "is_null":
            return actual is None
        if self.op == "not_null":
            return actual is not None
        if self.op == "in":
            return actual in self.value
        if self.op == "not_in":
            return actual not in self.value
        if actual is None and self.op not in ("equals", "not_equals"):
            return False
        return bool(_COMPARE[self.op](actual, self.value))

    def describe(self) -> str:
        if self.op in ("is_null", "not_null"):
            return f"{self.property} {self.op.replace('_', ' ')}"
        return f"{self.property} {self.op.replace('_', ' ')} {self.value!r}"


class ParameterDef(_Strict):
    type: PropertyType
    required: bool = True
    description: str = ""
    allowed: tuple[str | int | float, ...] | None = None


class Effect(_Strict):
    """What an approved action does. `ops_command` publishes an action command on the
    `ops-actions` topic (and calls the YARN ResourceManager when one is configured)."""

    kind: Literal["ops_command"]
    command: Literal["kill_spark_job"]
    cluster_property: str = Field(
        "cluster_id", description="The target's property naming the cluster that carries it out."
    )


class ActionType(_Strict):
    description: str = ""
    target: str
    parameters: dict[Name, ParameterDef] = Field(default_factory=dict)
    preconditions: tuple[Condition, ...] = ()
    approver_role: str
    effect: Effect


class Function(_Strict):
    """A computed property: SQL over the warehouse returning one `value` per object `key`."""

    object_type: str
    type: PropertyType
    description: str = ""
    sql: str


class RootCause(_Strict):
    """How to rank suspects from an alerting object: candidates of one type reachable within
    `max_depth` links, filtered, ranked by a function, highest first."""

    start_types: tuple[str, ...]
    candidate_type: str
    max_depth: int = Field(2, ge=1, le=6)
    rank_by: str
    where: tuple[Condition, ...] = ()


class Migration(_Strict):
    """A breaking change declared on purpose, so that the schema check lets it through."""

    change: Literal[
        "object_type_removed",
        "property_removed",
        "property_type_changed",
        "link_type_removed",
        "action_type_removed",
    ]
    object_type: str | None = None
    property: str | None = None
    link_type: str | None = None
    action_type: str | None = None
    reason: str


class Ontology(_Strict):
    """Everything declared in one ontology folder."""

    object_types: dict[Name, ObjectType] = Field(default_factory=dict)
    link_types: dict[Name, LinkType] = Field(default_factory=dict)
    action_types: dict[Name, ActionType] = Field(default_factory=dict)
    functions: dict[Name, Function] = Field(default_factory=dict)
    root_cause: RootCause | None = None
    migrations: tuple[Migration, ...] = ()

    def functions_of(self, object_type: str) -> dict[str, Function]:
        return {n: f for n, f in self.functions.items() if f.object_type == object_type}


def template_fields(template: str) -> list[str]:
    """The property names a title or description template refers to."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
