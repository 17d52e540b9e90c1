//! Multi-row statements with bound values. A batch of rows is written with a few statements
//! of `VALUES (?, ..), (?, ..)`, not one statement per row (each a round trip to the driver's
//! thread) nor one statement over a JSON array (which SQLite re-parses for every column it
//! extracts: with a JSON body in each row, most of the cost of a write).

use sqlx::{AssertSqlSafe, SqliteConnection};

use super::rows::SqliteQuery;

/// Most rows one statement binds; SQLite allows 32766 parameters, the widest row binds 11.
const MAX_ROWS: usize = 256;

/// Row counts of the statements a batch of `n` rows is split into: powers of two, largest
/// first. Each statement kind then has at most nine texts, each prepared once and kept in
/// the connection's statement cache.
pub(crate) fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= MAX_ROWS {
            MAX_ROWS
        } else {
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        n -= size;
        Some(size)
    })
}

/// `(?, ?), (?, ?)`: `rows` groups of `cols` placeholders.
pub(crate) fn values(rows: usize, cols: usize) -> String {
    values_with(rows, cols, "")
}

/// [`values`] with `literals` (SQL constants, such as `, 'pending'`) closing every group.
pub(crate) fn values_with(rows: usize, cols: usize, literals: &str) -> String {
    let group = format!("({}{literals})", vec!["?"; cols].join(", "));
    vec![group; rows].join(", ")
}

/// Runs `sql(rows)` once per chunk of `items`, binding each item's columns with `bind`, inside
/// the caller's transaction. `sql` must build its text from literals and [`values`] only.
pub(crate) async fn execute<'a, T>(
    conn: &mut SqliteConnection,
    items: &'a [T],
    sql: impl Fn(usize) -> String,
    bind: impl Fn(SqliteQuery<'a>, &'a T) -> SqliteQuery<'a>,
) -> Result<(), sqlx::Error> {
    let mut rest = items;
    for size in chunk_sizes(items.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        // Safe: the text is made of literals and placeholders; every value is bound.
        let mut q = sqlx::query(AssertSqlSafe(sql(size)));
        for item in chunk {
            q = bind(q, item);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch splits into powers of two, capped, covering every row exactly once.
    #[test]
    fn chunks_are_capped_powers_of_two() {
        assert_eq!(chunk_sizes(0).count(), 0);
        assert_eq!(chunk_sizes(1).collect::<Vec<_>>(), [1]);
        assert_eq!(chunk_sizes(7).collect::<Vec<_>>(), [4, 2, 1]);
        assert_eq!(chunk_sizes(600).collect::<Vec<_>>(), [256, 256, 64, 16, 8]);
        for n in 0..1000 {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= MAX_ROWS));
        }
        assert_eq!(values(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(values_with(2, 1, ", 'x'"), "(?, 'x'), (?, 'x')");
    }
}
