variable "project_id" {
  description = "ID of the Google Cloud project that owns the bucket and the service accounts."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id)) || can(regex("^[a-z][a-z0-9.-]*:[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "The project_id must be a Google Cloud project ID (6-30 lowercase letters, digits and hyphens, starting with a letter)."
  }
}

variable "bucket_name" {
  description = "Name of the GCS bucket that holds the theta-zarr remote. Must be globally unique and follow GCS bucket naming rules (this module accepts names of up to 63 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "The bucket_name must be 3-63 characters of lowercase letters, digits, dots, underscores and hyphens, and start and end with a letter or digit."
  }

  validation {
    condition     = !can(regex("^goog|google|g00gle|\\.\\.|\\.-|-\\.", var.bucket_name))
    error_message = "The bucket_name must not start with \"goog\", contain \"google\" (or a close misspelling), or contain '..', '.-' or '-.'."
  }

  validation {
    condition     = !can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$", var.bucket_name))
    error_message = "The bucket_name must not be formatted as an IP address."
  }
}

variable "location" {
  description = "Bucket location: a region (e.g. \"europe-west4\"), dual-region or multi-region (e.g. \"US\"). Keep it next to the accelerators that read the checkpoints."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9-]+$", var.location))
    error_message = "The location must be a GCS location name such as \"US\", \"EU\" or \"us-central1\"."
  }
}

variable "storage_class" {
  description = "Default storage class of new objects."
  type        = string
  default     = "STANDARD"
  nullable    = false

  validation {
    condition     = contains(["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"], var.storage_class)
    error_message = "The storage_class must be one of STANDARD, NEARLINE, COLDLINE or ARCHIVE."
  }
}

variable "prefix" {
  description = "Object name prefix inside the bucket under which the remote lives (objects/, manifests/, refs/, staging/ and trash/ are created below it). Empty string means the bucket root. No leading or trailing slash."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.prefix == "" || can(regex("^[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*$", var.prefix))
    error_message = "The prefix must be empty or slash-separated segments of letters, digits, '.', '_', '=' and '-', without a leading slash, trailing slash or empty segment."
  }
}

variable "kms_key_name" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) used as the bucket's default customer-managed encryption key. Null (the default) keeps Google-managed encryption at rest. The key must be in the bucket's location."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "The kms_key_name must be null or a key name of the form projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "grant_kms_to_storage_service_agent" {
  description = "When kms_key_name is set, grant the project's Cloud Storage service agent roles/cloudkms.cryptoKeyEncrypterDecrypter on the key (required for CMEK). Set false if the grant is managed elsewhere."
  type        = bool
  default     = true
  nullable    = false
}

variable "enable_versioning" {
  description = "Enable object versioning. Off by default: chunk objects are immutable and content-addressed, and refs are moved by conditional writes, so versions mostly add cost. Turn it on to keep a history of refs and manifests."
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
  description = "Name of an existing bucket that receives usage and storage logs for this bucket. Null disables access logging."
  type        = string
  default     = null
}

variable "access_log_object_prefix" {
  description = "Object prefix for the usage logs in access_log_bucket. Null lets GCS use the bucket name."
  type        = string
  default     = null
}

variable "create_service_accounts" {
  description = "Create a read-write and a read-only service account and grant them access to the bucket. Set false to grant only read_write_members and read_only_members."
  type        = bool
  default     = true
  nullable    = false
}

variable "read_write_service_account_id" {
  description = "Account ID of the read-write service account (CI and training jobs)."
  type        = string
  default     = "theta-zarr-rw"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.read_write_service_account_id))
    error_message = "The read_write_service_account_id must be 6-30 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "read_only_service_account_id" {
  description = "Account ID of the read-only service account (consumers)."
  type        = string
  default     = "theta-zarr-ro"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.read_only_service_account_id))
    error_message = "The read_only_service_account_id must be 6-30 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "read_write_members" {
  description = "Existing IAM members (e.g. \"serviceAccount:ci@p.iam.gserviceaccount.com\", \"group:ml-train@example.com\", \"principalSet://...\") granted read-write access to the bucket."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for m in var.read_write_members : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):.+$", m))])
    error_message = "Each read_write_members entry must be an IAM member such as user:, serviceAccount:, group:, domain:, principal: or principalSet:; allUsers and allAuthenticatedUsers are not allowed."
  }
}

variable "read_only_members" {
  description = "Existing IAM members granted read-only access to the bucket."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for m in var.read_only_members : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):.+$", m))])
    error_message = "Each read_only_members entry must be an IAM member such as user:, serviceAccount:, group:, domain:, principal: or principalSet:; allUsers and allAuthenticatedUsers are not allowed."
  }
}

variable "read_write_impersonators" {
  description = "IAM members allowed to act as the read-write service account (granted impersonation_role on it), e.g. a Workload Identity Federation principalSet for CI. Ignored when create_service_accounts is false."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for m in var.read_write_impersonators : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):.+$", m))])
    error_message = "Each read_write_impersonators entry must be an IAM member such as user:, serviceAccount:, group:, principal: or principalSet:."
  }
}

variable "read_only_impersonators" {
  description = "IAM members allowed to act as the read-only service account (granted impersonation_role on it). Ignored when create_service_accounts is false."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for m in var.read_only_impersonators : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):.+$", m))])
    error_message = "Each read_only_impersonators entry must be an IAM member such as user:, serviceAccount:, group:, principal: or principalSet:."
  }
}

variable "impersonation_role" {
  description = "Role granted to the impersonators on the service accounts: roles/iam.workloadIdentityUser for Workload Identity Federation principals, roles/iam.serviceAccountTokenCreator for users and other service accounts."
  type        = string
  default     = "roles/iam.workloadIdentityUser"
  nullable    = false

  validation {
    condition     = contains(["roles/iam.workloadIdentityUser", "roles/iam.serviceAccountTokenCreator"], var.impersonation_role)
    error_message = "The impersonation_role must be roles/iam.workloadIdentityUser or roles/iam.serviceAccountTokenCreator."
  }
}

variable "labels" {
  description = "Labels applied to the bucket."
  type        = map(string)
  default     = {}
  nullable    = false
}
