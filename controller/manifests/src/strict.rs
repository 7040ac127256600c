//! Strictness for types whose serde impls ignore unknown fields: compare the
//! input with what the typed object serialises back to. A key that was in the
//! input (with a non-null value) and is gone after the round trip was not
//! understood.

use serde_json::Value;

pub(crate) fn first_unknown_field(input: &Value, typed: &Value) -> Option<String> {
    walk(input, typed, String::new())
}

fn walk(input: &Value, typed: &Value, path: String) -> Option<String> {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match b.get(k) {
                None if !v.is_null() && !is_empty(v) => Some(here),
                None => None,
                Some(t) => walk(v, t, here),
            }
        }),
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, t))| walk(v, t, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// `{}` and `[]` vanish on some round trips (defaults); they carry nothing.
fn is_empty(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}
