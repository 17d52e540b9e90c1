#!/usr/bin/env python3
"""Expands a SAM template with the SAM translator (as `sam deploy` would) and lints the
CloudFormation it produces with cfn-lint.

`cfn-lint infra/*.yaml` checks the SAM resources against SAM's schemas; this also checks what
SAM generates from them: the functions' roles and policy statements (GetAtt targets, ARNs),
the HTTP API routes, the schedule. Needs `aws-sam-translator` and `cfn-lint` (pip).

    python3 infra/check-template.py infra/template.yaml

With `--shapes` it instead prints, as JSON, what the template declares for the table and the
queues in the form the e2e test `localstack` reads from the emulator, so that test can hold
the template to what the code creates.
"""

import json
import os
import subprocess
import sys
import tempfile

from cfnlint.decode import decode
from samtranslator.translator.transform import transform

# SAM needs a region to expand pseudo parameters; the lint runs against the same one.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


class ManagedPolicies:
    """The managed policies SAM may attach, without calling IAM to list them."""

    def load(self):
        return {
            "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
            "AWSLambdaVPCAccessExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
        }


def plain(node):
    """cfn-lint's decoded nodes as plain dicts, lists and strings."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def main(path):
    template, matches = decode(path)
    if matches:
        for m in matches:
            print(m, file=sys.stderr)
        return 1
    template = plain(template)
    # `sam deploy` uploads each CodeUri directory and puts its S3 location in its place.
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://splai-deploy-artifacts/{name}.zip"
    expanded = transform(template, {}, ManagedPolicies())
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, os.path.basename(path) + ".expanded.json")
        with open(out, "w") as f:
            json.dump(expanded, f, indent=1)
        result = subprocess.run(["cfn-lint", out])
    if result.returncode == 0:
        print(f"{path}: SAM expansion lints clean ({len(expanded['Resources'])} resources)")
    return result.returncode


def shapes(path):
    """The table's keys, indexes, billing and TTL, and each queue's retention, visibility
    timeout and redrive, named relative to NamePrefix."""
    resources = plain(decode(path)[0])["Resources"]
    table = resources["Table"]["Properties"]

    def index(i):
        projection = i["Projection"]
        return {
            "name": i["IndexName"],
            "keys": i["KeySchema"],
            "projection": projection["ProjectionType"],
            "projected": sorted(projection.get("NonKeyAttributes", [])),
        }

    ttl = table["TimeToLiveSpecification"]
    table_shape = {
        "keys": table["KeySchema"],
        "attributes": sorted(table["AttributeDefinitions"], key=lambda a: a["AttributeName"]),
        "billing": table["BillingMode"],
        "lsi": sorted((index(i) for i in table["LocalSecondaryIndexes"]), key=lambda i: i["name"]),
        "gsi": sorted((index(i) for i in table["GlobalSecondaryIndexes"]), key=lambda i: i["name"]),
        "ttl": {
            "AttributeName": ttl["AttributeName"],
            "TimeToLiveStatus": "ENABLED" if ttl["Enabled"] else "DISABLED",
        },
    }

    def queue_name(resource):
        return resources[resource]["Properties"]["QueueName"]["Fn::Sub"].replace(
            "${NamePrefix}", "<prefix>"
        )

    queue_shapes = {}
    for resource in resources.values():
        if resource["Type"] != "AWS::SQS::Queue":
            continue
        q = resource["Properties"]
        redrive = q.get("RedrivePolicy")
        if redrive:
            target = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
            redrive = {
                "maxReceiveCount": str(redrive["maxReceiveCount"]),
                "target": queue_name(target),
            }
        name = q["QueueName"]["Fn::Sub"].replace("${NamePrefix}-", "")
        queue_shapes[name] = {
            "retention": str(q.get("MessageRetentionPeriod", 345600)),
            # SQS's default, as the code leaves it.
            "visibility": str(q.get("VisibilityTimeout", 30)),
            "redrive": redrive,
        }
    json.dump({"table": table_shape, "queues": queue_shapes}, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--shapes"]:
        sys.exit(shapes(args[1] if len(args) > 1 else "infra/template.yaml"))
    sys.exit(main(args[0] if args else "infra/template.yaml"))
