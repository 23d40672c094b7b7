# The example bindings (examples/bindings) whose roles are in account 111122223333; deploy-production's role
# is in 444455556666 and gets its own instance of this module there (an OIDC provider lives in one account).
issuer   = "https://sts.example.com"
audience = "sts.amazonaws.com"

bindings = {
  "team-payments/deploy-staging" = {
    namespace       = "team-payments"
    name            = "deploy-staging"
    role_name       = "payments-deploy-staging"
    session_tags    = true
    source_identity = true
  }
  "team-payments/release-tags" = {
    namespace    = "team-payments"
    name         = "release-tags"
    role_name    = "payments-release"
    session_tags = true
  }
  "platform/platform-read-only" = {
    namespace    = "platform"
    name         = "platform-read-only"
    role_name    = "platform-read-only"
    session_tags = true
  }
}
