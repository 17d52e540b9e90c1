//! DAG validation for a job's task specs, and sink discovery.

use std::collections::{HashMap, HashSet};

use crate::domain::{TaskId, TaskSpec};

use super::PlanError;

/// Checks that `specs` form a DAG the engine can run: non-empty, at most `max_tasks` tasks,
/// unique ids, and dependencies that are known, not repeated, not self-referencing and acyclic.
///
/// Runs in O(tasks + dependencies). When several problems exist, the one reported is the first
/// met walking tasks (and each task's dependencies) in order, so the same input always yields
/// the same message; cycles are checked only once every edge is known to be well-formed.
///
/// # Errors
/// The first [`PlanError`] found, as described above.
pub fn validate_dag(specs: &[TaskSpec], max_tasks: usize) -> Result<(), PlanError> {
    if specs.is_empty() {
        return Err(PlanError::Empty);
    }
    if specs.len() > max_tasks {
        return Err(PlanError::TooManyTasks {
            count: specs.len(),
            max: max_tasks,
        });
    }
    let graph = Graph::build(specs)?;
    match graph.find_cycle() {
        Some(path) => Err(PlanError::Cycle(
            path.into_iter().map(|i| specs[i].task_id.clone()).collect(),
        )),
        None => Ok(()),
    }
}

/// The tasks nothing depends on, in task order: the DAG's final outputs.
pub fn sinks(specs: &[TaskSpec]) -> Vec<TaskId> {
    let depended_on: HashSet<&TaskId> = specs.iter().flat_map(|s| &s.dependencies).collect();
    specs
        .iter()
        .filter(|s| !depended_on.contains(&s.task_id))
        .map(|s| s.task_id.clone())
        .collect()
}

/// Dependency edges by task index, in compressed-row form: task `i` depends on
/// `edges[offsets[i]..offsets[i + 1]]`. One flat vector keeps the build O(n + edges) without a
/// per-task allocation.
struct Graph {
    offsets: Vec<usize>,
    edges: Vec<usize>,
}

/// Where a task stands in the depth-first search.
#[derive(Clone, Copy)]
enum Mark {
    Unvisited,
    /// On the current search path, at this depth; meeting it again closes a cycle.
    OnPath(usize),
    Done,
}

