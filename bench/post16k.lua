wrk.method = "POST"
wrk.body = string.rep("z", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
