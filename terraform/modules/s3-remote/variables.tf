variable "bucket_name" {
  description = "Name of the S3 bucket that holds the theta-zarr remote. Must be globally unique and follow S3 bucket naming rules."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "The bucket_name must be 3-63 characters of lowercase letters, digits, dots and hyphens, and start and end with a letter or digit."
  }

  validation {
    condition     = !can(regex("\\.\\.|\\.-|-\\.|^xn--|^sthree-|^amzn-s3-demo-|-s3alias$|--ol-s3$|--x-s3$|--table-s3$|\\.mrap$", var.bucket_name))
    error_message = "The bucket_name must not contain '..', '.-' or '-.', nor use a prefix or suffix reserved by S3 (xn--, sthree-, amzn-s3-demo-, -s3alias, --ol-s3, --x-s3, --table-s3, .mrap)."
  }

  validation {
    condition     = !can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$", var.bucket_name))
    error_message = "The bucket_name must not be formatted as an IP address."
  }
}

variable "prefix" {
  description = "Key prefix inside the bucket under which the remote lives (objects/, manifests/, refs/, staging/ and trash/ are created below it). Empty string means the bucket root. No leading or trailing slash."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.prefix == "" || can(regex("^[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*$", var.prefix))
    error_message = "The prefix must be empty or slash-separated segments of letters, digits, '.', '_', '=' and '-', without a leading slash, trailing slash or empty segment."
  }
}

variable "kms_key_arn" {
  description = "ARN of a customer managed KMS key. When set, the bucket uses SSE-KMS with an S3 Bucket Key; when null (the default) it uses SSE-S3 (AES256)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "The kms_key_arn must be null or a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/KEY-ID); aliases are not accepted because IAM grants need the key ARN."
  }
}

variable "enable_versioning" {
  description = "Enable S3 object versioning. Off by default: chunk objects are immutable and content-addressed, and refs are moved by conditional writes, so versions mostly add cost. Turn it on to keep a history of refs and manifests."
  type        = bool
  default     = false
  nullable    = false
}

variable "noncurrent_version_expiration_days" {
  description = "Delete noncurrent object versions this many days after they become noncurrent. The rule stays when enable_versioning is turned back to false, so the versions kept while it was on (and those of objects deleted since) still expire."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "The noncurrent_version_expiration_days must be a whole number of at least 1."
  }
}

variable "force_destroy" {
  description = "Allow terraform destroy to delete the bucket even when it still holds objects. Leave false for real remotes."
  type        = bool
  default     = false
  nullable    = false
}

variable "access_log_bucket" {
  description = "Name of an existing bucket that receives S3 server access logs for this bucket. Null disables access logging."
  type        = string
  default     = null
}

variable "access_log_prefix" {
  description = "Key prefix for access log objects in access_log_bucket. Defaults to \"s3-access-logs/<bucket_name>/\"."
  type        = string
  default     = null
}

variable "read_write_principal_arns" {
  description = "IAM principal ARNs (accounts, roles or users) allowed to assume the read-write role, e.g. CI runners and training jobs. The role is only created when this list is non-empty; the read-write policy is always created."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for arn in var.read_write_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/[A-Za-z0-9+=,.@_/-]+|user/[A-Za-z0-9+=,.@_/-]+)$", arn))])
    error_message = "Each read_write_principal_arns entry must be an IAM account root, role or user ARN; wildcards are not allowed."
  }
}

variable "read_only_principal_arns" {
  description = "IAM principal ARNs allowed to assume the read-only role, e.g. consumers that fetch checkpoints. The role is only created when this list is non-empty; the read-only policy is always created."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for arn in var.read_only_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/[A-Za-z0-9+=,.@_/-]+|user/[A-Za-z0-9+=,.@_/-]+)$", arn))])
    error_message = "Each read_only_principal_arns entry must be an IAM account root, role or user ARN; wildcards are not allowed."
  }
}

variable "iam_name_prefix" {
  description = "Prefix for the IAM policy and role names (\"<prefix>-read-write\", \"<prefix>-read-only\"). Defaults to \"theta-zarr-<bucket_name>\" truncated to fit IAM limits."
  type        = string
  default     = null

  validation {
    condition     = var.iam_name_prefix == null || can(regex("^[A-Za-z0-9+=,.@_-]{1,52}$", var.iam_name_prefix))
    error_message = "The iam_name_prefix must be 1-52 characters of letters, digits and +=,.@_-."
  }
}

variable "iam_path" {
  description = "IAM path for the created policies and roles."
  type        = string
  default     = "/"
  nullable    = false

  validation {
    condition     = can(regex("^/([A-Za-z0-9+=,.@_-]+/)*$", var.iam_path))
    error_message = "The iam_path must start and end with a slash, e.g. \"/\" or \"/theta-zarr/\"."
  }
}

variable "role_permissions_boundary_arn" {
  description = "ARN of a permissions boundary policy to attach to the created roles, if your organisation requires one."
  type        = string
  default     = null
}

variable "role_max_session_duration" {
  description = "Maximum session duration, in seconds, for the created roles (3600-43200). Long training jobs may need more than the default hour."
  type        = number
  default     = 3600
  nullable    = false

  validation {
    condition     = var.role_max_session_duration >= 3600 && var.role_max_session_duration <= 43200
    error_message = "The role_max_session_duration must be between 3600 and 43200 seconds."
  }
}

variable "tags" {
  description = "Tags applied to every resource that supports them."
  type        = map(string)
  default     = {}
  nullable    = false
}
