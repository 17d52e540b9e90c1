//! The shared POST to model servers: retries and error classification.

/// The HTTP client model backends share.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::new()
}
