#!/bin/bash
# EC2 user data for a SPLAI worker (Amazon Linux 2023; a GPU AMI for GPU work). It installs the
# worker binary, writes /etc/splai/worker.env with the instance id as SPLAI_WORKER_ID and the
# API token read from Secrets Manager, and starts the systemd unit of infra/worker/.
#
# The instance profile needs secretsmanager:GetSecretValue on TOKEN_SECRET and s3:GetObject on
# ARTIFACT_URL (or host the binary anywhere curl reaches). Edit the four values below.
set -euo pipefail

CONTROL_PLANE_URL="https://abc123.execute-api.us-east-1.amazonaws.com"  # the stack's ApiUrl
TOKEN_SECRET="splai/worker-token"           # SecretString: a token with task:report
ARTIFACT_URL="s3://my-builds/splai/splai-worker-x86_64"  # `cargo build --release -p splai-worker`
UNIT_URL="s3://my-builds/splai/splai-worker.service"     # infra/worker/splai-worker.service

imds() {
  local token
  token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}
instance_id=$(imds instance-id)
region=$(imds placement/region)
az=$(imds placement/availability-zone)

dnf install -y -q awscli-2 util-linux
useradd --system --home-dir /var/lib/splai --shell /usr/sbin/nologin splai || true
aws s3 cp --region "$region" "$ARTIFACT_URL" /usr/local/bin/splai-worker
chmod 0755 /usr/local/bin/splai-worker
aws s3 cp --region "$region" "$UNIT_URL" /etc/systemd/system/splai-worker.service

token=$(aws secretsmanager get-secret-value --region "$region" --secret-id "$TOKEN_SECRET" \
  --query SecretString --output text)
install -d -m 0750 -g splai /etc/splai
umask 077
cat > /etc/splai/worker.env <<ENV
SPLAI_CONTROL_PLANE_URL=$CONTROL_PLANE_URL
SPLAI_API_TOKEN=$token
SPLAI_WORKER_ID=$instance_id
SPLAI_WORKER_LOCALITY=$az
SPLAI_MAX_PARALLEL_TASKS=2
SPLAI_SHUTDOWN_GRACE_SECONDS=30
SPLAI_WORKER_BACKENDS=ollama
SPLAI_OLLAMA_BASE_URL=http://127.0.0.1:11434  # a model server on this host, e.g. Ollama
SPLAI_ARTIFACT_ROOT=/var/lib/splai/artifacts
SPLAI_MODEL_CACHE_DIR=/var/lib/splai/models
SPLAI_WORKER_METRICS_ADDR=0.0.0.0:9102
ENV
chgrp splai /etc/splai/worker.env
chmod 0640 /etc/splai/worker.env

systemctl daemon-reload
systemctl enable --now splai-worker
