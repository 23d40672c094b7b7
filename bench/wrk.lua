-- wrk script: report latency percentiles as one JSON line; GET by default (e.g. /healthz).
-- With GITLAB_STS_BENCH_FORM set it POSTs that RFC 8693 form (to /v1/token): the form (with the GitLab
-- token) comes from the environment so that no token is written to disk.
-- Non-2xx answers count in summary.errors.status (wrk does that itself).
local form = os.getenv("GITLAB_STS_BENCH_FORM")
if form then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.body = form
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
