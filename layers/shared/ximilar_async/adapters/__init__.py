"""The ports on real things: DynamoDB (`dynamodb`), Ximilar (`ximilar`), S3, SQS, EventBridge, secrets."""
