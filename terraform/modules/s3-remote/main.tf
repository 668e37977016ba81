locals {
  # "" for a remote at the bucket root, otherwise "<prefix>/".
  key_prefix = var.prefix == "" ? "" : "${var.prefix}/"

  bucket_url = "s3://${aws_s3_bucket.this.bucket}"
  remote_url = var.prefix == "" ? local.bucket_url : "${local.bucket_url}/${var.prefix}"

  iam_name = coalesce(var.iam_name_prefix, "theta-zarr-${substr(var.bucket_name, 0, 41)}")

  use_kms = var.kms_key_arn != null

  # The key spaces of a theta-zarr remote: chunk objects, manifests, refs,
  # shards staged by 'publish --shard' until 'combine', and the trash 'gc --remote'
  # deletes through. Every IAM grant below is limited to these, so other data
  # that shares the bucket stays out of reach.
  remote_key_spaces = ["objects", "manifests", "refs", "staging", "trash"]

  remote_object_arns = [
    for space in local.remote_key_spaces : "${aws_s3_bucket.this.arn}/${local.key_prefix}${space}/*"
  ]

  # Values of s3:prefix that ListObjectsV2 may be called with.
  remote_list_prefixes = [for space in local.remote_key_spaces : "${local.key_prefix}${space}/*"]

  read_write_object_actions = [
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
  ]

  read_only_object_actions = [
    "s3:GetObject",
  ]
}

# ---------------------------------------------------------------------------
# Bucket
# ---------------------------------------------------------------------------

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is the operator's choice (cost, data residency); it needs a second bucket and provider in another region, which is outside the scope of this module.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; refs are read directly by the client. Add an aws_s3_bucket_notification next to the module if you need them.
  bucket        = var.bucket_name
  force_destroy = var.force_destroy

  tags = var.tags
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    # Disables ACLs: the bucket owner owns every object and only policies grant access.
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }

    # S3 Bucket Keys cut KMS request costs for the many small chunk objects.
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_versioning" "this" {
  # A new bucket is unversioned. Removing this resource after versioning was
  # enabled suspends versioning (S3 cannot return a bucket to "unversioned").
  count = var.enable_versioning ? 1 : 0

  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  # Kept whether or not versioning is on now: a bucket whose versioning was enabled
  # once and then suspended (enable_versioning back to false) still holds the old
  # versions, and every object gc --remote deletes later stays as a noncurrent
  # version. On a bucket that was never versioned the rule matches nothing.
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_logging" "this" {
  count = var.access_log_bucket == null ? 0 : 1

  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_log_bucket
  target_prefix = coalesce(var.access_log_prefix, "s3-access-logs/${var.bucket_name}/")
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyOutdatedTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  # Putting a policy before the public access block exists can race with it.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# ---------------------------------------------------------------------------
# IAM: read-write (CI, training jobs) and read-only (consumers)
# ---------------------------------------------------------------------------

data "aws_iam_policy_document" "read_write" {
  statement {
    sid       = "LocateBucket"
    effect    = "Allow"
    actions   = ["s3:GetBucketLocation"]
    resources = [aws_s3_bucket.this.arn]
  }

  statement {
    sid       = "ListRemotePrefixes"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = local.remote_list_prefixes
    }
  }

  statement {
    sid       = "ReadWriteRemoteObjects"
    effect    = "Allow"
    actions   = local.read_write_object_actions
    resources = local.remote_object_arns
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "UseRemoteKmsKey"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${aws_s3_bucket.this.region}.amazonaws.com"]
      }
    }
  }
}

data "aws_iam_policy_document" "read_only" {
  statement {
    sid       = "LocateBucket"
    effect    = "Allow"
    actions   = ["s3:GetBucketLocation"]
    resources = [aws_s3_bucket.this.arn]
  }

  statement {
    sid       = "ListRemotePrefixes"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = local.remote_list_prefixes
    }
  }

  statement {
    sid       = "ReadRemoteObjects"
    effect    = "Allow"
    actions   = local.read_only_object_actions
    resources = local.remote_object_arns
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "DecryptWithRemoteKmsKey"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${aws_s3_bucket.this.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_policy" "read_write" {
  name        = "${local.iam_name}-read-write"
  path        = var.iam_path
  description = "theta-zarr remote ${local.remote_url}: read, write and delete objects/, manifests/, refs/, staging/ and trash/."
  policy      = data.aws_iam_policy_document.read_write.json

  tags = var.tags
}

resource "aws_iam_policy" "read_only" {
  name        = "${local.iam_name}-read-only"
  path        = var.iam_path
  description = "theta-zarr remote ${local.remote_url}: read objects/, manifests/, refs/, staging/ and trash/."
  policy      = data.aws_iam_policy_document.read_only.json

  tags = var.tags
}

data "aws_iam_policy_document" "read_write_trust" {
  statement {
    sid     = "AssumeReadWriteRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "AWS"
      identifiers = var.read_write_principal_arns
    }
  }
}

data "aws_iam_policy_document" "read_only_trust" {
  statement {
    sid     = "AssumeReadOnlyRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "AWS"
      identifiers = var.read_only_principal_arns
    }
  }
}

resource "aws_iam_role" "read_write" {
  count = length(var.read_write_principal_arns) > 0 ? 1 : 0

  name                 = "${local.iam_name}-read-write"
  path                 = var.iam_path
  description          = "Read-write access to theta-zarr remote ${local.remote_url} (CI and training jobs)."
  assume_role_policy   = data.aws_iam_policy_document.read_write_trust.json
  max_session_duration = var.role_max_session_duration
  permissions_boundary = var.role_permissions_boundary_arn

  tags = var.tags
}

resource "aws_iam_role" "read_only" {
  count = length(var.read_only_principal_arns) > 0 ? 1 : 0

  name                 = "${local.iam_name}-read-only"
  path                 = var.iam_path
  description          = "Read-only access to theta-zarr remote ${local.remote_url} (consumers)."
  assume_role_policy   = data.aws_iam_policy_document.read_only_trust.json
  max_session_duration = var.role_max_session_duration
  permissions_boundary = var.role_permissions_boundary_arn

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "read_write" {
  count = length(var.read_write_principal_arns) > 0 ? 1 : 0

  role       = aws_iam_role.read_write[0].name
  policy_arn = aws_iam_policy.read_write.arn
}

resource "aws_iam_role_policy_attachment" "read_only" {
  count = length(var.read_only_principal_arns) > 0 ? 1 : 0

  role       = aws_iam_role.read_only[0].name
  policy_arn = aws_iam_policy.read_only.arn
}
