//! The API server's structural-schema rules for CRDs (apiextensions-apiserver
//! `structuralschema` validation), checked offline.

use serde_json::Value;

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];
const FORBIDDEN: [&str; 9] = [
    "$ref",
    "definitions",
    "$defs",
    "patternProperties",
    "dependencies",
    "additionalItems",
    "id",
    "$schema",
    "const",
];
const NOT_IN_JUNCTORS: [&str; 5] = [
    "type",
    "default",
    "description",
    "nullable",
    "additionalProperties",
];

/// Every violation of the structural rules in `schema`, as `path: problem`.
pub fn violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_node(schema, "", false, &mut out);
    if let Some(metadata) = schema.pointer("/properties/metadata") {
        check_metadata(metadata, &mut out);
    }
    out
}

fn check_node(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        out.push(format!("{path}: schema node is not an object"));
        return;
    };
    for key in FORBIDDEN {
        if map.contains_key(key) {
            out.push(format!(
                "{path}: {key} is not allowed in a structural schema"
            ));
        }
    }
    if map.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
        out.push(format!("{path}: uniqueItems must not be true"));
    }
    let flag = |k: &str| map.get(k).and_then(Value::as_bool) == Some(true);
    let int_or_string = flag("x-kubernetes-int-or-string");
    let preserve = flag("x-kubernetes-preserve-unknown-fields");
    if in_junctor {
        for key in NOT_IN_JUNCTORS {
            if map.contains_key(key) {
                out.push(format!(
                    "{path}: {key} is not allowed inside allOf/anyOf/oneOf/not"
                ));
            }
        }
    } else {
        match map.get("type").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => {}
            _ if int_or_string || preserve => {}
            _ => out.push(format!("{path}: every node needs a type (or x-kubernetes-int-or-string / preserve-unknown-fields)")),
        }
    }
    if map.contains_key("properties")
        && map
            .get("additionalProperties")
            .is_some_and(Value::is_object)
    {
        out.push(format!(
            "{path}: properties and additionalProperties are mutually exclusive"
        ));
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check_node(child, &format!("{path}.{name}"), in_junctor, out);
        }
    }
    if let Some(additional) = map.get("additionalProperties").filter(|a| a.is_object()) {
        check_node(additional, &format!("{path}[*]"), in_junctor, out);
    }
    match map.get("items") {
        Some(Value::Array(_)) => {
            out.push(format!("{path}: items must be a single schema, not a list"))
        }
        Some(items) => check_node(items, &format!("{path}[]"), in_junctor, out),
        None => {}
    }
    for junctor in JUNCTORS {
        if int_or_string && junctor == "anyOf" && is_int_or_string_pattern(map.get(junctor)) {
            continue;
        }
        match map.get(junctor) {
            Some(Value::Array(branches)) => {
                for (i, b) in branches.iter().enumerate() {
                    check_junctor_branch(b, map, &format!("{path}.{junctor}[{i}]"), out);
                }
            }
            Some(branch) => check_junctor_branch(branch, map, &format!("{path}.{junctor}"), out),
            None => {}
        }
    }
}

/// `anyOf: [{type: integer}, {type: string}]`, the one typed junctor the API server allows
/// (next to `x-kubernetes-int-or-string: true`).
fn is_int_or_string_pattern(any_of: Option<&Value>) -> bool {
    let types: Option<Vec<&str>> = any_of.and_then(Value::as_array).map(|branches| {
        branches
            .iter()
            .filter_map(|b| b.get("type").and_then(Value::as_str))
            .collect()
    });
    types.is_some_and(|t| t == ["integer", "string"])
}

fn check_junctor_branch(
    branch: &Value,
    parent: &serde_json::Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    check_node(branch, path, true, out);
    // Fields constrained in a branch must also be specified outside the junctor.
    if let Some(props) = branch.get("properties").and_then(Value::as_object) {
        let outer = parent.get("properties").and_then(Value::as_object);
        for name in props.keys() {
            if !outer.is_some_and(|o| o.contains_key(name)) {
                out.push(format!(
                    "{path}: property {name} is not specified outside the junctor"
                ));
            }
        }
    }
}

fn check_metadata(metadata: &Value, out: &mut Vec<String>) {
    if let Some(props) = metadata.get("properties").and_then(Value::as_object) {
        for name in props.keys() {
            if name != "name" && name != "generateName" {
                out.push(format!(
                    ".metadata.{name}: only name and generateName may be restricted"
                ));
            }
        }
    }
    for key in [
        "additionalProperties",
        "x-kubernetes-validations",
        "default",
    ] {
        if metadata.get(key).is_some() {
            out.push(format!(".metadata: {key} is not allowed on metadata"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn accepts_a_structural_schema() {
        let schema = json!({"type": "object", "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": {
                "q": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
                "l": {"type": "array", "items": {"type": "integer"}}
            }}
        }});
        assert_eq!(violations(&schema), Vec::<String>::new());
    }

    #[test]
    fn finds_each_kind_of_violation() {
        let schema = json!({"type": "object", "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "a": {"description": "untyped"},
            "b": {"$ref": "#/definitions/x", "type": "object"},
            "c": {"type": "array", "items": [{"type": "string"}]},
            "d": {"type": "object", "oneOf": [{"type": "object", "properties": {"z": {"type": "string"}}}]},
            "e": {"type": "object", "patternProperties": {"^x": {"type": "string"}}}
        }});
        let v = violations(&schema);
        let has = |s: &str| v.iter().any(|x| x.contains(s));
        assert!(has(".a: every node needs a type"), "{v:?}");
        assert!(has(".b: $ref"), "{v:?}");
        assert!(has(".c: items must be a single schema"), "{v:?}");
        assert!(has(".d.oneOf[0]: type is not allowed"), "{v:?}");
        assert!(has("property z is not specified outside"), "{v:?}");
        assert!(has(".e: patternProperties"), "{v:?}");
        assert!(has(".metadata.labels"), "{v:?}");
    }
}
