//! Typed task inputs beyond plain strings: numbers, flags, lists, and the `*_json` inputs
//! (JSON encoded in a string) that the original system's string-only inputs needed.

use serde_json::Value;
use splai_shared::engine::Assignment;

use super::TaskError;

/// An input, treating `null` as absent.
pub(super) fn input<'a>(task: &'a Assignment, key: &str) -> Option<&'a Value> {
    task.inputs.get(key).filter(|v| !v.is_null())
}

/// Text for any JSON value: strings as they are, anything else as compact JSON.
pub(super) fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A non-negative integer input, given as a number or a numeric string.
///
/// # Errors
/// `Permanent` for any other value.
pub(super) fn input_u64(task: &Assignment, key: &str) -> Result<Option<u64>, TaskError> {
    let Some(v) = input(task, key) else {
        return Ok(None);
    };
    let parsed = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| {
        TaskError::invalid(format!("`{key}` must be a non-negative integer, got {v}"))
    })
}

/// A number input, given as a number or a numeric string.
///
/// # Errors
/// `Permanent` for any other value, or a non-finite number.
pub(super) fn input_f64(task: &Assignment, key: &str) -> Result<Option<f64>, TaskError> {
    let Some(v) = input(task, key) else {
        return Ok(None);
    };
    let parsed = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed
        .filter(|f: &f64| f.is_finite())
        .map(Some)
        .ok_or_else(|| TaskError::invalid(format!("`{key}` must be a number, got {v}")))
}

/// A flag, given as a boolean or as `true`/`false`/`1`/`0`/`yes`/`no`.
///
/// # Errors
/// `Permanent` for any other value.
pub(super) fn input_bool(task: &Assignment, key: &str) -> Result<Option<bool>, TaskError> {
    let Some(v) = input(task, key) else {
        return Ok(None);
    };
    let parsed = match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| TaskError::invalid(format!("`{key}` must be true or false, got {v}")))
}

/// A JSON-encoded input (`documents_json`, `items_json`, ...), decoded. An input that is
/// already JSON rather than a string is taken as it is.
///
/// # Errors
/// `Permanent` when the string is not JSON.
pub(super) fn input_json(task: &Assignment, key: &str) -> Result<Option<Value>, TaskError> {
    match input(task, key) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| TaskError::invalid(format!("`{key}` is not valid JSON: {e}"))),
        Some(other) => Ok(Some(other.clone())),
    }
}

/// A list of names, given as an array of strings or a comma-separated string; blanks dropped.
///
/// # Errors
/// `Permanent` for an array holding anything but strings, or any other value.
pub(super) fn string_list(key: &str, value: &Value) -> Result<Vec<String>, TaskError> {
    let items: Vec<String> = match value {
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| TaskError::invalid(format!("`{key}` must hold only strings")))?,
        other => {
            return Err(TaskError::invalid(format!(
                "`{key}` must be an array of strings or a comma-separated string, got {other}"
            )));
        }
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use splai_shared::domain::TaskType;

    use super::*;
    use crate::executor::testing::a_task;

    /// Numbers and flags are accepted as JSON values or as the original's strings.
    #[test]
    fn numbers_and_flags_accept_strings() {
        let task = a_task(
            TaskType::Retrieval,
            json!({"a": 3, "b": " 4 ", "c": "yes", "d": false, "e": "0.5", "f": null}),
        );
        assert_eq!(input_u64(&task, "a").unwrap(), Some(3));
        assert_eq!(input_u64(&task, "b").unwrap(), Some(4));
        assert_eq!(input_bool(&task, "c").unwrap(), Some(true));
        assert_eq!(input_bool(&task, "d").unwrap(), Some(false));
        assert_eq!(input_f64(&task, "e").unwrap(), Some(0.5));
        assert_eq!(input_u64(&task, "f").unwrap(), None);
        assert!(input_u64(&task, "c").is_err());
        assert!(input_bool(&task, "a").is_err());
    }

    /// Lists come as arrays or comma-separated strings; JSON inputs are decoded.
    #[test]
    fn lists_and_json_inputs_are_decoded() {
        assert_eq!(
            string_list("k", &json!("a, b,,c")).unwrap(),
            ["a", "b", "c"]
        );
        assert_eq!(string_list("k", &json!(["a", " b "])).unwrap(), ["a", "b"]);
        assert!(string_list("k", &json!([1])).is_err());
        let task = a_task(
            TaskType::Aggregation,
            json!({"x_json": "[1, 2]", "bad_json": "[1,"}),
        );
        assert_eq!(input_json(&task, "x_json").unwrap(), Some(json!([1, 2])));
        let e = input_json(&task, "bad_json").unwrap_err();
        assert!(
            !e.is_retryable() && e.to_string().contains("bad_json"),
            "{e}"
        );
    }
}
