"""Stand-ins for GitLab and AWS STS, used by `gitlab-sts demo` and the tests (not for production)."""
