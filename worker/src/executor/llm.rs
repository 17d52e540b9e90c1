//! `llm_inference`: a prompt (or a conversation) through the task's model backend, with the
//! outputs of its dependencies (retrieved documents, earlier answers) as context.

use serde_json::{Value, json};
use splai_shared::engine::Assignment;

use super::deps::{self, DependencyOutput};
use super::inputs::{input, input_bool, input_f64, input_u64, value_text};
use super::stream::Forwarder;
use super::{Executors, TaskError, input_str, input_text};
use crate::models::{ChatMessage, Completion, CompletionRequest};

/// Runs one completion.
pub(super) async fn run(ex: &Executors, task: &Assignment) -> Result<Value, TaskError> {
    let mut request = completion_request(task)?;
    let dependencies = deps::load_all(ex, task).await?;
    if let Some(context) = context(&dependencies) {
        add_context(&mut request.messages, &context);
    }
    let backend = ex.backend_for(task)?;
    request.model = ex.model_for(task);
    // `stream: true` (an OpenAI-compatible client waiting with `stream=true`): tokens go to
    // the gateway as they come; the output below is still the answer.
    let completion = match (&ex.gateway, input_bool(task, "stream")?) {
        (Some(gateway), Some(true)) => {
            let forwarder = Forwarder::start(gateway.clone(), task);
            let done = backend
                .complete_streaming(&request, &|t: &str| forwarder.push(t))
                .await;
            forwarder.finish().await;
            done?
        }
        _ => backend.complete(&request).await?,
    };
    Ok(output(backend.name(), completion))
}

/// The request a task's inputs describe (without its model, which routing decides).
fn completion_request(task: &Assignment) -> Result<CompletionRequest, TaskError> {
    let (mut messages, plain_prompt) = match input(task, "messages") {
        Some(v) => (messages(v)?, false),
        None => {
            let prompt = ["prompt", "text", "input"]
                .iter()
                .find_map(|k| input_text(task, k))
                .unwrap_or_default();
            (vec![message("user", prompt)], true)
        }
    };
    if messages.iter().all(|m| m.content.trim().is_empty()) {
        return Err(TaskError::invalid(
            "llm_inference has an empty prompt: set `prompt` (or `text`/`input`) or `messages`",
        ));
    }
    if let Some(system) = input_str(task, "system") {
        messages.insert(0, message("system", system));
    }
    let max_tokens = input_u64(task, "max_tokens")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Ok(CompletionRequest {
        model: None,
        messages,
        plain_prompt,
        max_tokens,
        temperature: input_f64(task, "temperature")?,
    })
}

/// OpenAI-format messages: `[{role, content}]`, content a string or a list of text parts.
/// A JSON-encoded string of that array is accepted too.
fn messages(value: &Value) -> Result<Vec<ChatMessage>, TaskError> {
    let decoded;
    let value = match value {
        Value::String(s) => {
            decoded = serde_json::from_str::<Value>(s)
                .map_err(|e| TaskError::invalid(format!("`messages` is not valid JSON: {e}")))?;
            &decoded
        }
        other => other,
    };
    let Value::Array(items) = value else {
        return Err(TaskError::invalid(
            "`messages` must be an array of {role, content}",
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty());
            let role = role.ok_or_else(|| {
                TaskError::invalid(format!("`messages[{i}]` needs a string `role`"))
            })?;
            Ok(message(
                role,
                content(m.get("content").unwrap_or(&Value::Null)),
            ))
        })
        .collect()
}

/// A message's text: a string, the `text` of each part of a multi-part content, or JSON.
fn content(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                other => other.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => value_text(other),
    }
}

fn message(role: &str, content: String) -> ChatMessage {
    ChatMessage {
        role: role.to_owned(),
        content,
    }
}

/// What the dependencies contribute: retrieved documents as a numbered "Context" list, then
/// each earlier model answer as "Previous step <id>: ...". `None` when they contribute
/// nothing.
fn context(dependencies: &[DependencyOutput]) -> Option<String> {
    let mut documents = Vec::new();
    let mut steps = Vec::new();
    for dep in dependencies {
        if let Some(docs) = dep.output.get("documents").and_then(Value::as_array) {
            let texts = docs
                .iter()
                .filter_map(|d| d.get("text").and_then(Value::as_str));
            documents.extend(texts.filter(|t| !t.trim().is_empty()));
        } else if let Some(text) = dep.output.get("text").and_then(Value::as_str) {
            steps.push(format!("Previous step {}: {text}", dep.dependency.task_id));
        }
    }
    let mut sections = Vec::new();
    if !documents.is_empty() {
        let list: Vec<String> = documents
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{}. {d}", i + 1))
            .collect();
        sections.push(format!("Context:\n{}", list.join("\n")));
    }
    if !steps.is_empty() {
        sections.push(steps.join("\n"));
    }
    (!sections.is_empty()).then(|| sections.join("\n\n"))
}

