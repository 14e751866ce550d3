-- wrk script: every request launches a repository drawn from a pool, with one of several refs,
-- so the router parses and hashes real keys (its caches see what a busy router sees).
-- Usage: wrk -s launches.lua URL -- [pool] [tally]; prints one JSON line of results when done.
-- With tally, each thread counts its redirects per member (the Location's origin) and writes
-- the counts as JSON to tally.<thread>.json every 1,000 responses and at the end: the
-- simulated members read them to learn the launches sent to them (benchmarks/members.py).

local pool = 1000
local refs = {"HEAD", "main", "v1.0", "0123abcd"}
local threads = {}
local responses = 0
counts = {}  -- global: done() reads each thread's with thread:get
tally = nil

function setup(thread)
  thread:set("thread_no", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  if args[1] then pool = tonumber(args[1]) end
  if args[2] then tally = args[2] .. "." .. thread_no .. ".json" end
  math.randomseed(7)  -- the same launches for every server under test
end

function request()
  local path = string.format("/build/gh/bench-org/repo-%d/%s",
                             math.random(pool) - 1, refs[math.random(#refs)])
  return wrk.format("GET", path)
end

-- Replaces the file whole (write, then rename), so a reader never sees half of it.
local function write_tally(path, per_member)
  local parts = {}
  for origin, n in pairs(per_member) do
    parts[#parts + 1] = string.format('"%s": %d', origin, n)
  end
  local file = io.open(path .. ".part", "w")
  file:write("{" .. table.concat(parts, ", ") .. "}\n")
  file:close()
  os.rename(path .. ".part", path)
end

function response(status, headers, body)
  if not tally then return end
  local location = headers["Location"]
  if location then
    local origin = string.match(location, "^https?://[^/]+")
    if origin then counts[origin] = (counts[origin] or 0) + 1 end
  end
  responses = responses + 1
  if responses % 1000 == 0 then write_tally(tally, counts) end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local path = thread:get("tally")
    if path then write_tally(path, thread:get("counts")) end
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.6f, "errors": %d, "p50_ms": %.4f, "p99_ms": %.4f}\n',
    summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
