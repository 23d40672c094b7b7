variable "issuer" {
  description = "The service's issuer URL (settings.issuer), https and no trailing slash."
  type        = string
  validation {
    condition     = startswith(var.issuer, "https://") && !endswith(var.issuer, "/")
    error_message = "The issuer must be an https URL without a trailing slash, exactly as in settings.issuer."
  }
}

variable "audience" {
  description = "The default aud of minted tokens (settings tokens.audience)."
  type        = string
  default     = "sts.amazonaws.com"
}

variable "create_provider" {
  description = "Create the IAM OIDC provider; false uses the one that exists in the account for var.issuer."
  type        = bool
  default     = true
}

variable "bindings" {
  description = "One role per GitLabAWSBinding whose spec.aws.roleArn is in this account, keyed by namespace/name."
  type = map(object({
    namespace            = string
    name                 = string
    role_name            = string               # the last segment of spec.aws.roleArn
    role_path            = optional(string, "/")
    session_tags         = optional(bool, false) # spec.aws.sessionTags is not empty
    source_identity      = optional(bool, false) # spec.aws.sourceIdentity is set
    audience             = optional(string)      # spec.aws.audience
    max_session_duration = optional(number, 3600)
    # The binding's status.trustPolicy, verbatim, instead of building it here:
    # kubectl -n NAMESPACE get gitlabawsbinding NAME -o jsonpath='{.status.trustPolicy}'
    trust_policy = optional(string)
  }))
}

variable "tags" {
  description = "Tags for the provider and the roles."
  type        = map(string)
  default     = {}
}
