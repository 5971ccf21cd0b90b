"""The one price table of the cost model: AWS list prices in us-east-1 (N. Virginia), on-demand, no free tier.

AS_OF is the date these figures were written down from the sources named below, as known to the
author: CHECK THEM against the pricing pages before quoting a dollar figure; prices change (DynamoDB
on-demand was cut by half in November 2024, for example). Units are dollars per the unit each name says.
"""

from __future__ import annotations

from typing import Final

AS_OF: Final = "2026-11-30"
REGION: Final = "us-east-1"
SOURCES: Final = (
    "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    "https://aws.amazon.com/sqs/pricing/",
    "https://aws.amazon.com/lambda/pricing/",
    "https://aws.amazon.com/api-gateway/pricing/",
    "https://aws.amazon.com/s3/pricing/",
    "https://aws.amazon.com/cloudwatch/pricing/",
    "https://aws.amazon.com/xray/pricing/",
    "https://aws.amazon.com/eventbridge/pricing/",
    "https://aws.amazon.com/secrets-manager/pricing/",
    "https://aws.amazon.com/systems-manager/pricing/",
    "https://aws.amazon.com/kms/pricing/",
)

# DynamoDB on-demand, Standard table class.
DYNAMODB_PER_WRITE_UNIT: Final = 0.625 / 1_000_000
DYNAMODB_PER_READ_UNIT: Final = 0.125 / 1_000_000
DYNAMODB_PER_GB_MONTH: Final = 0.25
# SQS standard queue: per request, each 64 KB chunk of payload is one request.
SQS_PER_REQUEST: Final = 0.40 / 1_000_000
# Lambda on arm64 (first pricing tier).
LAMBDA_PER_REQUEST: Final = 0.20 / 1_000_000
LAMBDA_ARM64_PER_GB_SECOND: Final = 0.0000133334
# HTTP API: per request up to 512 KB (first 300 million a month); larger ones count per 512 KB.
HTTP_API_PER_REQUEST: Final = 1.00 / 1_000_000
# S3 Standard.
S3_PER_PUT_COPY_POST_LIST: Final = 0.005 / 1_000
S3_PER_GET: Final = 0.0004 / 1_000
S3_PER_GB_MONTH: Final = 0.023
# CloudWatch Logs, Standard class: ingestion (Lambda's logs are tiered from this rate down at volume).
LOGS_PER_GB_INGESTED: Final = 0.50
# X-Ray: traces recorded.
XRAY_PER_TRACE_RECORDED: Final = 5.00 / 1_000_000
# EventBridge: events a schedule rule emits on the default bus are AWS-service events, not charged;
# custom events would be (none are put here).
EVENTBRIDGE_PER_SCHEDULED_EVENT: Final = 0.0
EVENTBRIDGE_PER_CUSTOM_EVENT: Final = 1.00 / 1_000_000
# Secrets Manager and SSM Parameter Store (standard parameters at standard throughput are free).
SECRETS_MANAGER_PER_API_CALL: Final = 0.05 / 10_000
SECRETS_MANAGER_PER_SECRET_MONTH: Final = 0.40
SSM_STANDARD_PER_API_CALL: Final = 0.0
# KMS requests (the decrypts SSM and Secrets Manager make with the AWS managed keys on a read).
KMS_PER_REQUEST: Final = 0.03 / 10_000
# CloudWatch custom metrics (the functions' Powertools EMF metrics), per metric a month.
CLOUDWATCH_PER_METRIC_MONTH: Final = 0.30
# Not priced into dollars (reported in GB): data transfer out to the internet, first 10 TB a month.
EGRESS_PER_GB_FOR_REFERENCE: Final = 0.09