impl Graph {
    /// Resolves every dependency to a task index, rejecting the per-task problems on the way.
    fn build(specs: &[TaskSpec]) -> Result<Graph, PlanError> {
        let mut first_index: HashMap<&TaskId, usize> = HashMap::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            first_index.entry(&spec.task_id).or_insert(i);
        }
        let mut offsets = Vec::with_capacity(specs.len() + 1);
        let mut edges = Vec::new();
        // `listed_by[j] == i + 1` when task `i` has already listed task `j`. Stamping by task
        // keeps the duplicate check O(1) without clearing a set per task, which costs its
        // capacity each time and turns quadratic after one very wide task.
        let mut listed_by = vec![0_usize; specs.len()];
        offsets.push(0);
        for (i, spec) in specs.iter().enumerate() {
            // Reported at the second occurrence, which is where the task order first shows it.
            if first_index.get(&spec.task_id) != Some(&i) {
                return Err(PlanError::DuplicateTaskId(spec.task_id.clone()));
            }
            for dep in &spec.dependencies {
                if dep == &spec.task_id {
                    return Err(PlanError::SelfDependency(spec.task_id.clone()));
                }
                let Some(&j) = first_index.get(dep) else {
                    return Err(PlanError::UnknownDependency {
                        task: spec.task_id.clone(),
                        dependency: dep.clone(),
                    });
                };
                if listed_by[j] == i + 1 {
                    return Err(PlanError::DuplicateDependency {
                        task: spec.task_id.clone(),
                        dependency: dep.clone(),
                    });
                }
                listed_by[j] = i + 1;
                edges.push(j);
            }
            offsets.push(edges.len());
        }
        Ok(Graph { offsets, edges })
    }

    /// One cycle as task indices in dependency order, or `None` for a DAG.
    ///
    /// Iterative depth-first search: a recursive one would overflow the stack on the long
    /// chains clients are allowed to submit. Roots are tried in task order so the reported
    /// cycle is deterministic, including cycles no earlier task reaches.
    fn find_cycle(&self) -> Option<Vec<usize>> {
        let n = self.offsets.len() - 1;
        let mut marks = vec![Mark::Unvisited; n];
        // (task, next edge to follow): the current search path.
        let mut path: Vec<(usize, usize)> = Vec::new();
        for root in 0..n {
            if !matches!(marks[root], Mark::Unvisited) {
                continue;
            }
            marks[root] = Mark::OnPath(0);
            path.push((root, self.offsets[root]));
            while let Some(top) = path.last_mut() {
                let (task, cursor) = *top;
                if cursor == self.offsets[task + 1] {
                    marks[task] = Mark::Done;
                    path.pop();
                    continue;
                }
                top.1 += 1;
                let next = self.edges[cursor];
                match marks[next] {
                    Mark::Unvisited => {
                        marks[next] = Mark::OnPath(path.len());
                        path.push((next, self.offsets[next]));
                    }
                    Mark::OnPath(depth) => {
                        return Some(path[depth..].iter().map(|&(t, _)| t).collect());
                    }
                    Mark::Done => {}
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::domain::TaskType;

    #[track_caller]
    fn id(s: &str) -> TaskId {
        TaskId::parse(s).unwrap()
    }

    #[track_caller]
    fn spec(task: &str, deps: &[&str]) -> TaskSpec {
        TaskSpec {
            task_id: id(task),
            task_type: TaskType::LlmInference,
            inputs: Default::default(),
            dependencies: deps.iter().map(|d| id(d)).collect(),
            max_retries: None,
            timeout_sec: None,
            resources: Default::default(),
            constraints: Default::default(),
        }
    }

    #[track_caller]
    fn error_of(specs: &[TaskSpec]) -> PlanError {
        validate_dag(specs, 100).unwrap_err()
    }

    /// A well-formed diamond passes.
    #[test]
    fn diamond_is_valid() {
        let specs = [
            spec("a", &[]),
            spec("b", &["a"]),
            spec("c", &["a"]),
            spec("d", &["b", "c"]),
        ];
        assert_eq!(validate_dag(&specs, 4), Ok(()));
    }

    /// An empty task list is rejected with its own message.
    #[test]
    fn empty_dag_is_rejected() {
        let err = error_of(&[]);
        assert_eq!(err, PlanError::Empty);
        assert_eq!(err.to_string(), "a job needs at least one task");
    }

    /// More tasks than the limit is rejected before anything else is looked at.
    #[test]
    fn too_many_tasks_is_rejected() {
        let err = validate_dag(&[spec("a", &[]), spec("a", &[])], 1).unwrap_err();
        assert_eq!(err, PlanError::TooManyTasks { count: 2, max: 1 });
        assert_eq!(err.to_string(), "job has 2 tasks; the limit is 1");
    }

    /// A repeated id is reported by name.
    #[test]
    fn duplicate_task_id_is_rejected() {
        let err = error_of(&[spec("t1", &[]), spec("t2", &[]), spec("t1", &[])]);
        assert_eq!(err, PlanError::DuplicateTaskId(id("t1")));
        assert_eq!(err.to_string(), "duplicate task id `t1`");
    }

    /// A dependency on a missing task names both tasks.
    #[test]
    fn unknown_dependency_is_rejected() {
        let err = error_of(&[spec("t1", &[]), spec("t2", &["t1", "t9"])]);
        assert_eq!(
            err,
            PlanError::UnknownDependency {
                task: id("t2"),
                dependency: id("t9")
            }
        );
        assert_eq!(err.to_string(), "task `t2` depends on unknown task `t9`");
    }

    /// A task depending on itself is its own error, not a one-task cycle.
    #[test]
    fn self_dependency_is_rejected() {
        let err = error_of(&[spec("a", &["a"])]);
        assert_eq!(err, PlanError::SelfDependency(id("a")));
        assert_eq!(err.to_string(), "task `a` depends on itself");
    }

    /// Listing one dependency twice is rejected.
    #[test]
    fn duplicate_dependency_is_rejected() {
        let err = error_of(&[spec("a", &[]), spec("b", &["a", "a"])]);
        assert_eq!(
            err,
            PlanError::DuplicateDependency {
                task: id("b"),
                dependency: id("a")
            }
        );
        assert_eq!(
            err.to_string(),
            "task `b` lists dependency `a` more than once"
        );
    }

    /// The reported cycle is the concrete path, in dependency order, closed in the message.
    #[test]
    fn cycle_reports_its_path_in_order() {
        let err = error_of(&[spec("a", &["b"]), spec("b", &["c"]), spec("c", &["a"])]);
        assert_eq!(err, PlanError::Cycle(vec![id("a"), id("b"), id("c")]));
        assert_eq!(err.to_string(), "dependency cycle: a -> b -> c -> a");
    }

    /// A cycle no earlier task reaches is still found, without the tasks leading into it.
    #[test]
    fn cycle_unreachable_from_first_task_is_found() {
        let specs = [
            spec("root", &[]),
            spec("lead", &["p"]),
            spec("x", &["root"]),
            spec("p", &["q"]),
            spec("q", &["r"]),
            spec("r", &["p"]),
        ];
        let err = error_of(&specs);
        assert_eq!(err.to_string(), "dependency cycle: p -> q -> r -> p");
    }

    /// The first problem in task order wins, so messages are stable.
    #[test]
    fn first_problem_in_task_order_is_reported() {
        let specs = [spec("a", &["zz"]), spec("b", &["b"]), spec("a", &[])];
        assert_eq!(
            error_of(&specs),
            PlanError::UnknownDependency {
                task: id("a"),
                dependency: id("zz")
            }
        );
    }

    /// Ten thousand tasks, deep or wide, validate in linear time without exhausting the stack.
    #[test]
    fn ten_thousand_task_chain_validates_quickly() {
        const N: usize = 10_000;
        let names: Vec<String> = (0..N).map(|i| format!("t{i}")).collect();
        // Each task depends on the next, so the search descends all N levels from the first.
        let mut chain: Vec<TaskSpec> = (0..N)
            .map(|i| match names.get(i + 1) {
                Some(next) => spec(&names[i], &[next.as_str()]),
                None => spec(&names[i], &[]),
            })
            .collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        // A fan-in over N tasks followed by N narrow tasks: the shape where per-task
        // bookkeeping sized by the widest task would go quadratic.
        let mut wide: Vec<TaskSpec> = names.iter().map(|n| spec(n, &[])).collect();
        wide.push(spec("fan-in", &all));
        wide.extend((0..N).map(|i| spec(&format!("u{i}"), &["fan-in"])));

        let started = Instant::now();
        let chain_result = validate_dag(&chain, N);
        let wide_result = validate_dag(&wide, 2 * N + 1);
        chain[N - 1].dependencies.push(id("t0"));
        let cycle = validate_dag(&chain, N);
        let elapsed = started.elapsed();

        assert_eq!(chain_result, Ok(()));
        assert_eq!(wide_result, Ok(()));
        assert!(
            matches!(cycle, Err(PlanError::Cycle(path)) if path.len() == N && path[0] == id("t0"))
        );
        // Linear work is a few milliseconds even unoptimised; a quadratic pass is ~10^8 steps.
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }

    /// Sinks are the tasks nothing depends on, in task order.
    #[test]
    fn sinks_are_undepended_tasks_in_order() {
        let specs = [
            spec("a", &[]),
            spec("b", &["a"]),
            spec("c", &[]),
            spec("d", &["a"]),
        ];
        assert_eq!(sinks(&specs), vec![id("b"), id("c"), id("d")]);
    }
}
