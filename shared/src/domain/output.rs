//! A task's inline output, kept as the JSON text the worker sent.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// A small output that travels inline in a report and is kept on the task. It stays the JSON
/// text it arrived as: stored in the task's body, copied between records and served as is,
/// so the report path never builds a tree of it, encodes it again, or frees one.
#[derive(Clone)]
pub struct InlineOutput(Box<RawValue>);

impl InlineOutput {
    /// Wraps JSON text already checked to be one JSON value.
    pub fn new(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// The output of a JSON value.
    pub fn of(value: &Value) -> Self {
        // A `Value` always encodes, and its encoding is one JSON value.
        let raw = serde_json::value::to_raw_value(value).expect("a JSON value encodes");
        Self(raw)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The output as a JSON value.
    pub fn to_value(&self) -> Value {
        // The text was one JSON value when it was wrapped.
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

/// Equal when the texts are: a record compares equal only to one that would be stored the same.
impl PartialEq for InlineOutput {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for InlineOutput {}

impl std::fmt::Debug for InlineOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for InlineOutput {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for InlineOutput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The text survives a round trip through a body unchanged, and compares by its text.
    #[test]
    fn kept_as_sent() {
        let body = r#"{"output":{"text":"hi","n":[1,2.5]}}"#;
        #[derive(Serialize, Deserialize)]
        struct Body {
            output: InlineOutput,
        }
        let parsed: Body = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.output.get(), r#"{"text":"hi","n":[1,2.5]}"#);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), body);
        assert_eq!(
            parsed.output.to_value(),
            json!({"text": "hi", "n": [1, 2.5]})
        );
        // Equality is of the text: the same value written otherwise is another output.
        assert_eq!(parsed.output, parsed.output.clone());
        let reordered = InlineOutput::of(&json!({"text": "hi", "n": [1, 2.5]}));
        assert_eq!(reordered.get(), r#"{"n":[1,2.5],"text":"hi"}"#);
        assert_ne!(parsed.output, reordered);
        // Inside a value tree (a webhook's task), it is the value itself.
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            json!({"output": {"text": "hi", "n": [1, 2.5]}})
        );
    }
}