/// Puts the context before the question: ahead of the last user message's text.
fn add_context(messages: &mut Vec<ChatMessage>, context: &str) {
    match messages.iter_mut().rev().find(|m| m.role == "user") {
        Some(last) => last.content = format!("{context}\n\n{}", last.content),
        None => messages.push(message("user", context.to_owned())),
    }
}

fn output(backend: &str, c: Completion) -> Value {
    let mut out = json!({
        "backend": backend,
        "model": c.model,
        "text": c.text,
        "usage": c.usage,
        "finish_reason": c.finish_reason,
    });
    if backend == "echo" {
        out["echo"] = Value::Bool(true);
        out["note"] = Value::String(
            "no model ran: the echo backend repeats the prompt (for development and tests)"
                .to_owned(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use splai_shared::domain::TaskType;

    use super::*;
    use crate::executor::testing::{a_task, executors, store_output};

    fn llm(inputs: Value) -> Assignment {
        a_task(TaskType::LlmInference, inputs)
    }

    /// A plain prompt is one user message; non-string JSON is stringified.
    #[test]
    fn prompt_inputs_become_a_plain_user_message() {
        let req = completion_request(&llm(json!({"input": {"q": 1}, "max_tokens": "12"}))).unwrap();
        assert!(req.plain_prompt);
        assert_eq!(req.messages, [message("user", r#"{"q":1}"#.into())]);
        assert_eq!(req.max_tokens, Some(12));
    }

    /// Messages keep their roles, multi-part content is joined, `system` goes first.
    #[test]
    fn messages_input_keeps_roles_and_adds_system() {
        let task = llm(json!({
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "system": "be brief",
            "temperature": 0.2,
        }));
        let req = completion_request(&task).unwrap();
        assert!(!req.plain_prompt);
        let roles: Vec<_> = req.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user"]);
        assert_eq!(req.messages[1].content, "a\nb");
        assert_eq!(req.temperature, Some(0.2));
    }

    /// An empty prompt fails permanently, saying what to set.
    #[test]
    fn empty_prompt_is_a_permanent_error() {
        for inputs in [json!({}), json!({"prompt": "  "}), json!({"messages": []})] {
            let e = completion_request(&llm(inputs)).unwrap_err();
            assert!(
                !e.is_retryable() && e.to_string().contains("empty prompt"),
                "{e}"
            );
        }
        let e = completion_request(&llm(json!({"messages": [{"content": "x"}]}))).unwrap_err();
        assert!(e.to_string().contains("role"), "{e}");
    }

    /// Retrieved documents and earlier answers are prepended to the prompt, in order.
    #[tokio::test]
    async fn dependency_outputs_become_context() {
        let (ex, _dir) = executors(|_| {});
        let docs = json!({"documents": [{"text": "Paris is in France."}, {"text": "Rome"}]});
        let retrieve = store_output(&ex, "retrieve", docs).await;
        let analyze = store_output(&ex, "analyze", json!({"text": "It is sunny."})).await;
        let task = llm(json!({
            "prompt": "Where is Paris?",
            "dep:retrieve:output_uri": retrieve,
            "dep:analyze:output_uri": analyze,
        }));
        let out = run(&ex, &task).await.unwrap();
        let expected = "[echo] Context:\n1. Paris is in France.\n2. Rome\n\n\
                        Previous step analyze: It is sunny.\n\nWhere is Paris?";
        assert_eq!(out["text"], expected);
    }

    /// The echo backend's output says that no model ran.
    #[tokio::test]
    async fn echo_output_is_marked() {
        let (ex, _dir) = executors(|_| {});
        let out = run(&ex, &llm(json!({"prompt": "hi", "model": "m1"})))
            .await
            .unwrap();
        assert_eq!(out["backend"], "echo");
        assert_eq!(out["model"], "m1");
        assert_eq!(out["echo"], true);
        assert!(out["note"].as_str().unwrap().contains("no model ran"));
        assert_eq!(out["usage"]["prompt_tokens"], 1);
        assert_eq!(out["finish_reason"], "stop");
    }
}
