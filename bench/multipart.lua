-- wrk script: POST one image file as multipart field "image" (path in env WRK_IMAGE).
local path = os.getenv("WRK_IMAGE")
local f = assert(io.open(path, "rb"))
local data = f:read("*a")
f:close()
local boundary = "----inferdbench7d1f3a"
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="image"; filename="image"\r\n'
  .. "Content-Type: application/octet-stream\r\n\r\n"
  .. data .. "\r\n--" .. boundary .. "--\r\n"
done = function(summary, latency, requests)
  io.write(string.format("p50_ms %.1f\np99_ms %.1f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  -- One machine-readable line for bench/wrk.py; latencies in milliseconds, duration in seconds.
  local e = summary.errors
  io.write(string.format(
    'bench-json {"requests":%d,"duration_s":%.6f,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
      .. '"status_errors":%d,"timeouts":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"mean_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.mean / 1000, latency.max / 1000))
end
