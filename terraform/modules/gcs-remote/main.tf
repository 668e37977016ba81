locals {
  # "" for a remote at the bucket root, otherwise "<prefix>/".
  key_prefix = var.prefix == "" ? "" : "${var.prefix}/"

  bucket_url = "gs://${google_storage_bucket.this.name}"
  remote_url = var.prefix == "" ? local.bucket_url : "${local.bucket_url}/${var.prefix}"

  # The key spaces of a theta-zarr remote (chunk objects, manifests, refs, shards
  # staged until 'combine', gc's trash). Bucket-level IAM on GCS is bucket-wide,
  # so give each remote its own bucket when access must differ.
  remote_prefixes = [
    for space in ["objects", "manifests", "refs", "staging", "trash"] : "${local.key_prefix}${space}/"
  ]

  # Predefined roles: objectUser can get, list, create, overwrite and delete
  # objects (including multipart and resumable uploads) but cannot change
  # bucket settings or IAM; objectViewer can only get and list objects.
  read_write_role = "roles/storage.objectUser"
  read_only_role  = "roles/storage.objectViewer"

  # Map keys must be known at plan time, so the created service account gets a
  # fixed key while its (computed) email is the value.
  read_write_members = merge(
    { for m in var.read_write_members : m => m },
    { for sa in google_service_account.read_write : "created-service-account" => "serviceAccount:${sa.email}" },
  )
  read_only_members = merge(
    { for m in var.read_only_members : m => m },
    { for sa in google_service_account.read_only : "created-service-account" => "serviceAccount:${sa.email}" },
  )
}

# ---------------------------------------------------------------------------
# Customer-managed encryption key (optional)
# ---------------------------------------------------------------------------

data "google_storage_project_service_account" "this" {
  count = var.kms_key_name != null && var.grant_kms_to_storage_service_agent ? 1 : 0

  project = var.project_id
}

resource "google_kms_crypto_key_iam_member" "storage_service_agent" {
  count = var.kms_key_name != null && var.grant_kms_to_storage_service_agent ? 1 : 0

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.this[0].email_address}"
}

# ---------------------------------------------------------------------------
# Bucket
# ---------------------------------------------------------------------------

resource "google_storage_bucket" "this" {
  #checkov:skip=CKV_GCP_78:Versioning is opt-in (var.enable_versioning). Chunk objects are immutable and content-addressed and refs are moved by conditional writes, so object versions add storage cost without protecting anything by default.
  name          = var.bucket_name
  project       = var.project_id
  location      = var.location
  storage_class = var.storage_class
  force_destroy = var.force_destroy
  labels        = var.labels

  # Private bucket: IAM only (no object ACLs) and no allUsers/allAuthenticatedUsers grants.
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = var.enable_versioning
  }

  # Data is always encrypted at rest; this switches from Google-managed keys to CMEK.
  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]

    content {
      default_kms_key_name = encryption.value
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }

    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  # Kept whether or not versioning is on now: a bucket whose versioning was enabled
  # once and then turned off still holds the noncurrent versions, which nothing else
  # would ever delete. On a bucket that was never versioned the rule matches nothing.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_expiration_days
      with_state                 = "ARCHIVED"
    }

    action {
      type = "Delete"
    }
  }

  dynamic "logging" {
    for_each = var.access_log_bucket == null ? [] : [var.access_log_bucket]

    content {
      log_bucket        = logging.value
      log_object_prefix = var.access_log_object_prefix
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.storage_service_agent]
}

# ---------------------------------------------------------------------------
# Identities: read-write (CI, training jobs) and read-only (consumers)
# ---------------------------------------------------------------------------

resource "google_service_account" "read_write" {
  count = var.create_service_accounts ? 1 : 0

  project      = var.project_id
  account_id   = var.read_write_service_account_id
  display_name = "theta-zarr read-write (${var.bucket_name})"
  description  = "Read-write access to the theta-zarr remote in gs://${var.bucket_name} for CI and training jobs."
}

resource "google_service_account" "read_only" {
  count = var.create_service_accounts ? 1 : 0

  project      = var.project_id
  account_id   = var.read_only_service_account_id
  display_name = "theta-zarr read-only (${var.bucket_name})"
  description  = "Read-only access to the theta-zarr remote in gs://${var.bucket_name} for consumers."
}

resource "google_service_account_iam_member" "read_write_impersonators" {
  for_each = var.create_service_accounts ? toset(var.read_write_impersonators) : toset([])

  service_account_id = google_service_account.read_write[0].name
  role               = var.impersonation_role
  member             = each.value
}

resource "google_service_account_iam_member" "read_only_impersonators" {
  for_each = var.create_service_accounts ? toset(var.read_only_impersonators) : toset([])

  service_account_id = google_service_account.read_only[0].name
  role               = var.impersonation_role
  member             = each.value
}

resource "google_storage_bucket_iam_member" "read_write" {
  for_each = local.read_write_members

  bucket = google_storage_bucket.this.name
  role   = local.read_write_role
  member = each.value
}

resource "google_storage_bucket_iam_member" "read_only" {
  for_each = local.read_only_members

  bucket = google_storage_bucket.this.name
  role   = local.read_only_role
  member = each.value
}
