//! Webhooks: a job's `webhook_url` receives `job.completed`, `job.failed` or `job.canceled`
//! as a signed POST. The store writes each delivery in the transaction that ends the job
//! (`WebhookOutbox`); [`deliver::Deliverer::deliver_due`] sends what is due, one pass at a
//! time (the local server runs it in a loop, a Lambda sweeper can call it once per tick).
//!
//! - [`sign`]: the `X-SPLAI-Signature` header and how receivers verify it.
//! - [`address`]: which destinations are allowed (no SSRF into private networks).
//! - [`deliver`]: claim under a lease, POST, record the attempt, back off.

pub mod address;
pub mod deliver;
pub mod sign;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use splai_shared::backends::Secret;
use splai_shared::domain::TenantId;

use self::address::Destinations;

/// Webhook settings, read once from the `SPLAI_WEBHOOK_*` variables.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Signs every tenant's deliveries unless the tenant has its own (`SPLAI_WEBHOOK_SECRET`).
    pub secret: Option<Secret>,
    /// Per-tenant secrets (`SPLAI_WEBHOOK_TENANT_SECRETS`, `tenant=secret,..`).
    pub tenant_secrets: HashMap<String, Secret>,
    /// Attempts before a delivery is marked failed (`SPLAI_WEBHOOK_MAX_ATTEMPTS`, 8).
    pub max_attempts: u32,
    /// Delay after the first failed attempt, doubling per attempt
    /// (`SPLAI_WEBHOOK_RETRY_BASE_MS`, 10 s).
    pub retry_base: Duration,
    /// Longest delay between attempts (`SPLAI_WEBHOOK_RETRY_MAX_MS`, 1 h).
    pub retry_max: Duration,
    /// Time allowed for one POST, connecting included (`SPLAI_WEBHOOK_TIMEOUT_MS`, 10 s).
    pub timeout: Duration,
    /// Where deliveries may go (`SPLAI_WEBHOOK_ALLOW_PRIVATE`,
    /// `SPLAI_WEBHOOK_ALLOWED_DESTINATIONS`).
    pub destinations: Arc<Destinations>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            secret: None,
            tenant_secrets: HashMap::new(),
            max_attempts: 8,
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            destinations: Arc::new(Destinations::default()),
        }
    }
}

impl WebhookConfig {
    /// Parses `SPLAI_WEBHOOK_TENANT_SECRETS` (`tenant=secret,..`).
    ///
    /// # Errors
    /// An entry without `=`, or with an invalid tenant or an empty secret.
    pub fn parse_tenant_secrets(raw: &str) -> Result<HashMap<String, Secret>, String> {
        let mut out = HashMap::new();
        for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (tenant, secret) = item
                .split_once('=')
                .ok_or_else(|| "entries are `tenant=secret`".to_owned())?;
            let tenant = TenantId::parse(tenant.trim()).map_err(|e| e.to_string())?;
            if secret.trim().is_empty() {
                return Err(format!("tenant `{tenant}` has an empty secret"));
            }
            out.insert(tenant.as_str().to_owned(), Secret::new(secret.trim()));
        }
        Ok(out)
    }

    /// The secret that signs `tenant`'s deliveries: its own, else the global one.
    pub fn secret_for(&self, tenant: &TenantId) -> Option<&str> {
        self.tenant_secrets
            .get(tenant.as_str())
            .or(self.secret.as_ref())
            .map(Secret::expose)
    }

    /// The wait after `attempts` failed attempts: `retry_base` doubled per attempt after the
    /// first, capped at `retry_max`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        self.retry_base
            .saturating_mul(1 << doublings)
            .min(self.retry_max)
    }

    /// The submit-time check of a job's `webhook_url`: an allowed destination, and a secret
    /// to sign with, so nothing unsigned ever leaves.
    ///
    /// # Errors
    /// The message for the 400.
    pub fn check_submit(&self, url: &str, tenant: &TenantId) -> Result<(), String> {
        self.destinations.check_url(url)?;
        if self.secret_for(tenant).is_none() {
            return Err(format!(
                "webhooks are not configured for tenant `{tenant}`: set SPLAI_WEBHOOK_SECRET \
                 or SPLAI_WEBHOOK_TENANT_SECRETS so deliveries can be signed"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let c = WebhookConfig {
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(60),
            ..WebhookConfig::default()
        };
        let got: Vec<u64> = (1..=5).map(|n| c.backoff(n).as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 60, 60]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn tenant_secret_wins_over_the_global_one() {
        let c = WebhookConfig {
            secret: Some(Secret::new("global")),
            tenant_secrets: WebhookConfig::parse_tenant_secrets(" acme=a1 , beta=b2").unwrap(),
            ..WebhookConfig::default()
        };
        let t = |s: &str| TenantId::parse(s).unwrap();
        assert_eq!(c.secret_for(&t("acme")), Some("a1"));
        assert_eq!(c.secret_for(&t("beta")), Some("b2"));
        assert_eq!(c.secret_for(&t("other")), Some("global"));
        assert!(WebhookConfig::parse_tenant_secrets("acme").is_err());
        assert!(WebhookConfig::parse_tenant_secrets("acme=").is_err());
    }

    #[test]
    fn submit_needs_a_secret_for_the_tenant() {
        let t = TenantId::parse("acme").unwrap();
        let none = WebhookConfig::default();
        let err = none
            .check_submit("https://hooks.example.com/x", &t)
            .unwrap_err();
        assert!(err.contains("SPLAI_WEBHOOK_SECRET"), "{err}");
        let c = WebhookConfig {
            secret: Some(Secret::new("s")),
            ..WebhookConfig::default()
        };
        assert!(c.check_submit("https://hooks.example.com/x", &t).is_ok());
        assert!(c.check_submit("http://127.0.0.1/x", &t).is_err());
    }
}
