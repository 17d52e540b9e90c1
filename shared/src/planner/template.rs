//! The template planner: a deterministic decomposition of a job by its type.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::domain::{NewJob, TaskId, TaskSpec, TaskType};

use super::sinks;

/// The DAG for a job, chosen by `job.job_type`:
///
/// - `chat` (and any unknown type): `generate`, one `llm_inference` over `{"prompt": input}`.
/// - `embedding`: `embed`, one `embedding` task over `{"input": input}`.
/// - `batch_analysis`: `analyze-0`..`analyze-{N-1}`, one `llm_inference` per item of a JSON
///   array input (any other input is one item), then `aggregate` depending on all of them.
/// - `rag` / `retrieval_qa`: `retrieve` over `{"query": input}`, then `generate` after it.
///
/// Model-using tasks carry `"model"` in their inputs and as a placement constraint when the job
/// names one. Retries, timeouts and resources are left for the engine's defaults. Never empty.
pub fn template(job: &NewJob) -> Vec<TaskSpec> {
    match job.job_type.as_str() {
        "embedding" => vec![model_task(
            job,
            fixed_id("embed"),
            TaskType::Embedding,
            "input",
            job.input.clone(),
        )],
        "batch_analysis" => batch_analysis(job),
        "rag" | "retrieval_qa" => retrieval_qa(job),
        // An unknown type still gets an answer: one inference over the input is the most useful
        // reading of any job, and rejecting new types here would couple clients to this list.
        _ => vec![generate(job)],
    }
}

/// Appends an `aggregation` task depending on every sink of `specs`, so the job ends in one
/// output. A DAG already ending in a single aggregation task is returned unchanged, as is an
/// empty one (there is nothing to aggregate; validation rejects it).
///
/// The new task is `aggregate`, or `aggregate-final` (then `aggregate-final-final`, ...) when
/// that id is taken.
pub fn with_aggregation_tail(mut specs: Vec<TaskSpec>) -> Vec<TaskSpec> {
    let sinks = sinks(&specs);
    if specs.is_empty() || ends_in_aggregation(&specs, &sinks) {
        return specs;
    }
    let tail = task(tail_id(&specs), TaskType::Aggregation, Map::new(), sinks);
    specs.push(tail);
    specs
}

fn ends_in_aggregation(specs: &[TaskSpec], sinks: &[TaskId]) -> bool {
    match sinks {
        [only] => specs
            .iter()
            .any(|s| &s.task_id == only && s.task_type == TaskType::Aggregation),
        _ => false,
    }
}

fn tail_id(specs: &[TaskSpec]) -> TaskId {
    let taken: HashSet<&str> = specs.iter().map(|s| s.task_id.as_str()).collect();
    let finals = (0..).map(|k| format!("aggregate{}", "-final".repeat(k)));
    // Ids have a length cap, so a DAG could hold every `-final` name that fits; numbered names
    // then guarantee a free one.
    let numbered = (2_usize..).map(|n| format!("aggregate-final-{n}"));
    finals
        .map_while(|c| TaskId::parse(c).ok())
        .chain(numbered.filter_map(|c| TaskId::parse(c).ok()))
        .find(|id| !taken.contains(id.as_str()))
        // Invariant: only finitely many ids are taken and the numbered candidates never end.
        .expect("an unused aggregate id always exists")
}

fn generate(job: &NewJob) -> TaskSpec {
    model_task(
        job,
        fixed_id("generate"),
        TaskType::LlmInference,
        "prompt",
        job.input.clone(),
    )
}

fn batch_analysis(job: &NewJob) -> Vec<TaskSpec> {
    let items = match &job.input {
        Value::Array(items) if !items.is_empty() => items.clone(),
        // An empty array is still one item: a job must have at least one task, and analysing
        // "nothing" is a more honest answer than refusing the job.
        other => vec![other.clone()],
    };
    let mut specs: Vec<TaskSpec> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            model_task(
                job,
                numbered_id("analyze", i),
                TaskType::LlmInference,
                "prompt",
                item,
            )
        })
        .collect();
    let all = specs.iter().map(|s| s.task_id.clone()).collect();
    specs.push(task(
        fixed_id("aggregate"),
        TaskType::Aggregation,
        Map::new(),
        all,
    ));
    specs
}

fn retrieval_qa(job: &NewJob) -> Vec<TaskSpec> {
    let retrieve = task(
        fixed_id("retrieve"),
        TaskType::Retrieval,
        Map::from_iter([("query".to_owned(), job.input.clone())]),
        Vec::new(),
    );
    let mut generate = generate(job);
    generate.dependencies.push(retrieve.task_id.clone());
    vec![retrieve, generate]
}

