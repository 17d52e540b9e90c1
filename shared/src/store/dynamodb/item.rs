//! Attribute values in and out, ordering numbers, errors, and the one transaction helper.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::DynamoDb;
use crate::store::StoreError;

/// One item: attribute name to value.
pub(super) type Item = HashMap<String, AttributeValue>;

/// Items per `TransactWriteItems` (DynamoDB's limit).
pub(super) const TX_MAX_ITEMS: usize = 100;
/// Bytes per transaction we aim to stay under (DynamoDB's limit is 4 MB).
pub(super) const TX_MAX_BYTES: usize = 3_500_000;
/// Bytes of one item we allow (DynamoDB's limit is 400 KB, keys and index keys included).
pub(super) const ITEM_MAX_BYTES: usize = 390_000;

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A number as a fixed-width string, so that string order is number order in sort keys.
pub(super) fn pad(v: i64) -> String {
    format!("{:020}", v.max(0))
}

/// An item's key.
pub(super) fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn corrupt(name: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("dynamodb attribute `{name}`: {what}"))
}

/// A string attribute.
pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    opt_s(item, name)?.ok_or_else(|| corrupt(name, "missing"))
}

/// A string attribute that may be absent.
pub(super) fn opt_s<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v)),
        Some(_) => Err(corrupt(name, "not a string")),
    }
}

/// A number attribute.
pub(super) fn get_n<T: FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    opt_n(item, name)?.ok_or_else(|| corrupt(name, "missing"))
}

/// A number attribute that may be absent.
pub(super) fn opt_n<T: FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| corrupt(name, format!("`{v}` is not a number of the expected kind"))),
        Some(_) => Err(corrupt(name, "not a number")),
    }
}

/// A JSON string attribute, decoded.
pub(super) fn json<T: DeserializeOwned>(item: &Item, name: &str) -> Result<T, StoreError> {
    serde_json::from_str(get_s(item, name)?).map_err(|e| corrupt(name, e))
}

/// A value as JSON text.
pub(super) fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("encoding: {e}")))
}

/// Roughly the stored size of an item (names plus values), to check the item and transaction
/// limits before DynamoDB refuses the request.
pub(super) fn size_of(item: &Item) -> usize {
    item.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
                    AttributeValue::M(m) => size_of(m) + 3,
                    AttributeValue::Ns(v) => v.iter().map(String::len).sum::<usize>() + 3,
                    _ => 8,
                }
        })
        .sum()
}

static LAST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The first of `count` consecutive ordering numbers, each above every number this process
/// handed out before and close to the wall clock (microseconds × 16, the low bits random so
/// that two processes in one microsecond rarely pick the same). Orders jobs for listing and
/// outbox items for the relay without a shared counter item (a hot key).
pub(super) fn next_seq(count: u64) -> i64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 32));
    let now = micros * 16 + rand::random_range(0..16u64);
    let mut prev = LAST_SEQ.load(Ordering::Acquire);
    loop {
        let first = now.max(prev + 1);
        match LAST_SEQ.compare_exchange_weak(
            prev,
            first + count.max(1) - 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return i64::try_from(first).unwrap_or(i64::MAX),
            Err(p) => prev = p,
        }
    }
}

/// A failed call as a store error: every SDK failure here is one the caller may retry (the
/// SDK has already retried throttling and transient faults), except a missing table, which is
/// named.
pub(super) fn sdk_err<E>(db: &DynamoDb, op: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if e.code() == Some("ResourceNotFoundException") {
        return StoreError::Unavailable(format!(
            "dynamodb {op}: table `{}` not found (SPLAI_DYNAMODB_TABLE)",
            db.table
        ));
    }
    StoreError::Unavailable(format!("dynamodb {op}: {}", DisplayErrorContext(&e)))
}

/// What a transaction did.
#[derive(Debug)]
pub(super) enum TxOutcome {
    /// Every item was written.
    Done,
    /// Nothing was written: the conditions of these items (by index) failed.
    Failed(Vec<usize>),
    /// Nothing was written: another transaction held an item; try again.
    Busy,
}

/// Runs one `TransactWriteItems`: all of `items` or none.
pub(super) async fn transact(
    db: &DynamoDb,
    op: &str,
    items: Vec<TransactWriteItem>,
) -> Result<TxOutcome, StoreError> {
    if items.is_empty() {
        return Ok(TxOutcome::Done);
    }
    // The token makes the SDK's own retries of this request idempotent on DynamoDB: a retry
    // of a transaction that committed succeeds instead of failing its conditions.
    let out = db
        .client
        .transact_write_items()
        .set_transact_items(Some(items))
        .client_request_token(uuid::Uuid::now_v7().to_string())
        .send()
        .await;
    match out {
        Ok(_) => Ok(TxOutcome::Done),
        Err(e) => match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                let codes: Vec<&str> = c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None"))
                    .collect();
                let failed: Vec<usize> = codes
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == "ConditionalCheckFailed")
                    .map(|(i, _)| i)
                    .collect();
                if !failed.is_empty() {
                    Ok(TxOutcome::Failed(failed))
                } else if codes
                    .iter()
                    .any(|c| matches!(*c, "TransactionConflict" | "ThrottlingError"))
                {
                    Ok(TxOutcome::Busy)
                } else {
                    Err(sdk_err(db, op, e))
                }
            }
            Some(TransactWriteItemsError::TransactionInProgressException(_)) => Ok(TxOutcome::Busy),
            _ => Err(sdk_err(db, op, e)),
        },
    }
}

/// Attempts an optimistic write makes before giving up: each failed attempt means another
/// writer committed in between, so this many in a row means heavy contention on one item.
pub(super) const ATTEMPTS: u32 = 50;

/// A short, growing, jittered pause between optimistic attempts, so racing writers spread out.
pub(super) async fn pause(attempt: u32) {
    let cap = 5u64 * u64::from(attempt.min(20));
    let ms = rand::random_range(1..=cap.max(2));
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// A transaction put of a new item, failing if its key is taken.
pub(super) fn put_new(db: &DynamoDb, item: Item) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(&db.table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A transaction put replacing an item that is still at `version`.
pub(super) fn put_at(
    db: &DynamoDb,
    item: Item,
    version: i64,
) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(&db.table)
        .set_item(Some(item))
        .condition_expression("#ver = :v")
        .expression_attribute_names("#ver", "version")
        .expression_attribute_values(":v", n(version))
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A transaction check that the item at `key` is still at `version`.
pub(super) fn check_at(
    db: &DynamoDb,
    key: Item,
    version: i64,
) -> Result<TransactWriteItem, StoreError> {
    let check = ConditionCheck::builder()
        .table_name(&db.table)
        .set_key(Some(key))
        .condition_expression("#ver = :v")
        .expression_attribute_names("#ver", "version")
        .expression_attribute_values(":v", n(version))
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

/// Every item of a query, page by page; `shape` sets its key condition.
pub(super) async fn query_all(
    db: &DynamoDb,
    shape: impl FnOnce(QueryFluentBuilder) -> QueryFluentBuilder,
) -> Result<Vec<Item>, StoreError> {
    let query = shape(db.client.query().table_name(&db.table));
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = query
            .clone()
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_err(db, "query", e))?;
        items.extend(page.items().iter().cloned());
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(items);
        }
    }
}
