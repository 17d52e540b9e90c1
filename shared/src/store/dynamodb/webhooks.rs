//! The webhook outbox: one item per delivery (`HOOK#<id>`), written by `update_jobs` in the
//! transaction of the change that owes it. Pending deliveries sit in the due index (`gsi2`,
//! by next attempt); a claim leases each candidate with a conditional update, so two gateways
//! never hold one delivery at once.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{ReturnValue, TransactWriteItem};

use super::item::{
    ATTEMPTS, Item, get_s, json, key, n, opt_n, opt_s, pad, put_new, query_all, s, sdk_err, to_json,
};
use super::{DynamoDb, DynamoStore};
use crate::clock::to_millis;
use crate::domain::{DeliveryState, JobId, Timestamp, WebhookAttempt, WebhookDelivery};
use crate::store::{AttemptOutcome, StoreError, WebhookOutbox};

fn hook_key(delivery_id: &str) -> Item {
    key(format!("HOOK#{delivery_id}"), "HOOK")
}

/// A delivery's item: the delivery as JSON (its body apart, as sent), its state, its due time
/// and index keys; `lease` is the deliverer holding it.
fn hook_item(d: &WebhookDelivery, lease: Option<(&str, i64)>) -> Result<Item, StoreError> {
    let mut item = hook_key(&d.delivery_id);
    item.insert("body".into(), s(to_json(d)?));
    item.insert("payload".into(), s(d.body.as_str()));
    item.insert("state".into(), s(d.state.as_str()));
    item.insert("gsi1pk".into(), s(format!("HOOKS#{}", d.job_id)));
    item.insert(
        "gsi1sk".into(),
        s(format!(
            "{}#{}",
            pad(to_millis(d.created_at)),
            d.delivery_id
        )),
    );
    if let (DeliveryState::Pending, Some(next)) = (d.state, d.next_attempt_at) {
        let next = to_millis(next);
        item.insert("next_ms".into(), n(next));
        item.insert("gsi2pk".into(), s("HOOKDUE"));
        item.insert(
            "gsi2sk".into(),
            s(format!("{}#{}", pad(next), d.delivery_id)),
        );
    }
    if let Some((token, until)) = lease {
        item.insert("lease_token".into(), s(token));
        item.insert("lease_until".into(), n(until));
    }
    Ok(item)
}

fn decode(item: &Item) -> Result<WebhookDelivery, StoreError> {
    let mut d: WebhookDelivery = json(item, "body")?;
    d.body = get_s(item, "payload")?.to_owned();
    Ok(d)
}

/// The transaction items writing new deliveries.
pub(super) fn writes(
    db: &DynamoDb,
    deliveries: &[WebhookDelivery],
) -> Result<Vec<TransactWriteItem>, StoreError> {
    deliveries
        .iter()
        .map(|d| put_new(db, hook_item(d, None)?))
        .collect()
}

#[async_trait]
impl WebhookOutbox for DynamoStore {
    async fn claim_webhooks(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        token: &str,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let db = &self.db;
        let (now, until) = (to_millis(now), to_millis(lease_until));
        let query = db
            .client
            .query()
            .table_name(&db.table)
            .index_name("gsi2")
            .key_condition_expression("#pk = :due AND #sk < :upto")
            .filter_expression("attribute_not_exists(#lu) OR #lu <= :now")
            .expression_attribute_names("#pk", "gsi2pk")
            .expression_attribute_names("#sk", "gsi2sk")
            .expression_attribute_names("#lu", "lease_until")
            .expression_attribute_values(":due", s("HOOKDUE"))
            // Every key due at `now` or earlier sorts before `<now>~`.
            .expression_attribute_values(":upto", s(format!("{}~", pad(now))))
            .expression_attribute_values(":now", n(now));
        let mut out = Vec::new();
        let mut start = None;
        while out.len() < limit {
            let page = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_err(db, "query", e))?;
            for candidate in page.items() {
                if out.len() == limit {
                    break;
                }
                let id = decode(candidate)?.delivery_id;
                // The index may lag the table: the condition decides, on the item itself.
                let leased = db
                    .client
                    .update_item()
                    .table_name(&db.table)
                    .set_key(Some(hook_key(&id)))
                    .update_expression("SET #lt = :t, #lu = :u")
                    .condition_expression(
                        "#st = :pending AND #nx <= :now AND (attribute_not_exists(#lu) OR #lu <= :now)",
                    )
                    .expression_attribute_names("#lt", "lease_token")
                    .expression_attribute_names("#lu", "lease_until")
                    .expression_attribute_names("#st", "state")
                    .expression_attribute_names("#nx", "next_ms")
                    .expression_attribute_values(":t", s(token))
                    .expression_attribute_values(":u", n(until))
                    .expression_attribute_values(":pending", s(DeliveryState::Pending.as_str()))
                    .expression_attribute_values(":now", n(now))
                    .return_values(ReturnValue::AllNew)
                    .send()
                    .await;
                match leased {
                    Ok(o) => out.push(decode(o.attributes().unwrap_or(&Item::new()))?),
                    // Another deliverer took it first.
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
                    Err(e) => return Err(sdk_err(db, "update_item", e)),
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        out.sort_by_key(|d| d.next_attempt_at);
        Ok(out)
    }

    async fn record_webhook_attempt(
        &self,
        delivery_id: &str,
        token: &str,
        attempt: &WebhookAttempt,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let db = &self.db;
        for _ in 0..ATTEMPTS {
            let got = db
                .client
                .get_item()
                .table_name(&db.table)
                .set_key(Some(hook_key(delivery_id)))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_err(db, "get_item", e))?;
            let Some(item) = got.item() else {
                return Ok(false);
            };
            if opt_s(item, "lease_token")? != Some(token) {
                return Ok(false);
            }
            let mut d = decode(item)?;
            d.attempts += 1;
            d.attempt_log.push(attempt.clone());
            (d.state, d.next_attempt_at) = outcome.state_and_next();
            // Replaced only while the lease is still this one (and unchanged since read).
            let until: Option<i64> = opt_n(item, "lease_until")?;
            let put = db
                .client
                .put_item()
                .table_name(&db.table)
                .set_item(Some(hook_item(&d, None)?))
                .condition_expression("#lt = :t AND #lu = :u")
                .expression_attribute_names("#lt", "lease_token")
                .expression_attribute_names("#lu", "lease_until")
                .expression_attribute_values(":t", s(token))
                .expression_attribute_values(":u", n(until.unwrap_or_default()))
                .send()
                .await;
            match put {
                Ok(_) => return Ok(true),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(sdk_err(db, "put_item", e)),
            }
        }
        Ok(false)
    }

    async fn job_webhooks(&self, job_id: &JobId) -> Result<Vec<WebhookDelivery>, StoreError> {
        let items = query_all(&self.db, |q| {
            q.index_name("gsi1")
                .key_condition_expression("#pk = :j")
                .expression_attribute_names("#pk", "gsi1pk")
                .expression_attribute_values(":j", s(format!("HOOKS#{job_id}")))
        })
        .await?;
        items.iter().map(decode).collect()
    }
}
