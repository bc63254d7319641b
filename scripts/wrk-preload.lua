-- Preload keys bench/00000000 .. bench/00099999 (the key space of shared/bench/wrk/metcd-*.lua)
-- with 256-byte values. Each wrk thread PUTs its own stride of the key space, in order.
local counter = 0
local id, threads = 0, 1
local val = string.rep("v", 256)
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  threads = tonumber(args[1]) or 1
  n = 0
end
request = function()
  local k = (n * threads + id) % 100000
  n = n + 1
  return wrk.format("PUT", string.format("/bench/%08d", k), nil, val)
end
