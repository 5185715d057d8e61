-- wrk script: POST the sum_range arguments as JSON.
wrk.method = "POST"
wrk.body = '{"args": [100000]}'
wrk.headers["Content-Type"] = "application/json"
