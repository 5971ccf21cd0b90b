"""ximilar-async: S3 uploads in, Ximilar asynchronous results in DynamoDB.

The shared package of the Lambda layer. It holds the domain logic, free of Lambda globals:
the Ximilar client (`ximilar`), the data access (`dal`), the status vocabulary (`statuses`),
the request types and their limits (`request_types`) and the settings (`settings`).
"""
