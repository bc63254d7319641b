-- A read/write mix over the preloaded 100k key space: GET (linearizable) with probability
-- READ% (script argument, default 95), otherwise a 256-byte PUT.
local val = string.rep("v", 256)
function init(args)
  read_pct = tonumber(args[1]) or 95
end
request = function()
  local path = string.format("/bench/%08d", math.random(0, 99999))
  if math.random(1, 100) <= read_pct then
    return wrk.format("GET", path)
  end
  return wrk.format("PUT", path, nil, val)
end
