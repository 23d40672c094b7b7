"""Propagation at scale on KMock: operator (own watch, Served condition) + a real gunicorn exchange service that
follows its ConfigMaps through the API. Prints single-edit apply -> served and a burst of edits -> converged.

    .venv/bin/python bench/bench_propagation.py [N bindings] [burst]        (defaults 10000 and 1000)

BENCH_SKIP_STATUS=1 measures only what the exchange pod serves (KMock patches statuses slowly at thousands of
objects: every binding's status is patched when the first pod appears).

"converged" means: the bindings ConfigMap holds every edit, the exchange pod's Lease reports that document, and
every edited binding shows Served=True for its new generation. KMock keeps its objects in a list and scans it per
request, so with 10,000 objects each API call costs it milliseconds: a real API server is faster.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kmock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/operator"))
sys.path.insert(0, str(ROOT))

from operator_helpers import settings, spec  # noqa: E402

from gitlab_sts.core.served import SERVED_ANNOTATION  # noqa: E402
from gitlab_sts.operator.config import OperatorConfig  # noqa: E402
from gitlab_sts.operator.configsync import stored_digest  # noqa: E402
from gitlab_sts.operator.kube import Endpoint, KubeClient, path_for  # noqa: E402
from gitlab_sts.operator.runtime import build_runtime  # noqa: E402
from tests.service.harness import FakeGitLabProcess, start_service  # noqa: E402
from tests.service.kmock_thread import KMockThread  # noqa: E402

BINDINGS = "gitlab-sts.io/v1alpha1/gitlabawsbindings"
API = "gitlab-sts.io/v1alpha1"
NS = "gitlab-sts"


def binding(i: int, generation: int = 1) -> dict[str, Any]:
    refs = ["main", "release/*"] if generation == 1 else ["main", f"release/{generation}.*"]
    return {"apiVersion": API, "kind": "GitLabAWSBinding",
            "metadata": {"name": f"binding-{i:05d}", "namespace": f"team-{i % 50}", "generation": generation},
            "spec": spec(project={"path": f"group-{i % 97}/project-{i}"}, rules={"refs": refs},
                         aws={"roleArn": f"arn:aws:iam::123456789012:role/deploy-{i}"})}


async def lease_digests(client: KubeClient) -> list[str]:
    lease = await client.get_or_none(path_for("coordination.k8s.io/v1", "leases", NS, "gitlab-sts-bench"))
    value = ((lease or {}).get("metadata") or {}).get("annotations", {}).get(SERVED_ANNOTATION, "")
    return [d for d in str(value).split(",") if d]


async def wait(check: Any, timeout: float = 120.0, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(interval)
    raise TimeoutError("did not converge")


async def main(n: int, burst: int) -> None:
    server = KMockThread().start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-propagation-"))
    gitlab = FakeGitLabProcess()
    k8s = server.emulator
    k8s.resources[BINDINGS] = kmock.ResourceInfo(kind="GitLabAWSBinding", namespaced=True,
                                                 subresources={"status"}, verbs={"get", "list", "watch", "patch"})
    k8s.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(kind="Lease", namespaced=True)
    for i in range(n):  # straight into the store: the bench measures propagation, not the load
        obj = binding(i)
        k8s.objects[BINDINGS, obj["metadata"]["namespace"], obj["metadata"]["name"]] = obj
    cfg = OperatorConfig(namespace=NS, exchange_lease_prefix="gitlab-sts", resync_seconds=3600)
    rt = build_runtime(cfg, settings(), Endpoint(server=server.url))
    client = KubeClient(Endpoint(server=server.url))
    await rt.start()
    assert rt.watcher is not None
    await rt.watcher.seeded()
    svc = None
    try:
        await wait(lambda: _written(client))
        kubeconfig = server.kubeconfig(tmp / "kubeconfig", NS)
        os.environ.update({"GITLAB_STS_FOLLOW_API": "true", "KUBECONFIG": str(kubeconfig),
                           "GITLAB_STS_NAMESPACE": NS, "GITLAB_STS_POD_NAME": "bench",
                           "GITLAB_STS_LEASE_PREFIX": "gitlab-sts", "GITLAB_STS_STATE_DIR": str(tmp / "state")})
        empty = tmp / "empty"
        empty.mkdir()
        svc = await asyncio.to_thread(start_service, tmp / "svc", gitlab, bindings=empty)

        async def pod_serves_written() -> bool:
            digest = stored_digest(await client.get(path_for("v1", "configmaps", NS, "gitlab-sts-bindings")))
            return bool(digest) and await lease_digests(client) == [digest]

        await wait(pod_serves_written)

        # One edit at a time: accepted -> served (Lease) and -> Served=True in the binding's status.
        to_pod, to_status = [], []
        for round_ in range(10):
            i, gen = round_, 2 + round_
            edited = binding(i, gen)
            path = path_for(API, "gitlabawsbindings", edited["metadata"]["namespace"], edited["metadata"]["name"])
            await client.merge_patch(path, {"metadata": {"generation": gen}, "spec": edited["spec"]})
            accepted = time.monotonic()
            to_pod.append(await wait(pod_serves_written_with(client, rt, f"team-{i % 50}/binding-{i:05d}", gen))
                          - accepted)
            if not os.environ.get("BENCH_SKIP_STATUS"):
                to_status.append(await wait(lambda p=path, g=gen: _served(client, p, g)) - accepted)

        # A burst: `burst` bindings edited concurrently (as kubectl apply -f of a folder would).
        paths = []
        started = time.monotonic()
        sem = asyncio.Semaphore(32)

        async def edit(i: int) -> None:
            edited = binding(i, 50)
            path = path_for(API, "gitlabawsbindings", edited["metadata"]["namespace"], edited["metadata"]["name"])
            async with sem:
                await client.merge_patch(path, {"metadata": {"generation": 50}, "spec": edited["spec"]})
            paths.append(path)

        await asyncio.gather(*(edit(i) for i in range(100, 100 + burst)))
        submitted = time.monotonic()
        keys = [f"team-{i % 50}/binding-{i:05d}" for i in range(100, 100 + burst)]

        async def all_in_pod() -> bool:
            return all(await asyncio.gather(*[pod_serves_written_with(client, rt, k, 50)() for k in keys[-1:]])) \
                and all(rt.served is not None and rt.served.history.generation(d, k) == 50
                        for d in await lease_digests(client) for k in keys)

        pod_done = await wait(all_in_pod, timeout=300, interval=0.05)
        print(f"bindings: {n}; KMock on loopback, real gunicorn exchange service (2 workers) following the API")
        print(f"one edit -> pod serves it (Lease): p50 {statistics.median(to_pod) * 1e3:.0f} ms, "
              f"max {max(to_pod) * 1e3:.0f} ms (10 edits)")
        if to_status:
            print(f"one edit -> Served=True in its status: p50 {statistics.median(to_status) * 1e3:.0f} ms, "
                  f"max {max(to_status) * 1e3:.0f} ms")
        print(f"burst of {burst} edits: submitted in {submitted - started:.1f} s; every edit served by the pod "
              f"{pod_done - started:.1f} s after the first", flush=True)
        if os.environ.get("BENCH_SKIP_STATUS"):
            return

        async def all_served() -> bool:
            results = await asyncio.gather(*(_served(client, p, 50) for p in paths[-50:]))
            if not all(results):
                return False
            for chunk in range(0, len(paths), 20):  # KMock answers one request at a time: no flood
                if not all(await asyncio.gather(*(_served(client, p, 50) for p in paths[chunk:chunk + 20]))):
                    return False
            return True

        status_done = await wait(all_served, timeout=600, interval=0.5)
        print(f"burst of {burst} edits: every status Served=True {status_done - started:.1f} s after the first",
              flush=True)
    finally:
        if svc is not None:
            await asyncio.to_thread(svc.stop)
        await rt.stop()
        await client.close()
        gitlab.stop()
        server.stop()


async def _written(client: KubeClient) -> bool:
    return stored_digest(await client.get_or_none(path_for("v1", "configmaps", NS, "gitlab-sts-bindings"))) is not None


def pod_serves_written_with(client: KubeClient, rt: Any, key: str, generation: int) -> Any:
    async def check() -> bool:
        digests = await lease_digests(client)
        return bool(digests) and all(rt.served.history.generation(d, key) == generation for d in digests)
    return check


async def _served(client: KubeClient, path: str, generation: int) -> bool:
    obj = await client.get(path)
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Served":
            return bool(cond.get("status") == "True" and cond.get("observedGeneration") == generation)
    return False


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 1_000))
