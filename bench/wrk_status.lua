-- wrk script for manifest_rps.sh: counts responses that are not 2xx (wrk's own counter
-- only counts status > 399) and prints machine-readable results at the end:
--   BENCH requests=N duration_us=N non2xx=N first_bad=STATUS errors_connect=N errors_read=N
--         errors_write=N errors_timeout=N p50_us=N p99_us=N
-- Headers (Accept, Authorization) are given to wrk with -H.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  first_bad = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_bad == 0 then first_bad = status end
  end
end

function done(summary, latency, requests)
  local bad, first = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    local fb = t:get("first_bad")
    if first == 0 and fb ~= 0 then first = fb end
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d non2xx=%d first_bad=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, bad, first, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
