variable "region" {
  description = "AWS region for the bucket; keep it next to the compute that reads the checkpoints."
  type        = string
  default     = "us-east-1"
}

variable "bucket_name" {
  description = "Globally unique S3 bucket name for the remote."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the remote inside the bucket (no leading or trailing slash); empty for the bucket root."
  type        = string
  default     = "checkpoints"
}

variable "kms_key_arn" {
  description = "Optional customer managed KMS key ARN; null uses SSE-S3."
  type        = string
  default     = null
}

variable "read_write_principal_arns" {
  description = "Principals (CI runners, training job roles) that may assume the read-write role."
  type        = list(string)
  default     = []
}

variable "read_only_principal_arns" {
  description = "Principals (consumers) that may assume the read-only role."
  type        = list(string)
  default     = []
}

variable "access_log_bucket" {
  description = "Optional existing bucket for S3 server access logs."
  type        = string
  default     = null
}

variable "enable_versioning" {
  description = "Keep object versions (history of refs and manifests)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Extra tags for the remote's resources."
  type        = map(string)
  default     = {}
}
