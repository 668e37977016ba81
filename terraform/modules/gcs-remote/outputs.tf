output "remote_url" {
  description = "URL of the theta-zarr remote (gs://<bucket> or gs://<bucket>/<prefix>). Put it in .thetazarr or pass it to `git theta-zarr remote add origin <url>`."
  value       = local.remote_url
}

output "bucket_name" {
  description = "Name of the remote's GCS bucket."
  value       = google_storage_bucket.this.name
}

output "bucket_self_link" {
  description = "Self link of the remote's GCS bucket."
  value       = google_storage_bucket.this.self_link
}

output "prefix" {
  description = "Object name prefix of the remote inside the bucket (empty for the bucket root)."
  value       = var.prefix
}

output "remote_prefixes" {
  description = "The object name prefixes the remote uses (objects/, manifests/, refs/, staging/, trash/ below the prefix)."
  value       = local.remote_prefixes
}

output "read_write_service_account_email" {
  description = "Email of the read-write service account, or null when create_service_accounts is false."
  value       = one(google_service_account.read_write[*].email)
}

output "read_only_service_account_email" {
  description = "Email of the read-only service account, or null when create_service_accounts is false."
  value       = one(google_service_account.read_only[*].email)
}

output "read_write_members" {
  description = "All IAM members granted read-write access (roles/storage.objectUser) on the bucket."
  value       = values(local.read_write_members)
}

output "read_only_members" {
  description = "All IAM members granted read-only access (roles/storage.objectViewer) on the bucket."
  value       = values(local.read_only_members)
}
