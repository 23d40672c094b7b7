-- wrk script: report latency percentiles as one JSON line; GET by default (e.g. /healthz).
-- With GITLAB_STS_BENCH_FORMS=N it POSTs the RFC 8693 forms GITLAB_STS_BENCH_FORM_1..N in turn (to /v1/token),
-- each with a different GitLab job token, so that nothing per token can be reused between requests. The forms
-- come from the environment so that no token is written to disk. The requests are built once per thread.
-- Non-2xx answers count in summary.errors.status (wrk does that itself).
local count = tonumber(os.getenv("GITLAB_STS_BENCH_FORMS") or "0")
local requests_ = {}
local next_ = 0

init = function(args)
  for i = 1, count do
    local form = os.getenv("GITLAB_STS_BENCH_FORM_" .. i)
    requests_[i] = wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, form)
  end
end

if count > 0 then
  request = function()
    next_ = next_ % count + 1
    return requests_[next_]
  end
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
