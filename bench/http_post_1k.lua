-- wrk script of bench/http_bench.py: POST a 1 KiB JSON body.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"data": "' .. string.rep("x", 1011) .. '"}'
