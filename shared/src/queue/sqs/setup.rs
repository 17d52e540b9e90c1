//! Finding (or, with `SPLAI_AWS_CREATE_RESOURCES=true`, creating) the four queues at start-up.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
use aws_sdk_sqs::types::QueueAttributeName;

use super::QueueError;
use super::api::unavailable;

/// Receives after which the SQS redrive moves a message to the dead-letter queue. A safety net
/// only: the queue dead-letters a task itself once its lease ran out on its last attempt
/// (`max_retries + 1`), and a message the engine can never use (an undecodable body) is what
/// this catches. It is above the attempts any task is normally allowed.
pub const MAX_RECEIVE_COUNT: u32 = 25;

/// Fourteen days, SQS's longest retention: a backlog or a dead letter is kept as long as SQS can.
const RETENTION_SECS: &str = "1209600";

/// The queue names under `prefix`: interactive, standard, batch, dead.
pub fn queue_names(prefix: &str) -> [String; 4] {
    ["interactive", "standard", "batch", "dead"].map(|c| format!("{prefix}-{c}"))
}

/// The URLs of the four queues, in [`queue_names`] order.
pub(super) async fn resolve(
    client: &Client,
    prefix: &str,
    create: bool,
) -> Result<[String; 4], QueueError> {
    let [interactive, standard, batch, dead] = queue_names(prefix);
    let dead_url = find_or_create(client, &dead, create, None).await?;
    let redrive = if create {
        Some(redrive_policy(client, &dead, &dead_url).await?)
    } else {
        None
    };
    let mut urls = Vec::with_capacity(4);
    for name in [interactive, standard, batch] {
        urls.push(find_or_create(client, &name, create, redrive.as_deref()).await?);
    }
    urls.push(dead_url);
    urls.try_into()
        .map_err(|_| QueueError::Unavailable("sqs: queue list".into()))
}

/// The redrive policy pointing at the dead-letter queue.
async fn redrive_policy(client: &Client, name: &str, url: &str) -> Result<String, QueueError> {
    let attrs = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| unavailable(&format!("GetQueueAttributes on `{name}`"), e))?;
    let arn = attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .ok_or_else(|| QueueError::Unavailable(format!("sqs queue `{name}` has no ARN")))?;
    Ok(serde_json::json!({
        "deadLetterTargetArn": arn,
        "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
    })
    .to_string())
}

async fn find_or_create(
    client: &Client,
    name: &str,
    create: bool,
    redrive: Option<&str>,
) -> Result<String, QueueError> {
    match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => out
            .queue_url()
            .map(str::to_owned)
            .ok_or_else(|| QueueError::Unavailable(format!("sqs queue `{name}` has no URL"))),
        Err(e) => {
            let missing = matches!(
                e.as_service_error(),
                Some(GetQueueUrlError::QueueDoesNotExist(_))
            );
            if !missing {
                return Err(unavailable(&format!("GetQueueUrl for `{name}`"), e));
            }
            if !create {
                return Err(QueueError::Unavailable(format!(
                    "SQS queue `{name}` does not exist (SPLAI_SQS_QUEUE_PREFIX); create it with \
                     its redrive policy, or set SPLAI_AWS_CREATE_RESOURCES=true in development"
                )));
            }
            let mut req = client
                .create_queue()
                .queue_name(name)
                .attributes(QueueAttributeName::MessageRetentionPeriod, RETENTION_SECS);
            if let Some(policy) = redrive {
                req = req.attributes(QueueAttributeName::RedrivePolicy, policy);
            }
            let out = req
                .send()
                .await
                .map_err(|e| unavailable(&format!("CreateQueue `{name}`"), e))?;
            tracing::info!(queue = name, "created SQS queue");
            out.queue_url()
                .map(str::to_owned)
                .ok_or_else(|| QueueError::Unavailable(format!("sqs queue `{name}` has no URL")))
        }
    }
}
