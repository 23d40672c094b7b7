"""gitlab-sts: GitLab CI/CD ID tokens in, short-lived AWS credentials out."""

__version__ = "0.1.0"
