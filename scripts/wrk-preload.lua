-- Preload keys bench/00000000 .. bench/00099999 (the key space of shared/bench/wrk/metcd-*.lua)
-- with 256-byte values: wrk thread `id` of `threads` (script argument) PUTs keys id, id+threads, ...
-- and then stops sending. wrk still runs for its -d: scripts/bench.sh stops it at 100k keys.
local counter = 0
local threads = 1
local val = string.rep("v", 256)
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  threads = tonumber(args[1]) or 1
  sent, acked = 0, 0
  share = math.floor((100000 - id + threads - 1) / threads)
end
request = function()
  local k = (sent * threads + id) % 100000
  sent = sent + 1
  return wrk.format("PUT", string.format("/bench/%08d", k), nil, val)
end
response = function(status, headers, body)
  if status == 204 then acked = acked + 1 end
  if acked >= share then wrk.thread:stop() end
end
