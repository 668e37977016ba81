output "remote_url" {
  description = "URL of the theta-zarr remote."
  value       = module.theta_zarr_remote.remote_url
}

output "remote_add_command" {
  description = "Command that registers the remote in a repository."
  value       = "git theta-zarr remote add origin ${module.theta_zarr_remote.remote_url}"
}

output "read_write_role_arn" {
  description = "Role for CI and training jobs (null when no principals were given)."
  value       = module.theta_zarr_remote.read_write_role_arn
}

output "read_only_role_arn" {
  description = "Role for consumers (null when no principals were given)."
  value       = module.theta_zarr_remote.read_only_role_arn
}

output "read_write_policy_arn" {
  description = "Managed policy to attach to any other read-write principal."
  value       = module.theta_zarr_remote.read_write_policy_arn
}

output "read_only_policy_arn" {
  description = "Managed policy to attach to any other read-only principal."
  value       = module.theta_zarr_remote.read_only_policy_arn
}
