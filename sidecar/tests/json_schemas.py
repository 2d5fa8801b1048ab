"""Fifty JSON schemas of different shapes, for the structured-output tests.

Nested objects, arrays, enums and consts, bounded numbers, required and optional fields,
string patterns and lengths, unions, references and formats: each is a case of
``test_worker_json_output.py``.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "maxLength": 12}
_AGE = {"type": "integer", "minimum": 0, "maximum": 120}

SCHEMAS: dict[str, dict[str, Any]] = {
    "any_object": {"type": "object"},
    "one_string": {"type": "object", "properties": {"name": _NAME}, "required": ["name"]},
    "one_integer": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    "one_number": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
    "one_boolean": {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
    },
    "one_null": {"type": "object", "properties": {"z": {"type": "null"}}, "required": ["z"]},
    "person": {
        "type": "object",
        "properties": {"name": _NAME, "age": _AGE},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "optional_fields": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": _NAME, "c": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "all_optional": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
        "additionalProperties": False,
    },
    "bounded_integer": {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 99}},
        "required": ["n"],
    },
    "negative_range": {
        "type": "object",
        "properties": {"t": {"type": "integer", "minimum": -40, "maximum": -1}},
        "required": ["t"],
    },
    "bounded_number": {
        "type": "object",
        "properties": {"p": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["p"],
    },
    "exclusive_bounds": {
        "type": "object",
        "properties": {"v": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100}},
        "required": ["v"],
    },
    "string_enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
    },
    "mixed_enum": {
        "type": "object",
        "properties": {"v": {"enum": [1, "two", True, None, 4.5]}},
        "required": ["v"],
    },
    "const_field": {
        "type": "object",
        "properties": {"version": {"const": "v1"}, "n": {"type": "integer"}},
        "required": ["version", "n"],
    },
    "pattern_code": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}},
        "required": ["code"],
    },
    "pattern_hex": {
        "type": "object",
        "properties": {"color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
        "required": ["color"],
    },
    "pattern_words": {
        "type": "object",
        "properties": {"slug": {"type": "string", "pattern": "^[a-z]+(-[a-z]+){0,3}$"}},
        "required": ["slug"],
    },
    "string_lengths": {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 8}},
        "required": ["s"],
    },
    "integer_array": {
        "type": "object",
        "properties": {
            "xs": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 9},
                "maxItems": 6,
            }
        },
        "required": ["xs"],
    },
    "array_bounds": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": _NAME, "minItems": 2, "maxItems": 4},
        },
        "required": ["tags"],
    },
    "top_level_array": {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
    "top_level_enum": {"enum": ["yes", "no", "maybe"]},
    "top_level_integer": {"type": "integer", "minimum": 1, "maximum": 1000},
    "top_level_string": {"type": "string", "maxLength": 20},
    "top_level_boolean": {"type": "boolean"},
    "array_of_objects": {
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": _NAME, "age": _AGE},
                    "required": ["name", "age"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["people"],
    },
    "nested_two": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "name": _NAME},
                "required": ["id", "name"],
            }
        },
        "required": ["user"],
    },
    "nested_three": {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {
                    "b": {
                        "type": "object",
                        "properties": {"c": {"type": "boolean"}},
                        "required": ["c"],
                    }
                },
                "required": ["b"],
            }
        },
        "required": ["a"],
    },
    "nested_arrays": {
        "type": "object",
        "properties": {
            "grid": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    "minItems": 2,
                    "maxItems": 2,
                },
                "minItems": 2,
                "maxItems": 3,
            }
        },
        "required": ["grid"],
    },
    "any_of": {
        "type": "object",
        "properties": {"v": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 5}]}},
        "required": ["v"],
    },
    "nullable": {
        "type": "object",
        "properties": {"maybe": {"type": ["integer", "null"]}},
        "required": ["maybe"],
    },
    "type_union": {
        "type": "object",
        "properties": {"v": {"type": ["string", "number", "boolean"], "maxLength": 6}},
        "required": ["v"],
    },
    "defs_ref": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}},
        "required": ["from", "to"],
    },
    "discriminated": {
        "type": "object",
        "properties": {
            "shape": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
                        "required": ["kind", "r"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "square"}, "side": {"type": "number"}},
                        "required": ["kind", "side"],
                        "additionalProperties": False,
                    },
                ]
            }
        },
        "required": ["shape"],
    },
    "string_map": {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9},
        "maxProperties": 3,
    },
    "date_format": {
        "type": "object",
        "properties": {"day": {"type": "string", "format": "date"}},
        "required": ["day"],
    },
    "email_format": {
        "type": "object",
        "properties": {"email": {"type": "string", "format": "email"}},
        "required": ["email"],
    },
    "uuid_format": {
        "type": "object",
        "properties": {"id": {"type": "string", "format": "uuid"}},
        "required": ["id"],
    },
    "many_fields": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "title": _NAME,
            "done": {"type": "boolean"},
            "score": {"type": "number", "minimum": 0, "maximum": 10},
            "priority": {"enum": ["low", "mid", "high"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        },
        "required": ["id", "title", "done", "score", "priority", "tags"],
        "additionalProperties": False,
    },
    "event": {
        "type": "object",
        "properties": {
            "name": _NAME,
            "when": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}$"},
            "attendees": {"type": "array", "items": _NAME, "maxItems": 3},
        },
        "required": ["name", "when"],
    },
    "address": {
        "type": "object",
        "properties": {
            "street": _NAME,
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "country": {"enum": ["FR", "DE", "US"]},
        },
        "required": ["street", "zip", "country"],
        "additionalProperties": False,
    },
    "order": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                    },
                    "required": ["sku", "qty"],
                },
                "minItems": 1,
                "maxItems": 3,
            },
            "total": {"type": "number", "minimum": 0},
        },
        "required": ["items", "total"],
    },
    "boolean_flags": {
        "type": "object",
        "properties": {k: {"type": "boolean"} for k in ("a", "b", "c", "d")},
        "required": ["a", "b", "c", "d"],
    },
    "array_of_enums": {
        "type": "array",
        "items": {"enum": ["n", "s", "e", "w"]},
        "minItems": 1,
        "maxItems": 4,
    },
    "tuple_items": {
        "type": "array",
        "prefixItems": [{"type": "string", "maxLength": 5}, {"type": "integer"}],
        "items": False,
        "minItems": 2,
    },
    "required_with_optional_nested": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "meta": {
                "type": "object",
                "properties": {"note": _NAME, "rank": {"type": "integer", "maximum": 5}},
                "additionalProperties": False,
            },
        },
        "required": ["id"],
        "additionalProperties": False,
    },
    "recursive_tree": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer", "minimum": 0, "maximum": 9},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                },
                "required": ["v"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    },
    "free_strings": {
        "type": "object",
        "properties": {"title": {"type": "string"}, "body": {"type": "string"}},
        "required": ["title", "body"],
        "additionalProperties": False,
    },
}


def has_unbounded_string(schema: Any) -> bool:
    """Whether ``schema`` lets the output hold a string of any length: a property name of an
    object open to other properties, or a string value with no maxLength, pattern, enum,
    const or format. Random weights can fill such a string until max_tokens."""
    if not isinstance(schema, dict):
        return False
    is_object = schema.get("type") == "object" or ("type" not in schema and "properties" in schema)
    if is_object and schema.get("additionalProperties", True) is not False:
        return True
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "string" in types and not any(
        k in schema for k in ("maxLength", "pattern", "enum", "const", "format")
    ):
        return True
    children: list[Any] = []
    for key in ("properties", "$defs"):
        children.extend(schema.get(key, {}).values())
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        children.extend(schema.get(key, []))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            children.append(schema[key])
    return any(has_unbounded_string(c) for c in children)
