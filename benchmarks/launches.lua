-- wrk script: every request launches a repository drawn from a pool, with one of several refs,
-- so the router parses and hashes real keys (its caches see what a busy router sees).
-- Usage: wrk -s launches.lua URL -- [pool]; prints one JSON line of results when done.

local pool = 1000
local refs = {"HEAD", "main", "v1.0", "0123abcd"}

function init(args)
  if args[1] then pool = tonumber(args[1]) end
  math.randomseed(7)  -- the same launches for every server under test
end

function request()
  local path = string.format("/build/gh/bench-org/repo-%d/%s",
                             math.random(pool) - 1, refs[math.random(#refs)])
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.6f, "errors": %d, "p50_ms": %.4f, "p99_ms": %.4f}\n',
    summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
