"""Operator at scale: index N bindings, write the ConfigMap once, then one change; prints times and sizes.

Runs against KMock on loopback (no cluster needed):  .venv/bin/python bench/bench_operator.py [N]
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from pathlib import Path
from typing import Any

import kmock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/operator"))

from conftest import BINDINGS, VersionedEmulator  # noqa: E402
from operator_helpers import settings, spec  # noqa: E402

from gitlab_sts.operator.config import OperatorConfig  # noqa: E402
from gitlab_sts.operator.evaluation import desired_status, status_patch  # noqa: E402
from gitlab_sts.operator.kube import Endpoint, path_for  # noqa: E402
from gitlab_sts.operator.runtime import build_runtime  # noqa: E402


def binding(i: int) -> dict[str, Any]:
    body = spec(project={"path": f"group-{i % 97}/project-{i}"},
                rules={"refs": ["main", "release/*"], "protectedRef": True, "environments": ["production"],
                       "minAccessLevel": "maintainer"},
                aws={"roleArn": f"arn:aws:iam::123456789012:role/deploy-{i}",
                     "sessionTags": ["project_path", "ref", "environment"], "sourceIdentity": "user_login"})
    ns = f"team-{i % 50}"
    return {"apiVersion": "gitlab-sts.io/v1alpha1", "kind": "GitLabAWSBinding",
            "metadata": {"name": f"binding-{i:05d}", "namespace": ns, "generation": 1}, "spec": body}


async def main(n: int) -> None:
    async with VersionedEmulator() as k8s, kmock.Server(k8s) as server:
        k8s.resources[BINDINGS] = kmock.ResourceInfo(kind="GitLabAWSBinding", namespaced=True)
        objs = [binding(i) for i in range(n)]
        for obj in objs:  # straight into the emulator's store: the bench measures the operator, not the load
            k8s.objects[BINDINGS, obj["metadata"]["namespace"], obj["metadata"]["name"]] = obj
        rt = build_runtime(OperatorConfig(namespace="gitlab-sts", debounce_seconds=0), settings(),
                           Endpoint(server=str(server.url)))
        t0 = time.perf_counter()
        await rt.reconciler.resync()  # list (paginated) + compile every binding into the memo
        t1 = time.perf_counter()
        await rt.writer.flush()  # render the document + one ConfigMap write
        t2 = time.perf_counter()
        # Operator-side cost of deciding every binding's status (what each watch event costs before HTTP).
        now = rt.clock()
        for obj in objs:
            meta = obj["metadata"]
            ev = rt.memo.evaluate(meta["namespace"], meta["name"], obj["spec"], 1)
            status_patch(None, desired_status(ev, None, now))
        t3 = time.perf_counter()
        calls_start = rt.client.calls
        sample = min(100, n)
        t_http = time.perf_counter()
        for obj in objs[:sample]:  # status patches over HTTP (KMock scans its whole store per request)
            await rt.reconciler.on_event(None, obj)
        http_each = (time.perf_counter() - t_http) / sample
        status_calls = rt.client.calls - calls_start
        changed = dict(objs[0], metadata={**objs[0]["metadata"], "generation": 2},
                       spec=spec(project={"path": "moved/elsewhere"}))
        calls_before = rt.client.calls
        t4 = time.perf_counter()
        await rt.reconciler.on_event("MODIFIED", {**changed, "status": None})
        calls_event = rt.client.calls - calls_before
        await rt.writer.flush()
        t5 = time.perf_counter()
        calls_config = rt.client.calls - calls_before - calls_event
        cm = await rt.client.get(path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-bindings"))
        stored = sum(len(v) for v in (cm.get("data") or {}).values()) + sum(
            len(base64.b64decode(v)) for v in (cm.get("binaryData") or {}).values())
        raw = len(rt.memo.payload()[0].get("bindings.json", "")) or None
        await rt.stop()
    print(f"bindings: {n}")
    print(f"list + compile into memo: {t1 - t0:.2f} s ({(t1 - t0) / n * 1e3:.3f} ms per binding)")
    print(f"render + write ConfigMap: {t2 - t1:.2f} s")
    print(f"stored config size: {stored / 1024:.0f} KiB ({'gzip binaryData' if 'binaryData' in cm else 'data'})"
          f"{'' if raw is None else f', plain {raw / 1024:.0f} KiB'}")
    print(f"status decided for all {n} (memoised evaluation + status build, no HTTP): {t3 - t2:.2f} s")
    print(f"status patch over HTTP: {status_calls} calls for {sample} bindings, {http_each * 1e3:.0f} ms each "
          f"(dominated by KMock's linear store at {n} objects)")
    print(f"one binding changed -> config rewritten: {(t5 - t4) * 1e3:.0f} ms, {calls_event} API call(s) for the "
          f"event, {calls_config} for the ConfigMap (get + patch)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
