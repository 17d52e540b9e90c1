#!/usr/bin/env bash
# Creates what SPLAI's AWS backends expect, with the names and settings of infra/template.yaml:
#
#   SQS       <prefix>-dead, then <prefix>-interactive, -standard, -batch redriving to it
#             (maxReceiveCount 25, 14-day retention: shared/src/queue/sqs/setup.rs)
#   DynamoDB  <table>: pk/sk, local index lsi1, global indexes gsi1..gsi5, on demand, TTL on
#             expires_at (shared/src/store/dynamodb/table.rs and DESIGN.md)
#   S3        <bucket>
#
# LocalStack runs it from /etc/localstack/init/ready.d/ once its services are up. It also runs
# directly against any endpoint with the `aws` CLI:
#
#   AWS_ENDPOINT_URL=http://127.0.0.1:4566 localstack/init/ready.d/splai-init.sh
#
# Names (the template's defaults for NamePrefix=splai; the same variables SPLAI reads):
#   SPLAI_SQS_QUEUE_PREFIX  (splai)   SPLAI_DYNAMODB_TABLE  (splai)
#   SPLAI_S3_BUCKET         (splai-artifacts)
# Running it again changes nothing: what exists is left as it is.
set -euo pipefail

prefix="${SPLAI_SQS_QUEUE_PREFIX:-splai}"
table="${SPLAI_DYNAMODB_TABLE:-splai}"
bucket="${SPLAI_S3_BUCKET:-splai-artifacts}"
max_receive_count=25
retention_seconds=1209600

export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"
export AWS_PAGER=""
# Inside the LocalStack container `awslocal` knows the endpoint; elsewhere AWS_ENDPOINT_URL
# names it (passed explicitly too, for CLIs that predate the variable).
if [ -z "${AWS_ENDPOINT_URL:-}" ] && command -v awslocal >/dev/null; then
  aws_() { awslocal "$@"; }
else
  command -v aws >/dev/null || { echo "splai-init: the aws CLI is required (pip install awscli)" >&2; exit 1; }
  if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
    # Emulators accept any credentials; real AWS uses whatever the environment provides.
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
    aws_() { aws --endpoint-url "$AWS_ENDPOINT_URL" "$@"; }
  else
    aws_() { aws "$@"; }
  fi
fi

log() { echo "splai-init: $*"; }

create_queue() { # name [redrive policy JSON]
  local attrs
  if [ -n "${2:-}" ]; then
    attrs=$(printf '{"MessageRetentionPeriod":"%s","RedrivePolicy":%s}' "$retention_seconds" \
      "$(printf '%s' "$2" | sed 's/\\/\\\\/g; s/"/\\"/g; s/.*/"&"/')")
  else
    attrs=$(printf '{"MessageRetentionPeriod":"%s"}' "$retention_seconds")
  fi
  # CreateQueue returns the existing queue when its attributes match.
  aws_ sqs create-queue --queue-name "$1" --attributes "$attrs" --query QueueUrl --output text
}

dead_url=$(create_queue "$prefix-dead")
dead_arn=$(aws_ sqs get-queue-attributes --queue-url "$dead_url" --attribute-names QueueArn \
  --query Attributes.QueueArn --output text)
redrive=$(printf '{"deadLetterTargetArn":"%s","maxReceiveCount":"%s"}' "$dead_arn" "$max_receive_count")
for class in interactive standard batch; do
  create_queue "$prefix-$class" "$redrive" >/dev/null
done
log "queues $prefix-{interactive,standard,batch} redriving to $prefix-dead"

projection='{"ProjectionType":"INCLUDE","NonKeyAttributes":["body","payload","tenant","status","job_type","stale_ms","state","next_ms","lease_until","reg","load","heartbeat_ms","registered_ms","worker_id"]}'
attribute_definitions='{"AttributeName":"pk","AttributeType":"S"},{"AttributeName":"sk","AttributeType":"S"},{"AttributeName":"lsi1sk","AttributeType":"S"}'
gsis=''
for g in gsi1 gsi2 gsi3 gsi4 gsi5; do
  attribute_definitions+=",{\"AttributeName\":\"${g}pk\",\"AttributeType\":\"S\"},{\"AttributeName\":\"${g}sk\",\"AttributeType\":\"S\"}"
  gsis+="${gsis:+,}{\"IndexName\":\"$g\",\"KeySchema\":[{\"AttributeName\":\"${g}pk\",\"KeyType\":\"HASH\"},{\"AttributeName\":\"${g}sk\",\"KeyType\":\"RANGE\"}],\"Projection\":$projection}"
done
if aws_ dynamodb describe-table --table-name "$table" >/dev/null 2>&1; then
  log "table $table exists"
else
  aws_ dynamodb create-table --table-name "$table" --billing-mode PAY_PER_REQUEST \
    --key-schema AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE \
    --attribute-definitions "[$attribute_definitions]" \
    --local-secondary-indexes '[{"IndexName":"lsi1","KeySchema":[{"AttributeName":"pk","KeyType":"HASH"},{"AttributeName":"lsi1sk","KeyType":"RANGE"}],"Projection":{"ProjectionType":"ALL"}}]' \
    --global-secondary-indexes "[$gsis]" >/dev/null
  aws_ dynamodb wait table-exists --table-name "$table"
  log "table $table created"
fi
ttl=$(aws_ dynamodb describe-time-to-live --table-name "$table" \
  --query TimeToLiveDescription.TimeToLiveStatus --output text)
case "$ttl" in
  ENABLED | ENABLING) ;;
  *) aws_ dynamodb update-time-to-live --table-name "$table" \
       --time-to-live-specification Enabled=true,AttributeName=expires_at >/dev/null ;;
esac
log "table $table expires items by expires_at"

if aws_ s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
  log "bucket $bucket exists"
else
  if [ "$AWS_DEFAULT_REGION" = us-east-1 ]; then
    aws_ s3api create-bucket --bucket "$bucket" >/dev/null
  else
    aws_ s3api create-bucket --bucket "$bucket" \
      --create-bucket-configuration "LocationConstraint=$AWS_DEFAULT_REGION" >/dev/null
  fi
  log "bucket $bucket created"
fi
