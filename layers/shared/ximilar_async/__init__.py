"""ximilar-async: S3 uploads in, Ximilar asynchronous results in DynamoDB.

The shared package of the Lambda layer, free of Lambda globals:
- `values`: plain values (uploads, images, requests, statuses, routes), no I/O;
- `services`: what the functions do, each given the narrow ports (`services.ports`) it uses;
- `adapters`: those ports on DynamoDB, Ximilar, S3, SQS, EventBridge and the secrets;
- `runtime` (the composition root), `coldstart`, `handler_setup`, `settings`, `snapstart`: the Lambda wiring.
"""
