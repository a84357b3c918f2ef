"""Where intermediate values between steps live: any filesystem URL (a directory, S3, GCS, Azure Blob)."""
