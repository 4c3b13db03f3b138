-- wrk script for bench/run.py: POST one image to the predict route, again and again.
--   BENCH_BODY_FILE       the request body (e.g. tests/fixtures/digit7_28.png)
--   BENCH_CONTENT_TYPE    its Content-Type (default image/png)
--   BENCH_MAX_PER_THREAD  stop a wrk thread after this many responses (0: no cap)
--   BENCH_EXTRA_HEADER    optional "Name: value" (e.g. V2's Inference-Header-Content-Length)
-- done() prints one line "BENCH_JSON {...}" that run.py parses.

local body_file = assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is not set")
local cap = tonumber(os.getenv("BENCH_MAX_PER_THREAD") or "0")

local handle = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = handle:read("*a")
handle:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "image/png"
local extra = os.getenv("BENCH_EXTRA_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

-- Per-thread counters (globals, so that done() can read them with thread:get).
responses = 0
non200 = 0

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    non200 = non200 + 1
  end
  if cap > 0 and responses >= cap then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local total, bad = 0, 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("responses")
    bad = bad + thread:get("non200")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "responses": %d, "non200": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"status_errors": %d, "mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d}\n',
    summary.requests, summary.duration, total, bad, e.connect, e.read, e.write, e.timeout,
    e.status, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
