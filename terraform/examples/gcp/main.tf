provider "google" {
  project = var.project_id
}

module "theta_zarr_remote" {
  source = "../../modules/gcs-remote"

  project_id   = var.project_id
  bucket_name  = var.bucket_name
  location     = var.location
  prefix       = var.prefix
  kms_key_name = var.kms_key_name

  read_write_impersonators = var.read_write_impersonators
  read_only_impersonators  = var.read_only_impersonators
  read_only_members        = var.read_only_members

  access_log_bucket = var.access_log_bucket
  enable_versioning = var.enable_versioning

  labels = {
    "managed-by" = "terraform"
    "purpose"    = "theta-zarr-remote"
  }
}
