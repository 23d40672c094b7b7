"""`python -m gitlab_sts.operator` runs the operator."""

from gitlab_sts.operator.handlers import main

main()
