output "remote_url" {
  description = "URL of the theta-zarr remote (s3://<bucket> or s3://<bucket>/<prefix>). Put it in .thetazarr or pass it to `git theta-zarr remote add origin <url>`."
  value       = local.remote_url
}

output "bucket_name" {
  description = "Name of the remote's S3 bucket."
  value       = aws_s3_bucket.this.bucket
}

output "bucket_arn" {
  description = "ARN of the remote's S3 bucket."
  value       = aws_s3_bucket.this.arn
}

output "bucket_region" {
  description = "AWS region the bucket lives in."
  value       = aws_s3_bucket.this.region
}

output "prefix" {
  description = "Key prefix of the remote inside the bucket (empty for the bucket root)."
  value       = var.prefix
}

output "read_write_policy_arn" {
  description = "ARN of the managed policy granting read-write access to the remote; attach it to any other principal (e.g. an OIDC-federated CI role)."
  value       = aws_iam_policy.read_write.arn
}

output "read_only_policy_arn" {
  description = "ARN of the managed policy granting read-only access to the remote."
  value       = aws_iam_policy.read_only.arn
}

output "read_write_policy_json" {
  description = "JSON of the read-write policy document."
  value       = data.aws_iam_policy_document.read_write.json
}

output "read_only_policy_json" {
  description = "JSON of the read-only policy document."
  value       = data.aws_iam_policy_document.read_only.json
}

output "read_write_role_arn" {
  description = "ARN of the read-write role, or null when read_write_principal_arns is empty."
  value       = one(aws_iam_role.read_write[*].arn)
}

output "read_only_role_arn" {
  description = "ARN of the read-only role, or null when read_only_principal_arns is empty."
  value       = one(aws_iam_role.read_only[*].arn)
}
