//! Sending due webhook deliveries: claim a batch under a lease, POST each (signed) to a
//! vetted address, and record what happened: delivered on a 2xx; otherwise retried with
//! exponential backoff until `max_attempts`, then failed. Due times and attempt counts live in
//! the store, so retries survive restarts, and the lease keeps two gateways from sending one
//! delivery at once (receivers still dedupe on `X-SPLAI-Delivery`: a gateway that dies after
//! the POST but before recording it will have the delivery sent again).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use splai_shared::clock::Clock;
use splai_shared::domain::{WebhookAttempt, WebhookDelivery};
use splai_shared::store::{AttemptOutcome, StoreError, WebhookOutbox};

use super::WebhookConfig;
use super::address::{VettingResolver, literal_ip, refusal};
use super::sign::{SIGNATURE_HEADER, sign};

/// Deliveries claimed per pass.
const BATCH: usize = 32;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Answered 2xx.
    pub delivered: usize,
    /// Failed and scheduled again.
    pub retrying: usize,
    /// Failed for the last time.
    pub failed: usize,
}

impl DeliveryReport {
    /// Attempts made.
    pub fn attempts(&self) -> usize {
        self.delivered + self.retrying + self.failed
    }
}

/// Sends due deliveries from a [`WebhookOutbox`].
pub struct Deliverer {
    outbox: Arc<dyn WebhookOutbox>,
    clock: Arc<dyn Clock>,
    config: Arc<WebhookConfig>,
    http: reqwest::Client,
}

impl Deliverer {
    /// A deliverer over `outbox`. Its HTTP client resolves names through the destination
    /// rules, follows no redirects (a 3xx could point anywhere) and uses no proxy.
    ///
    /// # Errors
    /// The HTTP client cannot be built (no TLS backend).
    pub fn new(
        outbox: Arc<dyn WebhookOutbox>,
        clock: Arc<dyn Clock>,
        config: Arc<WebhookConfig>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .dns_resolver(VettingResolver(config.destinations.clone()))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .build()?;
        Ok(Self {
            outbox,
            clock,
            config,
            http,
        })
    }

    /// How long a claim keeps other deliverers off a batch: longer than its POSTs can take.
    fn lease(&self) -> Duration {
        self.config.timeout * 2 + Duration::from_secs(5)
    }

    /// One pass of [`deliver_due`](Self::deliver_due) for a background loop: the outcome is
    /// logged, and a failed pass is retried on the next tick.
    pub async fn deliver_once(&self) {
        match self.deliver_due().await {
            Ok(r) if r.attempts() > 0 => tracing::info!(?r, "webhooks"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "webhook delivery pass failed; retrying next tick")
            }
        }
    }

    /// One pass: claims up to a batch of due deliveries, sends them concurrently, and records
    /// each attempt.
    ///
    /// # Errors
    /// The store failed; deliveries claimed but not recorded are claimed again once their
    /// lease runs out.
    pub async fn deliver_due(&self) -> Result<DeliveryReport, StoreError> {
        let now = self.clock.now();
        let token = format!("claim-{}", uuid::Uuid::now_v7());
        let batch = self
            .outbox
            .claim_webhooks(now, now + self.lease(), &token, BATCH)
            .await?;
        let attempts = futures::future::join_all(batch.iter().map(|d| self.attempt(d))).await;
        let mut report = DeliveryReport::default();
        for (d, attempt) in batch.iter().zip(attempts) {
            let made = d.attempts + 1;
            let outcome = if attempt.status_code.is_some_and(|c| (200..300).contains(&c)) {
                report.delivered += 1;
                AttemptOutcome::Delivered
            } else if made >= self.config.max_attempts {
                report.failed += 1;
                tracing::warn!(delivery = %d.delivery_id, job = %d.job_id, attempts = made, "webhook delivery failed for good");
                AttemptOutcome::Failed
            } else {
                report.retrying += 1;
                AttemptOutcome::Retry(attempt.at + self.config.backoff(made))
            };
            let recorded = self
                .outbox
                .record_webhook_attempt(&d.delivery_id, &token, &attempt, outcome)
                .await?;
            if !recorded {
                tracing::warn!(delivery = %d.delivery_id, "webhook lease lost before the attempt was recorded");
            }
        }
        Ok(report)
    }

    /// One POST of `d`, and what came of it.
    async fn attempt(&self, d: &WebhookDelivery) -> WebhookAttempt {
        let at = self.clock.now();
        let (status_code, error) = match self.post(d, at.unix_timestamp()).await {
            Ok(code) => (Some(code), None),
            Err(e) => (None, Some(e)),
        };
        WebhookAttempt {
            at,
            status_code,
            error,
        }
    }

    async fn post(&self, d: &WebhookDelivery, timestamp: i64) -> Result<u16, String> {
        let secret = self
            .config
            .secret_for(&d.tenant)
            .ok_or_else(|| format!("no signing secret for tenant `{}`", d.tenant))?;
        let url = reqwest::Url::parse(&d.url).map_err(|e| format!("bad URL: {e}"))?;
        // A literal address never reaches the resolver: vet it here.
        if let Some(ip) = literal_ip(&url)
            && let Some(host) = url.host_str()
            && !self.config.destinations.permits(host, ip)
        {
            let kind = refusal(ip).unwrap_or("refused");
            return Err(format!("destination refused: {ip} is a {kind} address"));
        }
        let response = self
            .http
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static("splai-webhooks/1"))
            .header("x-splai-event", &d.event)
            .header("x-splai-delivery", &d.delivery_id)
            .header(SIGNATURE_HEADER, sign(secret, timestamp, d.body.as_bytes()))
            .body(d.body.clone())
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(response.status().as_u16())
    }
}

/// An error with its causes, `outer: inner: ..`: reqwest's own message alone rarely says
/// why (a refused destination is three levels down).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}
