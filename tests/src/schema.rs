//! The JSON report's schema (`schema/diagnosis.schema.json`): real output from live
//! runs is checked against it.
use std::path::Path;

use serde_json::Value;

/// The schema file in the repository.
pub fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/diagnosis.schema.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every violation of the schema by `report` (one report or an array of them).
pub fn errors(report: &Value) -> Vec<String> {
    let schema = schema();
    assert!(
        jsonschema::meta::is_valid(&schema),
        "schema/diagnosis.schema.json is not a valid JSON Schema"
    );
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    validator
        .iter_errors(report)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect()
}

/// Panics, listing every violation, unless `report` (one report or an array of
/// them) validates against the schema; `what` names the output in the message.
/// Also checks that the schema catches a field that is missing, one it does not
/// know, and a wrong `schema_version`, so a schema that accepts anything fails.
pub fn check(what: &str, report: &Value) {
    let errors = errors(report);
    let one = match report {
        Value::Array(a) => a.first().cloned(),
        v => Some(v.clone()),
    };
    if let Some(one) = one {
        let mut broken = [one.clone(), one.clone(), one];
        broken[0]["collected"]
            .as_object_mut()
            .expect("collected")
            .remove("duration_s");
        broken[1]["target"]["no_such_field"] = Value::Bool(true);
        broken[2]["schema_version"] = Value::from(999);
        for b in &broken {
            assert!(
                !self::errors(b).is_empty(),
                "the schema accepts a broken report: {b:#}"
            );
        }
    }
    assert!(
        errors.is_empty(),
        "{what} does not validate against schema/diagnosis.schema.json:\n{}",
        errors.join("\n")
    );
}
