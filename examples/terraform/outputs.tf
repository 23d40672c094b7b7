output "provider_arn" {
  description = "ARN of the IAM OIDC provider the roles trust."
  value       = local.provider_arn
}

output "role_arns" {
  description = "Role ARN per binding (namespace/name); each must equal the binding's spec.aws.roleArn."
  value       = { for key, role in aws_iam_role.binding : key => role.arn }
}
