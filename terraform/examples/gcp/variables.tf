variable "project_id" {
  description = "Google Cloud project that owns the remote."
  type        = string
}

variable "bucket_name" {
  description = "Globally unique GCS bucket name for the remote."
  type        = string
}

variable "location" {
  description = "Bucket location; keep it next to the accelerators that read the checkpoints."
  type        = string
  default     = "US"
}

variable "prefix" {
  description = "Object prefix of the remote inside the bucket (no leading or trailing slash); empty for the bucket root."
  type        = string
  default     = "checkpoints"
}

variable "kms_key_name" {
  description = "Optional Cloud KMS key for CMEK; null keeps Google-managed encryption."
  type        = string
  default     = null
}

variable "read_write_impersonators" {
  description = "Members (e.g. a Workload Identity Federation principalSet for CI) that may act as the read-write service account."
  type        = list(string)
  default     = []
}

variable "read_only_impersonators" {
  description = "Members that may act as the read-only service account."
  type        = list(string)
  default     = []
}

variable "read_only_members" {
  description = "Existing members (e.g. a group of researchers) that get read-only access directly."
  type        = list(string)
  default     = []
}

variable "access_log_bucket" {
  description = "Optional existing bucket for usage logs."
  type        = string
  default     = null
}

variable "enable_versioning" {
  description = "Keep object versions (history of refs and manifests)."
  type        = bool
  default     = false
}
