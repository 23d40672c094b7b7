"""`python -m gitlab_sts.operator` runs the operator."""

import sys

# kopf's default registry, built by the first handler decorator, imports the `kubernetes` client library (and
# kubernetes_asyncio, pykube if installed) only to see whether it is there: ~80 MiB of RSS for a fallback
# login we replace with our own (handlers.credentials). Hidden while the handlers register; imported later only
# if that login actually needs it (a kubeconfig with an exec plugin, outside a cluster).
_HIDDEN = [name for name in ("kubernetes", "kubernetes_asyncio", "pykube") if name not in sys.modules]
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]
try:
    from gitlab_sts.operator.handlers import main
finally:
    for _name in _HIDDEN:
        del sys.modules[_name]

main()
