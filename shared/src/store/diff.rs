//! What a change did to a job's tasks, for backends that write only the rows that differ.

use foldhash::HashMap;

use crate::domain::{JobRecord, Task, TaskId};

/// How a task of the changed record differs from the record before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskChange {
    /// New in the record.
    Added,
    /// Changed, at the same position.
    Changed,
    /// At another position (changed or not).
    Moved,
}

/// The tasks of `after` that differ from `before`, with their positions in `after`, and the
/// tasks of `before` that `after` no longer has.
pub(crate) fn task_changes<'a>(
    before: &'a JobRecord,
    after: &'a JobRecord,
) -> (Vec<(usize, &'a Task, TaskChange)>, Vec<&'a TaskId>) {
    let old: HashMap<&TaskId, (usize, &Task)> = before
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (&t.task_id, (i, t)))
        .collect();
    let mut changed = Vec::new();
    for (position, task) in after.tasks.iter().enumerate() {
        let change = match old.get(&task.task_id) {
            None => TaskChange::Added,
            Some(&(p, t)) if p == position && t == task => continue,
            Some(&(p, _)) if p == position => TaskChange::Changed,
            Some(_) => TaskChange::Moved,
        };
        changed.push((position, task, change));
    }
    let gone = before
        .tasks
        .iter()
        .filter(|t| after.task(&t.task_id).is_none())
        .map(|t| &t.task_id)
        .collect();
    (changed, gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::records::{a_record, a_task};

    /// Added, changed in place, moved and removed tasks are told apart; unchanged ones are
    /// left out.
    #[test]
    fn tells_added_changed_moved_and_gone_tasks_apart() {
        let before = a_record("job-1", &["a", "b", "c", "d"]);
        let mut after = before.clone();
        after.tasks[0].attempt += 1; // a: changed in place
        after.tasks.swap(1, 2); // b and c: moved
        after.tasks.remove(3); // d: gone
        let extra = a_task(&after.job, "e");
        after.tasks.push(extra); // e: added
        let (changed, gone) = task_changes(&before, &after);
        let changed: Vec<_> = changed
            .iter()
            .map(|(p, t, c)| (*p, t.task_id.as_str(), *c))
            .collect();
        assert_eq!(
            changed,
            [
                (0, "a", TaskChange::Changed),
                (1, "c", TaskChange::Moved),
                (2, "b", TaskChange::Moved),
                (3, "e", TaskChange::Added),
            ]
        );
        let gone: Vec<_> = gone.iter().map(|t| t.as_str()).collect();
        assert_eq!(gone, ["d"]);
        assert_eq!(task_changes(&before, &before), (Vec::new(), Vec::new()));
    }
}
