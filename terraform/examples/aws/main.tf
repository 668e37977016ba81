provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "managed-by" = "terraform"
      "purpose"    = "theta-zarr-remote"
    }
  }
}

module "theta_zarr_remote" {
  source = "../../modules/s3-remote"

  bucket_name = var.bucket_name
  prefix      = var.prefix
  kms_key_arn = var.kms_key_arn

  read_write_principal_arns = var.read_write_principal_arns
  read_only_principal_arns  = var.read_only_principal_arns

  access_log_bucket = var.access_log_bucket
  enable_versioning = var.enable_versioning

  tags = var.tags
}