/// A task that runs a model: `{key: input}` plus the job's model, which also becomes a hard
/// constraint so only a worker serving it claims the task.
fn model_task(job: &NewJob, id: TaskId, task_type: TaskType, key: &str, input: Value) -> TaskSpec {
    let mut inputs = Map::from_iter([(key.to_owned(), input)]);
    if let Some(model) = &job.model {
        inputs.insert("model".to_owned(), Value::String(model.clone()));
    }
    let mut spec = task(id, task_type, inputs, Vec::new());
    spec.constraints.model = job.model.clone();
    spec
}

fn task(
    task_id: TaskId,
    task_type: TaskType,
    inputs: Map<String, Value>,
    dependencies: Vec<TaskId>,
) -> TaskSpec {
    TaskSpec {
        task_id,
        task_type,
        inputs,
        dependencies,
        max_retries: None,
        timeout_sec: None,
        resources: Default::default(),
        constraints: Default::default(),
    }
}

fn fixed_id(id: &'static str) -> TaskId {
    // Invariant: callers pass short lowercase literals, which are always valid ids.
    TaskId::parse(id).expect("template task ids are valid")
}

fn numbered_id(prefix: &'static str, n: usize) -> TaskId {
    // Invariant: a short literal prefix, a dash and decimal digits stay well inside the id rules.
    TaskId::parse(format!("{prefix}-{n}")).expect("numbered template task ids are valid")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::planner::validate_dag;

    fn job(job_type: &str, input: Value, model: Option<&str>) -> NewJob {
        NewJob {
            job_type: job_type.to_owned(),
            input,
            model: model.map(str::to_owned),
            ..Default::default()
        }
    }

    fn ids(specs: &[TaskSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.task_id.as_str()).collect()
    }

    fn deps(spec: &TaskSpec) -> Vec<&str> {
        spec.dependencies.iter().map(TaskId::as_str).collect()
    }

    #[track_caller]
    fn valid(specs: Vec<TaskSpec>) -> Vec<TaskSpec> {
        validate_dag(&specs, 1_000).unwrap();
        specs
    }

    /// Chat is one inference over the prompt, with the model as input and constraint.
    #[test]
    fn chat_is_one_generate_task_carrying_the_model() {
        let specs = valid(template(&job("chat", json!("hello"), Some("llama3"))));

        assert_eq!(ids(&specs), ["generate"]);
        let generate = &specs[0];
        assert_eq!(generate.task_type, TaskType::LlmInference);
        assert_eq!(
            Value::Object(generate.inputs.clone()),
            json!({"prompt": "hello", "model": "llama3"})
        );
        assert_eq!(generate.constraints.model.as_deref(), Some("llama3"));
        assert_eq!((generate.max_retries, generate.timeout_sec), (None, None));
        assert_eq!(generate.resources, Default::default());
    }

    /// Without a model, neither the inputs nor the constraints name one.
    #[test]
    fn chat_without_model_leaves_model_unset() {
        let specs = template(&job("chat", json!("hello"), None));

        assert_eq!(
            Value::Object(specs[0].inputs.clone()),
            json!({"prompt": "hello"})
        );
        assert_eq!(specs[0].constraints.model, None);
    }

    /// Unknown job types are planned like chat.
    #[test]
    fn unknown_type_is_planned_like_chat() {
        let specs = template(&job("summarise_legal_docs", json!({"doc": 1}), None));

        assert_eq!(ids(&specs), ["generate"]);
        assert_eq!(
            Value::Object(specs[0].inputs.clone()),
            json!({"prompt": {"doc": 1}})
        );
    }

    /// Embedding is one embed task over the input.
    #[test]
    fn embedding_is_one_embed_task() {
        let specs = valid(template(&job(
            "embedding",
            json!(["a", "b"]),
            Some("nomic"),
        )));

        assert_eq!(ids(&specs), ["embed"]);
        assert_eq!(specs[0].task_type, TaskType::Embedding);
        assert_eq!(
            Value::Object(specs[0].inputs.clone()),
            json!({"input": ["a", "b"], "model": "nomic"})
        );
    }

    /// A batch fans out one analysis per array item and fans in to one aggregation.
    #[test]
    fn batch_analysis_fans_out_per_item_and_aggregates() {
        let specs = valid(template(&job(
            "batch_analysis",
            json!(["x", {"y": 2}, 3]),
            None,
        )));

        assert_eq!(
            ids(&specs),
            ["analyze-0", "analyze-1", "analyze-2", "aggregate"]
        );
        assert_eq!(
            Value::Object(specs[1].inputs.clone()),
            json!({"prompt": {"y": 2}})
        );
        assert!(
            specs[..3]
                .iter()
                .all(|s| s.task_type == TaskType::LlmInference && s.dependencies.is_empty())
        );
        assert_eq!(specs[3].task_type, TaskType::Aggregation);
        assert_eq!(deps(&specs[3]), ["analyze-0", "analyze-1", "analyze-2"]);
    }

    /// A non-array batch input, or an empty array, is analysed as a single item.
    #[test]
    fn batch_analysis_treats_non_array_and_empty_array_as_one_item() {
        for input in [json!("one document"), json!([])] {
            let specs = valid(template(&job("batch_analysis", input.clone(), None)));

            assert_eq!(ids(&specs), ["analyze-0", "aggregate"]);
            assert_eq!(
                Value::Object(specs[0].inputs.clone()),
                json!({"prompt": input})
            );
        }
    }

    /// RAG retrieves on the query, then generates after retrieval.
    #[test]
    fn rag_retrieves_then_generates() {
        for job_type in ["rag", "retrieval_qa"] {
            let specs = valid(template(&job(job_type, json!("what is splai?"), Some("m"))));

            assert_eq!(ids(&specs), ["retrieve", "generate"]);
            assert_eq!(specs[0].task_type, TaskType::Retrieval);
            assert_eq!(
                Value::Object(specs[0].inputs.clone()),
                json!({"query": "what is splai?"})
            );
            assert_eq!(specs[0].constraints.model, None);
            assert_eq!(specs[1].task_type, TaskType::LlmInference);
            assert_eq!(deps(&specs[1]), ["retrieve"]);
        }
    }

    /// The tail depends on every sink, in task order.
    #[test]
    fn aggregation_tail_depends_on_all_sinks() {
        let specs = valid(with_aggregation_tail(template(&job(
            "rag",
            json!("q"),
            None,
        ))));

        assert_eq!(ids(&specs), ["retrieve", "generate", "aggregate"]);
        assert_eq!(specs[2].task_type, TaskType::Aggregation);
        assert_eq!(deps(&specs[2]), ["generate"]);
    }

    /// A DAG already ending in one aggregation gets no second one.
    #[test]
    fn aggregation_tail_is_not_added_twice() {
        let batch = template(&job("batch_analysis", json!([1, 2]), None));

        assert_eq!(with_aggregation_tail(batch.clone()), batch);
    }

    /// A single sink that is not an aggregation still gets a tail.
    #[test]
    fn aggregation_tail_follows_a_lone_non_aggregation_sink() {
        let specs = with_aggregation_tail(template(&job("chat", json!("hi"), None)));

        assert_eq!(ids(&specs), ["generate", "aggregate"]);
    }

    /// When `aggregate` is taken the tail's id gains `-final` until it is unique.
    #[test]
    fn aggregation_tail_id_avoids_taken_ids() {
        let mut specs = template(&job("chat", json!("hi"), None));
        specs[0].task_id = TaskId::parse("aggregate").unwrap();
        let mut extra = specs[0].clone();
        extra.task_id = TaskId::parse("aggregate-final").unwrap();
        specs.push(extra);

        let specs = valid(with_aggregation_tail(specs));

        assert_eq!(
            ids(&specs),
            ["aggregate", "aggregate-final", "aggregate-final-final"]
        );
        assert_eq!(deps(&specs[2]), ["aggregate", "aggregate-final"]);
    }

    /// Even when every `-final` id that fits the length cap is taken, a fresh id is found.
    #[test]
    fn aggregation_tail_id_survives_exhausted_final_names() {
        let base = template(&job("chat", json!("hi"), None)).remove(0);
        let specs: Vec<TaskSpec> = (0..)
            .map_while(|k| TaskId::parse(format!("aggregate{}", "-final".repeat(k))).ok())
            .map(|task_id| TaskSpec {
                task_id,
                ..base.clone()
            })
            .collect();

        let specs = valid(with_aggregation_tail(specs));

        assert_eq!(specs.last().unwrap().task_id.as_str(), "aggregate-final-2");
    }

    /// An empty DAG stays empty rather than becoming a lone aggregation of nothing.
    #[test]
    fn aggregation_tail_leaves_empty_dag_empty() {
        assert!(with_aggregation_tail(Vec::new()).is_empty());
    }
}
