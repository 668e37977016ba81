output "remote_url" {
  description = "URL of the theta-zarr remote."
  value       = module.theta_zarr_remote.remote_url
}

output "remote_add_command" {
  description = "Command that registers the remote in a repository."
  value       = "git theta-zarr remote add origin ${module.theta_zarr_remote.remote_url}"
}

output "read_write_service_account_email" {
  description = "Service account for CI and training jobs."
  value       = module.theta_zarr_remote.read_write_service_account_email
}

output "read_only_service_account_email" {
  description = "Service account for consumers."
  value       = module.theta_zarr_remote.read_only_service_account_email
}
