//! The table: its key schema and indexes, checked (or, with `SPLAI_AWS_CREATE_RESOURCES`,
//! created) at start-up. The layout is described in `DESIGN.md` beside this file.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    LocalSecondaryIndex, Projection, ProjectionType, ScalarAttributeType, TableDescription,
    TableStatus, TimeToLiveSpecification,
};

use crate::store::StoreError;

/// The global secondary indexes, each keyed `<name>pk` / `<name>sk` (strings). Item kinds share
/// them (see DESIGN.md): an item is in an index only while it has that index's attributes.
pub(super) const GSIS: [&str; 5] = ["gsi1", "gsi2", "gsi3", "gsi4", "gsi5"];

/// The local secondary index (`pk` / `lsi1sk`): streamed chunks in id order, read strongly
/// consistent.
pub(super) const LSI: &str = "lsi1";

/// The attribute DynamoDB deletes expired items by (epoch seconds).
pub(super) const TTL_ATTRIBUTE: &str = "expires_at";

/// The attributes copied into the global indexes beside the keys: what the listings read, and
/// never the tasks of a job (the bulk of its item).
const PROJECTED: [&str; 14] = [
    "body",
    "payload",
    "tenant",
    "status",
    "job_type",
    "stale_ms",
    "state",
    "next_ms",
    "lease_until",
    "reg",
    "load",
    "heartbeat_ms",
    "registered_ms",
    "worker_id",
];

fn unavailable(table: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "dynamodb table `{table}` (SPLAI_DYNAMODB_TABLE): {what}"
    ))
}

/// Checks `table` exists (waiting while it is being created), or creates it when `create` is
/// set; a missing table otherwise fails naming it.
pub(super) async fn ensure(client: &Client, table: &str, create: bool) -> Result<(), StoreError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => {
            check_indexes(table, out.table())?;
            wait_active(client, table).await
        }
        Err(e) if e.code() == Some("ResourceNotFoundException") => {
            if !create {
                return Err(unavailable(
                    table,
                    "does not exist; create it as shared/src/store/dynamodb/DESIGN.md describes, \
                     or set SPLAI_AWS_CREATE_RESOURCES=true (development only)",
                ));
            }
            create_table(client, table).await
        }
        Err(e) => Err(unavailable(table, DisplayErrorContext(&e))),
    }
}

/// Fails naming the first index the store needs that the table lacks (a table made by hand
/// or for something else).
fn check_indexes(table: &str, found: Option<&TableDescription>) -> Result<(), StoreError> {
    let mut names: Vec<&str> = Vec::new();
    if let Some(t) = found {
        names.extend(
            t.global_secondary_indexes()
                .iter()
                .filter_map(|i| i.index_name()),
        );
        names.extend(
            t.local_secondary_indexes()
                .iter()
                .filter_map(|i| i.index_name()),
        );
    }
    match GSIS.iter().chain([&LSI]).find(|i| !names.contains(i)) {
        Some(missing) => Err(unavailable(
            table,
            format!(
                "has no index `{missing}`; it was not made for this store (see shared/src/store/dynamodb/DESIGN.md)"
            ),
        )),
        None => Ok(()),
    }
}

/// Polls until the table is `ACTIVE` (a minute at most).
async fn wait_active(client: &Client, table: &str) -> Result<(), StoreError> {
    for _ in 0..120 {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| unavailable(table, DisplayErrorContext(&e)))?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(unavailable(table, "did not become ACTIVE within a minute"))
}

fn key_element(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn string_attribute(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Creates the table on demand (pay per request) with its indexes and TTL. Another process
/// creating it at the same moment is fine: both wait for it to become active.
async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let projection = Projection::builder()
        .projection_type(ProjectionType::Include)
        .set_non_key_attributes(Some(PROJECTED.iter().map(|a| (*a).to_owned()).collect()))
        .build();
    let mut create = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key_element("pk", KeyType::Hash)?)
        .key_schema(key_element("sk", KeyType::Range)?)
        .attribute_definitions(string_attribute("pk")?)
        .attribute_definitions(string_attribute("sk")?)
        .attribute_definitions(string_attribute("lsi1sk")?)
        .local_secondary_indexes(
            LocalSecondaryIndex::builder()
                .index_name(LSI)
                .key_schema(key_element("pk", KeyType::Hash)?)
                .key_schema(key_element("lsi1sk", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
    for g in GSIS {
        let (pk, sk) = (format!("{g}pk"), format!("{g}sk"));
        create = create
            .attribute_definitions(string_attribute(&pk)?)
            .attribute_definitions(string_attribute(&sk)?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(g)
                    .key_schema(key_element(&pk, KeyType::Hash)?)
                    .key_schema(key_element(&sk, KeyType::Range)?)
                    .projection(projection.clone())
                    .build()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
    }
    match create.send().await {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceInUseException") => {}
        Err(e) => return Err(unavailable(table, DisplayErrorContext(&e))),
    }
    wait_active(client, table).await?;
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    match client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(ttl)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // A racing creator enabled it first.
        Err(e) if e.code() == Some("ValidationException") => Ok(()),
        Err(e) => Err(unavailable(table, DisplayErrorContext(&e))),
    }
}
