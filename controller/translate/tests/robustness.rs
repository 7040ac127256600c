//! Nothing panics on any input: every golden input, with each value in turn
//! replaced by an edge case (negative / huge numbers, empty / wildcard /
//! unbalanced strings), must translate to a snapshot that validates.

use pier_translate::{translate, TranslateOptions};
use serde_json::Value;
use std::path::Path;

const NUMBERS: [i64; 5] = [-1, 0, 65_536, 2_147_483_647, -2_147_483_648];
const STRINGS: [&str; 7] = ["", "*", "/", "(", "*.", "..", "a//b?c=%zz"];

/// Paths of every scalar leaf in a document.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                path.push(k.clone());
                leaves(c, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(i.to_string());
                leaves(c, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
        other => &mut other[k.as_str()],
    })
}

#[test]
fn mutated_golden_inputs_never_panic_and_always_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    let options = TranslateOptions::default();
    let (mut tried, mut translated) = (0usize, 0usize);
    for input in inputs {
        let text = std::fs::read_to_string(&input).unwrap();
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect();
        for (di, doc) in docs.iter().enumerate() {
            let mut paths = Vec::new();
            leaves(doc, &mut Vec::new(), &mut paths);
            for (pi, path) in paths.iter().enumerate() {
                if matches!(
                    path.first().map(String::as_str),
                    Some("apiVersion" | "kind")
                ) {
                    continue;
                }
                let mut mutated = docs.clone();
                let leaf = get_mut(&mut mutated[di], path);
                *leaf = match leaf {
                    Value::Number(_) => Value::from(NUMBERS[pi % NUMBERS.len()]),
                    Value::Bool(b) => Value::Bool(!*b),
                    _ => Value::from(STRINGS[pi % STRINGS.len()]),
                };
                let yaml: String = mutated
                    .iter()
                    .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap()))
                    .collect();
                tried += 1;
                // Inputs the strict loader rejects never reach the translator.
                let Ok(state) = pier_manifests::load_str(&input, &yaml) else {
                    continue;
                };
                translated += 1;
                let out = translate(&state, &options);
                if let Err(e) = out.snapshot.validate() {
                    panic!(
                        "{}: setting {} gives an invalid snapshot: {e}",
                        input.display(),
                        path.join(".")
                    );
                }
            }
        }
    }
    assert!(
        translated > 1_000,
        "only {translated} of {tried} variants loaded"
    );
}
