# gitlab-sts, the AWS side of one account: the IAM OIDC provider for the service's issuer and one role per
# GitLabAWSBinding. The trust policy of each role is built by the same rules as the operator's
# status.trustPolicy (core/src/gitlab_sts/core/trustpolicy.py); `gitlab-sts aws-policy --binding ...` prints it,
# and tests/newcomer/test_aws_iac.py checks that this module builds the same one for every example binding.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

locals {
  # The provider URL without its scheme: the prefix of the aud and sub condition keys.
  provider_host = trimprefix(var.issuer, "https://")
  # Every audience a binding's minted tokens carry must be a client id of the provider.
  client_ids   = distinct(concat([var.audience], [for b in values(var.bindings) : b.audience if b.audience != null]))
  provider_arn = var.create_provider ? aws_iam_openid_connect_provider.gitlab_sts[0].arn : data.aws_iam_openid_connect_provider.gitlab_sts[0].arn
}

resource "aws_iam_openid_connect_provider" "gitlab_sts" {
  count          = var.create_provider ? 1 : 0
  url            = var.issuer
  client_id_list = local.client_ids
  tags           = var.tags
}

data "aws_iam_openid_connect_provider" "gitlab_sts" {
  count = var.create_provider ? 0 : 1
  url   = var.issuer
}

data "aws_iam_policy_document" "trust" {
  for_each = var.bindings

  statement {
    sid    = "GitLabStsBinding"
    effect = "Allow"
    # sts:TagSession only when the binding sets session tags, sts:SetSourceIdentity only with a source identity:
    # AWS refuses the session otherwise, and grants nothing more than the binding uses.
    actions = concat(
      ["sts:AssumeRoleWithWebIdentity"],
      each.value.session_tags ? ["sts:TagSession"] : [],
      each.value.source_identity ? ["sts:SetSourceIdentity"] : [],
    )
    principals {
      type        = "Federated"
      identifiers = [local.provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.provider_host}:aud"
      values   = [coalesce(each.value.audience, var.audience)]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.provider_host}:sub"
      values   = ["system:gitlabawsbinding:${each.value.namespace}:${each.value.name}"]
    }
  }
}

resource "aws_iam_role" "binding" {
  for_each             = var.bindings
  name                 = each.value.role_name
  path                 = each.value.role_path
  description          = "gitlab-sts binding ${each.value.namespace}/${each.value.name}"
  # The binding's status.trustPolicy when given verbatim, else the same policy built by the rules above.
  assume_role_policy   = coalesce(each.value.trust_policy, data.aws_iam_policy_document.trust[each.key].json)
  max_session_duration = each.value.max_session_duration
  tags                 = var.tags
}
