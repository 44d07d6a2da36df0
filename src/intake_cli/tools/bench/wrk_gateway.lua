-- `intake bench gateway`'s buyers, for wrk.
--
-- Every request carries the next buyer's token, so a herd is made of distinct
-- buyers, each claiming once (or, for position lookups, a fixed set of
-- buyers asking about their claims over and over). The tokens are minted by
-- the bench before wrk starts: wrk's LuaJIT has no HMAC, and signing here
-- would take the load generator's CPU from the herd.
--
-- Set by the bench in the environment:
--   INTAKE_WRK_TOKENS    file prefix; thread n reads "<prefix>.<n>", one token a line
--   INTAKE_WRK_METHOD    POST (claim) or GET (position lookup)
--   INTAKE_WRK_DELAY_MS  optional: a pause before each request on a connection,
--                        which turns wrk's closed loop into a steady rate
--
-- At the end one line, "INTAKE_WRK {json}", carries what the bench reads.

local started = 0
local threads = {}

function setup(thread)
   thread:set("thread_no", started)
   table.insert(threads, thread)
   started = started + 1
end

function init(args)
   local prefix = os.getenv("INTAKE_WRK_TOKENS")
   local method = os.getenv("INTAKE_WRK_METHOD") or "POST"
   -- Each buyer's request is written once, here: formatted per request, it
   -- cost wrk about as much CPU as the gateway's own answer to a lookup.
   requests = {}
   for line in io.lines(prefix .. "." .. thread_no) do
      if #line > 0 then
         requests[#requests + 1] = wrk.format(
            method, nil, { ["Authorization"] = "Bearer " .. line, ["Content-Length"] = "0" })
      end
   end
   if #requests == 0 then
      error("no tokens in " .. prefix .. "." .. thread_no)
   end
   next_token = 1
   -- How many times this thread ran through its tokens: a herd that wraps
   -- sends buyers who already hold a unit, which the bench must report.
   wrapped = 0
end

function request()
   local prepared = requests[next_token]
   next_token = next_token + 1
   if next_token > #requests then
      next_token = 1
      wrapped = wrapped + 1
   end
   return prepared
end

-- Defined only when asked for: wrk takes any delay() as a reason to pace
-- every request through a timer.
local pause = tonumber(os.getenv("INTAKE_WRK_DELAY_MS") or "")
if pause and pause > 0 then
   function delay()
      return pause
   end
end

function done(summary, latency, requests)
   local laps = 0
   for _, thread in ipairs(threads) do
      laps = laps + (thread:get("wrapped") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'INTAKE_WRK {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,'
         .. '"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,'
         .. '"p99":%d,"max":%d,"mean":%.1f},"wrapped":%d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, laps))
end
